"""Where the pack finds its files: ComfyUI's ``loras`` folder and our own ``safety_models`` folder.

``safety_models`` is registered with ComfyUI's ``folder_paths`` as ``<ComfyUI>/models/safety_models``
(safety LoRAs and cost-model checkpoints); more locations come from ``extra_model_paths.yaml``
like any other model folder::

    my_models:
        base_path: /data/models
        safety_models: safety_models

Registering only touches ``folder_paths``' table (no disk access), so importing the pack stays cheap.
"""

from __future__ import annotations

import os

import folder_paths

SAFETY_MODELS = "safety_models"
LORAS = "loras"
CLIP_VISION = "clip_vision"
SAFETENSORS = {".safetensors"}
NUDENET_CHOICE = "NudeNet (bundled detector)"


def register_safety_models_folder() -> str:
    """Add ``models/safety_models`` to ComfyUI's folder table (idempotent); returns that path.

    ``extra_model_paths.yaml`` may have created the entry already (with no extension filter):
    our default location is appended after the user's, and the filter set to ``.safetensors``.
    """
    default = os.path.join(folder_paths.models_dir, SAFETY_MODELS)
    table = folder_paths.folder_names_and_paths
    if SAFETY_MODELS in table:
        paths, _ = table[SAFETY_MODELS]
        if default not in paths:
            paths.append(default)
        table[SAFETY_MODELS] = (paths, SAFETENSORS)
    else:
        table[SAFETY_MODELS] = ([default], SAFETENSORS)
    return default


def _safetensors(folder: str) -> list[str]:
    try:
        names = folder_paths.get_filename_list(folder)
    except KeyError:  # folder not registered in this ComfyUI
        return []
    return [n for n in names if n.lower().endswith(".safetensors")]


def safety_lora_choices() -> list[str]:
    """LoRA files offered by the Safe UNet node: ``safety_models`` first, then ``loras``.

    A name present in both folders is listed once and resolves to ``safety_models``.
    """
    seen: dict[str, None] = {}
    for name in _safetensors(SAFETY_MODELS) + _safetensors(LORAS):
        seen.setdefault(name, None)
    return list(seen)


def clip_vision_choices() -> list[str]:
    """CLIP vision files in ComfyUI's ``clip_vision`` folder (a cost model's backbone)."""
    return _safetensors(CLIP_VISION)


def cost_model_choices() -> list[str]:
    """Cost-model files in ``safety_models``, then the bundled NudeNet backend."""
    return _safetensors(SAFETY_MODELS) + [NUDENET_CHOICE]


def resolve(name: str, folders: tuple[str, ...]) -> str:
    """Full path of ``name`` from the first folder that has it; a clear error naming where to put it."""
    for folder in folders:
        try:
            path = folder_paths.get_full_path(folder, name)
        except KeyError:
            path = None
        if path:
            return path
    from scdpo.errors import InputFileError

    where = " or ".join(f"models/{f}/" for f in folders)
    raise InputFileError(f"{name!r} was not found in {where}; put the file there (or add the folder in "
                         "extra_model_paths.yaml) and refresh the node list (press R)")
