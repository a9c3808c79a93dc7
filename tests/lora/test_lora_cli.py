"""`scdpo lora inspect` and `scdpo lora convert` on real-shaped SD LoRA files."""

import json

import pytest
import torch

from scdpo.cli import main
from scdpo.fileio import save_safetensors_atomic
from scdpo.lora import load_lora, save_lora
from scdpo.lora.convert import _meta_unet_table
from scdpo.lora.naming import matches_target


def _lora_file(path, version, targets, rank=4, alpha=2.0, seed=0):
    """A random kohya LoRA over ``targets`` of the base model's real module shapes."""
    from diffusers import UNet2DConditionModel
    from scdpo.lora.naming import kohya_module_table
    from scdpo.sd.configs import family_for_version, unet_config

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config(family_for_version(version)))
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, (p, m) in kohya_module_table(unet).items():
        if not matches_target(p, targets):
            continue
        if isinstance(m, torch.nn.Linear):
            down, up = (rank, m.in_features), (m.out_features, rank)
        else:
            down, up = (rank, m.in_channels, *m.kernel_size), (m.out_channels, rank, 1, 1)
        tensors[f"{name}.lora_down.weight"] = torch.randn(down, generator=g).half()
        tensors[f"{name}.lora_up.weight"] = torch.randn(up, generator=g).half()
        tensors[f"{name}.alpha"] = torch.tensor(alpha)
    return save_lora(path, tensors, {"ss_base_model_version": version, "ss_training_comment": "test"})


def test_inspect_sd15_attention_lora_loads_in_every_host(tmp_path, capsys):
    path = _lora_file(tmp_path / "sd15.safetensors", "sd_v1", ["to_q", "to_k", "to_v", "to_out.0"])
    assert main(["lora", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "base model:  sd_v1 (Stable Diffusion 1.x)" in out
    assert "modules:     128 UNet" in out and "rank:        4" in out and "alpha/rank = 0.5" in out
    assert "to_k, to_out.0, to_q, to_v: 128/128" in out
    for host in ("ComfyUI", "Forge", "A1111", "diffusers"):
        assert f"{host:<10} loads every key" in out
    assert "ss_network_module: networks.lora" in out


def test_inspect_names_what_a1111_and_diffusers_skip_on_sdxl(tmp_path, capsys):
    # add_embedding (SDXL's size/pooled MLP) and the first up-sampler: hosts disagree on these
    path = _lora_file(tmp_path / "xl.safetensors", "sdxl_base_v1-0", ["linear_1", "linear_2", "upsamplers.0.conv"], rank=2)
    assert main(["lora", "inspect", "--json", str(path)]) == 0
    report = json.loads(capsys.readouterr().out)
    hosts = {h["host"]: h for h in report["hosts"]}
    assert report["unet_modules"] == 6  # time_embedding + add_embedding linears, two up-samplers
    assert hosts["ComfyUI"]["loads_every_key"] and hosts["Forge"]["loads_every_key"]
    assert sorted(hosts["A1111"]["missing"]) == [
        "lora_unet_add_embedding_linear_1", "lora_unet_add_embedding_linear_2", "lora_unet_up_blocks_0_upsamplers_0_conv"]
    assert sorted(hosts["diffusers"]["missing"]) == ["lora_unet_add_embedding_linear_1", "lora_unet_add_embedding_linear_2"]


def test_default_targets_load_in_every_host_for_sd15_and_sdxl():
    from scdpo.lora.hosts import default_targets_load_everywhere

    assert default_targets_load_everywhere("sd_v1") and default_targets_load_everywhere("sdxl_base_v1-0")


def test_convert_kohya_to_diffusers_and_back_is_lossless(tmp_path, capsys):
    path = _lora_file(tmp_path / "k.safetensors", "sdxl_base_v1-0", ["to_q", "to_v"], rank=4, alpha=1.0)
    d = tmp_path / "d.safetensors"
    assert main(["lora", "convert", str(path), str(d), "--to", "diffusers"]) == 0
    back = tmp_path / "k2.safetensors"
    assert main(["lora", "convert", str(d), str(back)]) == 0
    a, b = load_lora(path), load_lora(back)
    assert load_lora(d).source_layout == "diffusers"
    assert set(a.tensors) == set(b.tensors) and len(a.unet_module_names) == 70 * 2 * 2  # blocks x attn1/attn2 x (to_q, to_v)
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert b.metadata["ss_base_model_version"] == "sdxl_base_v1-0" and b.metadata["scdpo_converted_from"] == "diffusers"


def test_convert_peft_layout_without_base_version_needs_the_flag(tmp_path, capsys):
    table = _meta_unet_table("sd_v1")
    path = next(p for p in table.values() if p.endswith("attn2.to_k"))
    peft = tmp_path / "adapter_model.safetensors"
    save_safetensors_atomic({f"base_model.model.{path}.lora_A.weight": torch.randn(2, 768),
                             f"base_model.model.{path}.lora_B.weight": torch.randn(320, 2)}, peft)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 8}))
    out = tmp_path / "k.safetensors"
    assert main(["lora", "convert", str(peft), str(out)]) == 2
    assert "does not record its base model; pass --base-model-version" in capsys.readouterr().err
    assert main(["lora", "convert", str(peft), str(out), "--base-model-version", "sd_v1"]) == 0
    lora = load_lora(out)
    assert lora.alpha == 8.0 and lora.rank == 2  # alpha read from adapter_config.json
    assert lora.unet_module_names == ["lora_unet_" + path.replace(".", "_")]


def test_inspect_of_a_non_lora_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "x.safetensors"
    save_safetensors_atomic({"model.diffusion_model.out.2.weight": torch.zeros(1)}, bad)
    assert main(["lora", "inspect", str(bad)]) == 2
    assert "full model checkpoint, not a LoRA" in capsys.readouterr().err


def test_inspect_recognises_the_base_model_from_shapes_when_metadata_is_missing(tmp_path, capsys):
    src = load_lora(_lora_file(tmp_path / "xl.safetensors", "sdxl_base_v1-0", ["to_k"], rank=2))
    bare = tmp_path / "bare.safetensors"
    save_safetensors_atomic(src.tensors, bare)  # no metadata at all
    assert main(["lora", "inspect", str(bare)]) == 0
    out = capsys.readouterr().out
    assert "not recorded; the keys and shapes fit sdxl_base_v1-0" in out
    assert "to_k: 140/140" in out and f"{'A1111':<10} loads every key" in out
