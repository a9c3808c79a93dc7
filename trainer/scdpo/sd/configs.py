"""The diffusers / transformers configs shipped in ``scdpo/configs/<family>/`` (no hub access).

Families: ``sd15`` (SD 1.x, kohya version ``sd_v1``) and ``sdxl`` (``sdxl_base_v1-0``). Each
folder is laid out like a diffusers pipeline folder (``unet/config.json``, ``vae/config.json``,
``text_encoder/config.json``, ``scheduler/scheduler_config.json``, ``tokenizer/``...), so it can
also be passed to diffusers' ``from_single_file(config=...)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import IncompatibleModelError

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"
FAMILY_VERSIONS = {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"}


def family_for_version(base_model_version: str) -> str:
    for family, version in FAMILY_VERSIONS.items():
        if version == base_model_version:
            return family
    raise IncompatibleModelError(
        f"base model version {base_model_version!r} is not supported yet (supported: {', '.join(FAMILY_VERSIONS.values())})"
    )


def config_dir(family: str) -> Path:
    path = CONFIG_ROOT / family
    if not path.is_dir():
        raise FileNotFoundError(f"shipped configs for {family!r} are missing at {path}; reinstall the package")
    return path


def read_config(family: str, component: str, filename: str = "config.json") -> dict[str, Any]:
    return json.loads((config_dir(family) / component / filename).read_text(encoding="utf-8"))


def unet_config(family: str) -> dict[str, Any]:
    return read_config(family, "unet")
