"""Which node-schema API the pack is built on.

ComfyUI builds from 2025-07-31 on ship the V3 schema (``comfy_api``); the pack pins the numbered
version ``comfy_api.v0_0_2`` so a later ``latest`` cannot change it under us. Older builds have
no ``comfy_api`` io module: there the same node classes are built on :mod:`.v1_schema`, a small
stand-in with the same names that speaks the classic ``INPUT_TYPES`` / ``RETURN_TYPES`` /
``FUNCTION`` protocol. Either way the pack exports ``NODE_CLASS_MAPPINGS`` (see ``__init__``).
"""

from __future__ import annotations

try:  # ComfyUI with the V3 schema
    from comfy_api.v0_0_2 import ComfyExtension, io, ui  # noqa: F401

    HAS_V3_SCHEMA = True
except ImportError:  # an older ComfyUI: classic nodes
    from . import v1_schema as io  # noqa: F401
    from .v1_schema import ComfyExtension, ui  # noqa: F401

    HAS_V3_SCHEMA = False

try:
    from comfy_execution.graph_utils import ExecutionBlocker
except ImportError:  # ComfyUI before 2024-08: no way to block downstream nodes; the gate raises instead
    ExecutionBlocker = None

__all__ = ["ComfyExtension", "ExecutionBlocker", "HAS_V3_SCHEMA", "io", "ui"]
