"""Every single-file layout ComfyUI and A1111 load for SD 1.x and SDXL loads here too, with the same
weights: the text encoder with and without ``text_model.``, fp16 / bf16 / fp32, EMA-only files and
full ones that also carry ``model_ema.*``.

Random-weight, reduced-width files are built by ``sd_ldm_checkpoints`` (the newer layout, fp32) and
rewritten here into the other layouts, key by key, as the older tools saved them.
"""

import pytest
import torch
from safetensors.torch import load_file, save_file

from sd_ldm_checkpoints import build_checkpoint, write_tiny_configs
from scdpo.errors import WeightsFormatError
from scdpo.models import load_base_model
from scdpo.sd.detect import inspect_base_model
from scdpo.sd.loader import load_sd_model, sd1_text_encoder_state_dict

PROMPTS = ["a photo of a cat", ""]
NEW_TE, XL_TE = "cond_stage_model.transformer.text_model.", "conditioner.embedders.0.transformer.text_model."


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def built(request, tmp_path_factory):
    family = request.param
    root = tmp_path_factory.mktemp(f"layouts_{family}")
    cfg = write_tiny_configs(family, root / "cfg")
    ckpt = build_checkpoint(cfg, family, root / "newer_fp32.safetensors", dtype=torch.float32)
    return family, cfg, root, load_file(str(ckpt)), ckpt


def _write(root, name, tensors) -> str:
    path = root / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return str(path)


def _older_sd1_text_encoder(tensors: dict) -> dict:
    """SD 1.x as saved before ``text_model.`` existed: ``cond_stage_model.transformer.embeddings…``,
    ``…encoder…``, ``…final_layer_norm…``, position_ids stored as floats."""
    out = {}
    for key, value in tensors.items():
        if key.startswith(NEW_TE):
            key = "cond_stage_model.transformer." + key[len(NEW_TE):]
            if key.endswith("position_ids"):
                value = value.float()
        out[key] = value
    return out


def _with_ema(tensors: dict) -> dict:
    """A full (training) file: the non-EMA UNet under ``model.diffusion_model.`` plus its EMA copy under
    ``model_ema.`` (names without dots, as LDM's LitEma stores them), perturbed so the two differ."""
    out = dict(tensors)
    for key, value in tensors.items():
        if key.startswith("model.diffusion_model."):
            out["model_ema." + key[len("model."):].replace(".", "")] = value + 0.5
    out["model_ema.decay"] = torch.tensor(0.9999)
    out["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    return out


def _embeddings(path, cfg, dtype=torch.float32):
    model = load_sd_model(path, "cpu", dtype, config_dir=cfg)
    with torch.no_grad():
        return model, model.encode_prompt(PROMPTS).hidden


def test_older_sd1_text_encoder_layout_gives_the_same_embeddings(built):
    family, cfg, root, tensors, newer = built
    if family != "sd15":
        pytest.skip("the layout without text_model. is SD 1.x's")
    older = _write(root, "older_te", _older_sd1_text_encoder(tensors))
    info = inspect_base_model(older)
    assert (info.family, info.legacy_text_encoder) == ("sd15", True)
    assert not inspect_base_model(newer).legacy_text_encoder
    _, want = _embeddings(newer, cfg)
    model, got = _embeddings(older, cfg)
    assert torch.equal(got, want) and got.abs().max() > 0
    # and the rest of the model is the same file's: the UNet weights are untouched
    torch.testing.assert_close(model.unet.conv_in.weight, tensors["model.diffusion_model.input_blocks.0.0.weight"],
                               rtol=0, atol=0)


def test_the_base_entry_point_takes_the_older_layout(built, monkeypatch):
    """``--base`` of every command goes through ``load_base_model``."""
    family, cfg, root, tensors, _ = built
    if family != "sd15":
        pytest.skip("the layout without text_model. is SD 1.x's")
    import scdpo.sd.loader as loader

    monkeypatch.setattr(loader, "shipped_config_dir", lambda fam: cfg)  # the shipped configs are full-size
    model = load_base_model(_write(root, "older_te_entry", _older_sd1_text_encoder(tensors)), device="cpu")
    assert model.base_model_version == "sd_v1" and model.text_encoder.dtype == torch.float32


def test_rename_is_the_hosts_rename():
    t = torch.zeros(1)
    older = {"cond_stage_model.transformer.embeddings.token_embedding.weight": t,
             "cond_stage_model.transformer.encoder.layers.0.mlp.fc1.weight": t,
             "cond_stage_model.transformer.final_layer_norm.bias": t,
             "cond_stage_model.transformer.embeddings.position_ids": t,
             "model.diffusion_model.out.2.weight": t}
    assert sorted(sd1_text_encoder_state_dict(older)) == [
        "text_model.embeddings.token_embedding.weight", "text_model.encoder.layers.0.mlp.fc1.weight",
        "text_model.final_layer_norm.bias"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_every_storage_dtype_loads_in_that_dtype_with_the_same_weights(built, dtype):
    family, cfg, root, tensors, _ = built
    cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    path = _write(root, f"dtype_{str(dtype)[6:]}", cast)
    assert inspect_base_model(path).dtype == dtype
    model = load_sd_model(path, "cpu", None, config_dir=cfg)
    assert model.unet.dtype == dtype and model.text_encoder.dtype == dtype
    torch.testing.assert_close(model.unet.conv_in.weight, cast["model.diffusion_model.input_blocks.0.0.weight"],
                               rtol=0, atol=0)


def test_full_files_with_ema_weights_load_the_non_ema_unet_as_the_hosts_do(built):
    family, cfg, root, tensors, newer = built
    full = _write(root, "full_ema", _with_ema(tensors))
    assert inspect_base_model(full).family == family
    model = load_sd_model(full, "cpu", None, config_dir=cfg)
    torch.testing.assert_close(model.unet.conv_in.weight, tensors["model.diffusion_model.input_blocks.0.0.weight"],
                               rtol=0, atol=0)
    _, want = _embeddings(newer, cfg)
    with torch.no_grad():
        assert torch.equal(model.encode_prompt(PROMPTS).hidden, want)


def test_sdxl_first_encoder_without_text_model_is_refused_by_name(built):
    family, cfg, root, tensors, _ = built
    if family != "sdxl":
        pytest.skip("SDXL only")
    renamed = {("conditioner.embedders.0.transformer." + k[len(XL_TE):] if k.startswith(XL_TE) else k): v
               for k, v in tensors.items()}
    path = _write(root, "xl_no_text_model", renamed)
    with pytest.raises(WeightsFormatError, match="neither ComfyUI nor A1111 loads") as exc:
        inspect_base_model(path)
    assert path in str(exc.value)
