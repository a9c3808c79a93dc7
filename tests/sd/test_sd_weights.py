"""The UNet-only loader: tensor-by-tensor reads cast as read, equal to the libraries' full load, and
one clear line for a broken or hostile file."""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
from sd_ldm_checkpoints import build_checkpoint, write_tiny_configs  # noqa: E402

from scdpo.errors import WeightsFormatError  # noqa: E402
from scdpo.sd.loader import load_sd_model, load_sd_unet  # noqa: E402
from scdpo.sd.weights import folder_unet_files, read_tensors  # noqa: E402


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def tiny(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    cfg = write_tiny_configs(request.param, root / "cfg")
    return request.param, cfg, build_checkpoint(cfg, request.param, root / "model.safetensors", dtype=torch.float16)


def test_read_tensors_casts_as_it_reads_and_selects(tmp_path):
    tensors = {"a.weight": torch.randn(3, 4), "b.bias": torch.randn(5).half(), "c.ids": torch.arange(6),
               "empty": torch.zeros(0, 2)}
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path))
    got = read_tensors(path, torch.bfloat16)
    assert got["a.weight"].dtype == torch.bfloat16 and got["c.ids"].dtype == torch.int64
    torch.testing.assert_close(got["a.weight"], tensors["a.weight"].bfloat16())
    torch.testing.assert_close(got["b.bias"].float(), tensors["b.bias"].bfloat16().float())
    assert torch.equal(got["c.ids"], tensors["c.ids"]) and got["empty"].shape == (0, 2)
    assert set(read_tensors(path, select=lambda k: k.endswith("bias"))) == {"b.bias"}
    stored = read_tensors(path)
    assert all(torch.equal(stored[k], v) for k, v in load_file(str(path)).items())


def test_unet_alone_equals_the_full_load(tiny, tmp_path):
    family, cfg, ckpt = tiny
    full = load_sd_model(ckpt, "cpu", torch.float32, config_dir=cfg)
    for dtype in (torch.float32, torch.bfloat16):
        alone = load_sd_unet(ckpt, "cpu", dtype, config_dir=cfg)
        assert alone.vae is None and alone.text_encoders == [] and alone.family == family
        assert alone.vae_scale_factor == full.vae_scale_factor and alone.default_size == full.default_size
        want = full.unet.state_dict()
        got = alone.unet.state_dict()
        assert set(got) == set(want)
        for k, v in want.items():
            assert got[k].dtype == (dtype if v.is_floating_point() else v.dtype), k
            assert torch.equal(got[k], v.to(got[k].dtype)), k
        assert not any(p.requires_grad for p in alone.unet.parameters())
    # a diffusers folder: unet/ only
    folder = tmp_path / "folder"
    full.unet.save_pretrained(folder / "unet")
    full.vae.save_pretrained(folder / "vae")
    (folder / "model_index.json").write_text((cfg / "model_index.json").read_text())
    alone = load_sd_unet(folder, "cpu", torch.bfloat16)
    assert alone.vae is None
    for k, v in full.unet.state_dict().items():
        assert torch.equal(alone.unet.state_dict()[k], v.to(torch.bfloat16)), k


def test_broken_unet_files_get_one_line(tiny, tmp_path):
    family, cfg, ckpt = tiny
    data = ckpt.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsFormatError, match="truncated or corrupt"):
        load_sd_unet(cut, "cpu", torch.float32, config_dir=cfg)
    # a UNet tensor missing: named, not a random-init layer
    tensors = load_file(str(ckpt))
    dropped = next(k for k in tensors if k.startswith("model.diffusion_model.") and "attn1.to_q" in k)
    del tensors[dropped]
    partial = tmp_path / "partial.safetensors"
    save_file(tensors, str(partial))
    with pytest.raises(WeightsFormatError, match="missing|lacks"):
        load_sd_unet(partial, "cpu", torch.float32, config_dir=cfg)


def test_shard_index_cannot_point_outside_the_folder(tmp_path):
    unet = tmp_path / "unet"
    unet.mkdir()
    save_file({"x": torch.zeros(1)}, str(tmp_path / "outside.safetensors"))
    (unet / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"x": "../outside.safetensors"}}))
    with pytest.raises(WeightsFormatError, match="holds no diffusion_pytorch_model.safetensors"):
        folder_unet_files(unet, None)
    save_file({"x": torch.zeros(1)}, str(unet / "outside.safetensors"))
    assert folder_unet_files(unet, None) == [unet / "outside.safetensors"]
