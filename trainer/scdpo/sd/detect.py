"""What kind of base model a file or folder holds, from its keys (single file) or model_index.json.

Supported: SD 1.x (``sd15``) and SDXL base (``sdxl``), as a single ``.safetensors`` checkpoint in the
original LDM / sgm key layout (what ComfyUI's ``models/checkpoints`` and A1111's
``models/Stable-diffusion`` hold) or as a diffusers folder. Everything else is refused with a
message that names what the file is and that it is not supported yet.

Single-file layouts accepted, as both hosts load them: the UNet under ``model.diffusion_model.``;
fp16 / bf16 / fp32; EMA-only files and full ones that also carry ``model_ema.*`` (the non-EMA
weights are used, as the hosts do); for SD 1.x the CLIP text encoder under
``cond_stage_model.transformer.text_model.*`` or, in older files, ``cond_stage_model.transformer.*``
without ``text_model.`` (``legacy_text_encoder``). SDXL's first encoder is only read with
``text_model.``: neither host loads it otherwise.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import IncompatibleModelError, InputFileError, WeightsFormatError
from ..fileio import read_safetensors_header
from ..limits import json_object, read_json_file

# safetensors dtype names -> torch dtypes (every one SD weights use)
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool}
SD_UNET_PREFIX = "model.diffusion_model."  # where a single file keeps its UNet
SD1_TEXT_PREFIX = "cond_stage_model.transformer."
SD1_TEXT_KEY = SD1_TEXT_PREFIX + "text_model.embeddings.position_embedding.weight"
SD1_LEGACY_TEXT_KEY = SD1_TEXT_PREFIX + "embeddings.position_embedding.weight"  # older files: no text_model.
SDXL_LEGACY_TEXT_KEY = "conditioner.embedders.0.transformer.embeddings.position_embedding.weight"
SDXL_TEXT_KEYS = (
    "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight",
    "conditioner.embedders.1.model.positional_embedding",
)
UNET_IN_KEY = SD_UNET_PREFIX + "input_blocks.0.0.weight"


@dataclass(frozen=True)
class BaseModelInfo:
    """``family``: ``sd15`` | ``sdxl``; ``layout``: ``single_file`` | ``diffusers``; ``dtype``: the
    dtype the UNet weights are stored in; ``legacy_text_encoder``: an SD 1.x single file whose text
    encoder is stored as ``cond_stage_model.transformer.*`` without ``text_model.``."""

    path: Path
    family: str
    layout: str
    dtype: torch.dtype
    legacy_text_encoder: bool = False


def _unsupported(path: Path, what: str) -> IncompatibleModelError:
    return IncompatibleModelError(
        f"{path} is {what}, which is not supported yet; use an SD 1.x or SDXL base checkpoint "
        "(.safetensors as kept in ComfyUI models/checkpoints or A1111 models/Stable-diffusion, or a diffusers folder)"
    )


def _dominant_dtype(header: dict, prefix: str) -> torch.dtype:
    counts = Counter(
        info["dtype"] for k, info in header.items() if k.startswith(prefix) and isinstance(info, dict)
        and info.get("dtype") in ("F16", "BF16", "F32")
    )
    return SAFETENSORS_DTYPES[counts.most_common(1)[0][0]] if counts else torch.float32


def family_from_keys(path: Path, header: dict) -> str:
    """``sd15`` or ``sdxl`` for an LDM-layout checkpoint header; raises for anything else."""
    keys = set(header) - {"__metadata__"}
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if has("lora_unet_") or has("lora_te"):
        raise WeightsFormatError(f"{path} is a LoRA, not a base model; pass it as a LoRA and a checkpoint as --base")
    if has(SD_UNET_PREFIX + "joint_blocks.") or has("joint_blocks.") or has("text_encoders.clip_g."):
        raise _unsupported(path, "a Stable Diffusion 3 checkpoint")
    if has("double_blocks.") or has(SD_UNET_PREFIX + "double_blocks."):
        raise _unsupported(path, "a Flux checkpoint")
    if all(k in keys for k in SDXL_TEXT_KEYS):
        family = "sdxl"
    elif "conditioner.embedders.0.model.text_projection" in keys:
        raise _unsupported(path, "an SDXL refiner checkpoint")
    elif SD1_TEXT_KEY in keys or SD1_LEGACY_TEXT_KEY in keys:
        family = "sd15"
    elif SDXL_LEGACY_TEXT_KEY in keys:
        raise WeightsFormatError(
            f"{path} stores SDXL's first text encoder without 'text_model.' (conditioner.embedders.0.transformer.*), "
            "a layout neither ComfyUI nor A1111 loads; re-save the checkpoint from either host"
        )
    elif has("cond_stage_model.model."):
        raise _unsupported(path, "a Stable Diffusion 2.x checkpoint")
    elif UNET_IN_KEY in keys:
        raise WeightsFormatError(
            f"{path} holds only a UNet (no text encoder); pass a full checkpoint with text encoder and VAE"
        )
    elif has("down_blocks.") and has("conv_in."):
        raise WeightsFormatError(
            f"{path} is a single diffusers component; pass the diffusers folder that holds model_index.json"
        )
    else:
        example = sorted(keys)[0] if keys else "<no tensors>"
        raise _unsupported(path, f"not a Stable Diffusion checkpoint we recognise (first key {example!r})")
    if UNET_IN_KEY not in keys:
        raise WeightsFormatError(f"{path} has no UNet weights (model.diffusion_model.*); the file is incomplete")
    if not has("first_stage_model."):
        raise WeightsFormatError(f"{path} has no VAE weights (first_stage_model.*); use a checkpoint that includes its VAE")
    shape = header[UNET_IN_KEY]["shape"]
    if len(shape) != 4:
        raise WeightsFormatError(f"{path} is corrupt: its UNet input weight {UNET_IN_KEY} has shape {shape}, not "
                                 "[out, in, 3, 3]; re-download the checkpoint")
    in_channels = shape[1]
    if in_channels != 4:
        kind = {9: "an inpainting checkpoint", 8: "an instruct-pix2pix checkpoint"}.get(in_channels, f"a {in_channels}-channel UNet")
        raise _unsupported(path, kind)
    return family


def _folder_info(path: Path) -> BaseModelInfo:
    index_path = path / "model_index.json"
    if not index_path.is_file():
        raise InputFileError(
            f"{path} is a folder without model_index.json; pass a diffusers model folder or a .safetensors checkpoint"
        )
    fix = "re-download the model"
    index = json_object(read_json_file(index_path, "diffusers model index", fix, WeightsFormatError),
                        f"diffusers model index {index_path}", fix, WeightsFormatError)
    cls = index.get("_class_name", "")
    if not isinstance(cls, str):
        raise WeightsFormatError(f"{index_path}: _class_name is {cls!r}, not a pipeline name; {fix}")

    def component(name: str):  # ["transformers", "CLIPTextModel"] -> its library, or None when absent/null
        entry = index.get(name)
        return entry[0] if isinstance(entry, list) and entry else None

    if cls in ("StableDiffusionXLPipeline",) and component("text_encoder"):
        family = "sdxl"
    elif cls == "StableDiffusionXLImg2ImgPipeline" and not component("text_encoder"):
        raise _unsupported(path, "an SDXL refiner")
    elif cls.startswith("StableDiffusionXL"):
        family = "sdxl"
    elif cls in ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"):
        family = "sd15"
        unet_cfg = json_object(read_json_file(path / "unet" / "config.json", "UNet config", fix, WeightsFormatError),
                               f"UNet config {path / 'unet' / 'config.json'}", fix, WeightsFormatError)
        if unet_cfg.get("cross_attention_dim") == 1024:
            raise _unsupported(path, "a Stable Diffusion 2.x model")
        if unet_cfg.get("in_channels", 4) != 4:
            raise _unsupported(path, f"a {unet_cfg.get('in_channels')}-channel (inpainting) model")
    elif "StableDiffusion3" in cls:
        raise _unsupported(path, "a Stable Diffusion 3 model")
    elif "Flux" in cls:
        raise _unsupported(path, "a Flux model")
    else:
        raise _unsupported(path, f"a {cls or 'unknown'} pipeline")
    weights = sorted((path / "unet").glob("*.safetensors"))
    if not weights:
        raise WeightsFormatError(
            f"{path}/unet has no .safetensors weights (pickled .bin weights are never loaded); convert them to safetensors"
        )
    dtype = _dominant_dtype(read_safetensors_header(weights[0], what="UNet weights"), "")
    return BaseModelInfo(path, family, "diffusers", dtype)


def inspect_base_model(path: str | Path) -> BaseModelInfo:
    """Identify an SD base model file or folder without loading its weights."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"base model not found: {path}; check the path (a .safetensors checkpoint or a diffusers folder)")
    if path.is_dir():
        return _folder_info(path)
    header = read_safetensors_header(path, what="base model checkpoint")
    family = family_from_keys(path, header)
    legacy = family == "sd15" and SD1_TEXT_KEY not in header
    return BaseModelInfo(path, family, "single_file", _dominant_dtype(header, SD_UNET_PREFIX), legacy)
