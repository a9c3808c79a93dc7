"""Which base models load, and the clear refusal every other kind of file gets."""

import json

import pytest
import torch
from safetensors.torch import save_file

from scdpo.errors import IncompatibleModelError, InputFileError, WeightsFormatError
from scdpo.sd.detect import inspect_base_model

UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
SD1_TE = "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"
VAE = "first_stage_model.encoder.conv_in.weight"
XL_TE = [
    "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight",
    "conditioner.embedders.1.model.positional_embedding",
]


def _file(tmp_path, name, keys, unet_in_channels=4, dtype=torch.float16):
    tensors = {k: torch.zeros(2, dtype=dtype) for k in keys}
    if UNET_IN in tensors:
        tensors[UNET_IN] = torch.zeros(2, unet_in_channels, 1, 1, dtype=dtype)
    path = tmp_path / f"{name}.safetensors"
    save_file(tensors, str(path))
    return path


def test_sd1_and_sdxl_are_recognised_from_their_keys_with_their_dtype(tmp_path):
    info = inspect_base_model(_file(tmp_path, "sd1", [UNET_IN, SD1_TE, VAE]))
    assert (info.family, info.layout, info.dtype) == ("sd15", "single_file", torch.float16)
    info = inspect_base_model(_file(tmp_path, "xl", [UNET_IN, VAE, *XL_TE], dtype=torch.bfloat16))
    assert (info.family, info.dtype) == ("sdxl", torch.bfloat16)


@pytest.mark.parametrize(
    "name,keys,in_ch,error,message",
    [
        ("sd2", [UNET_IN, VAE, "cond_stage_model.model.token_embedding.weight"], 4, IncompatibleModelError,
         "Stable Diffusion 2.x checkpoint, which is not supported yet"),
        ("sd3", ["model.diffusion_model.joint_blocks.0.x.weight", "text_encoders.clip_g.a"], 4, IncompatibleModelError,
         "Stable Diffusion 3 checkpoint, which is not supported yet"),
        ("flux", ["double_blocks.0.img_attn.qkv.weight"], 4, IncompatibleModelError, "Flux checkpoint, which is not supported yet"),
        ("refiner", [UNET_IN, VAE, "conditioner.embedders.0.model.text_projection"], 4, IncompatibleModelError, "SDXL refiner"),
        ("inpaint", [UNET_IN, SD1_TE, VAE], 9, IncompatibleModelError, "inpainting checkpoint"),
        ("unet_only", [UNET_IN], 4, WeightsFormatError, "only a UNet"),
        ("no_vae", [UNET_IN, SD1_TE], 4, WeightsFormatError, "no VAE weights"),
        ("lora", ["lora_unet_x.lora_down.weight"], 4, WeightsFormatError, "is a LoRA, not a base model"),
        ("other", ["backbone.layer1.weight"], 4, IncompatibleModelError, "not a Stable Diffusion checkpoint we recognise"),
    ],
)
def test_unsupported_files_are_refused_by_name(tmp_path, name, keys, in_ch, error, message):
    path = _file(tmp_path, name, keys, in_ch)
    with pytest.raises(error, match=message) as exc:
        inspect_base_model(path)
    assert str(path) in str(exc.value)


def test_missing_pickled_and_foreign_folders_are_refused(tmp_path):
    with pytest.raises(InputFileError, match="base model not found"):
        inspect_base_model(tmp_path / "nope.safetensors")
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    with pytest.raises(WeightsFormatError, match="pickled PyTorch checkpoint"):
        inspect_base_model(ckpt)
    with pytest.raises(InputFileError, match="without model_index.json"):
        inspect_base_model(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(IncompatibleModelError, match="Flux model, which is not supported yet"):
        inspect_base_model(tmp_path)
