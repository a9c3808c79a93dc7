"""comfy_api.v0_0_2: the pinned API version, re-exporting io / ui / ComfyExtension."""

from comfy_api.latest import ComfyExtension, io, ui  # noqa: F401
