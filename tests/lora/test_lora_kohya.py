"""A peft LoRA exported to kohya names and re-applied gives the same UNet, whoever applies it."""

import copy

import pytest
import torch
from peft import LoraConfig

from scdpo.errors import IncompatibleModelError, InputFileError, WeightsFormatError
from scdpo.lora import (
    DEFAULT_TARGET_MODULES,
    apply_lora,
    kohya_names_for_unet,
    load_lora,
    peft_unet_to_kohya,
    save_lora,
)
from scdpo.toy.model import ToyTextToImage


@pytest.fixture(scope="module")
def toy_unet():
    return ToyTextToImage.from_scratch(0).unet.eval()


def _inputs(unet, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    c, s = unet.config.in_channels, unet.config.sample_size
    x = torch.randn(batch, c, s, s, generator=g)
    t = torch.tensor([10, 700][:batch])
    ctx = torch.randn(batch, 7, unet.config.cross_attention_dim, generator=g)
    return x, t, ctx


@torch.no_grad()
def _out(unet, inputs):
    x, t, ctx = inputs
    return unet(x, t, encoder_hidden_states=ctx).sample


def _peft_unet(base, config: LoraConfig, seed=3):
    """A copy of ``base`` with a peft adapter whose A and B weights are random (not a no-op)."""
    unet = copy.deepcopy(base)
    unet.add_adapter(config, adapter_name="default")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return unet


@torch.no_grad()
def _merge_kohya_independently(base, tensors, scale=1.0):
    """Independent re-implementation of what hosts do: for each module of the UNet, look up
    ``lora_unet_<path with . → _>`` and add ``scale * alpha / r * up @ down`` to its weight."""
    unet = copy.deepcopy(base)
    applied = set()
    for path, module in unet.named_modules():
        name = "lora_unet_" + path.replace(".", "_")
        if f"{name}.lora_down.weight" not in tensors:
            continue
        down, up = tensors[f"{name}.lora_down.weight"].float(), tensors[f"{name}.lora_up.weight"].float()
        alpha = float(tensors[f"{name}.alpha"])
        r = down.shape[0]
        if down.ndim == 2:
            delta = up @ down
        else:  # conv: down [r,in,kh,kw], up [out,r,1,1]
            delta = (up.flatten(1) @ down.flatten(1)).reshape(module.weight.shape)
        module.weight += scale * alpha / r * delta
        applied.add(name)
    names = {k.split(".")[0] for k in tensors}
    assert applied == names, f"keys matching no module: {sorted(names - applied)[:3]}"
    return unet


ATTN = LoraConfig(r=4, lora_alpha=8, target_modules=DEFAULT_TARGET_MODULES, init_lora_weights=False)
CONV_AND_MIXED = LoraConfig(
    r=4,
    lora_alpha=4,
    target_modules=DEFAULT_TARGET_MODULES + ["proj_in", "conv1", "conv2", "ff.net.2"],
    rank_pattern={"ff.net.2": 2, "conv1": 8},
    alpha_pattern={"to_k": 1.5},
    init_lora_weights=False,
)


@pytest.mark.parametrize("config", [ATTN, CONV_AND_MIXED], ids=["attention", "conv_mixed_rank"])
def test_kohya_export_reapplied_matches_peft(toy_unet, tmp_path, config):
    inputs = _inputs(toy_unet)
    peft_unet = _peft_unet(toy_unet, config)
    want = _out(peft_unet, inputs)
    assert (want - _out(toy_unet, inputs)).abs().max() > 1e-2  # the LoRA changes the output

    path = save_lora(tmp_path / "l.safetensors", peft_unet_to_kohya(peft_unet), {"ss_base_model_version": "toy_v1"})
    lora = load_lora(path)

    applied = copy.deepcopy(toy_unet)
    apply_lora(applied, lora, base_model_version="toy_v1")
    torch.testing.assert_close(_out(applied, inputs), want, atol=2e-5, rtol=1e-4)

    merged = _merge_kohya_independently(toy_unet, lora.tensors)
    torch.testing.assert_close(_out(merged, inputs), want, atol=2e-5, rtol=1e-4)


def test_scale_multiplies_the_delta_like_a_host_strength(toy_unet, tmp_path):
    inputs = _inputs(toy_unet)
    tensors = peft_unet_to_kohya(_peft_unet(toy_unet, ATTN))
    lora = load_lora(save_lora(tmp_path / "l.safetensors", tensors, {"ss_base_model_version": "toy_v1"}))
    applied = copy.deepcopy(toy_unet)
    apply_lora(applied, lora, scale=0.3)
    torch.testing.assert_close(
        _out(applied, inputs), _out(_merge_kohya_independently(toy_unet, lora.tensors, 0.3), inputs), atol=2e-5, rtol=1e-4
    )


def test_every_trained_module_is_in_the_file_and_metadata_is_kohya(toy_unet, tmp_path):
    peft_unet = _peft_unet(toy_unet, ATTN)
    trained = {n for n, m in peft_unet.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    assert len(trained) == 56  # 7 transformer blocks x 2 attentions x 4 projections in the toy UNet
    path = save_lora(tmp_path / "l.safetensors", peft_unet_to_kohya(peft_unet), {"ss_base_model_version": "toy_v1"})
    lora = load_lora(path)
    assert set(lora.module_names) == {"lora_unet_" + n.replace(".", "_") for n in trained}
    assert set(lora.module_names) == kohya_names_for_unet(toy_unet, DEFAULT_TARGET_MODULES)
    assert (lora.rank, lora.alpha, lora.base_model_version) == (4, 8.0, "toy_v1")
    assert lora.metadata["ss_network_module"] == "networks.lora"
    assert (lora.metadata["ss_network_dim"], lora.metadata["ss_network_alpha"]) == ("4", "8")
    assert all(lora.tensors[f"{n}.alpha"].shape == () for n in lora.module_names)


def test_peft_layout_file_loads_as_kohya_with_its_alphas(toy_unet, tmp_path):
    from peft.utils import get_peft_model_state_dict
    from scdpo.fileio import save_safetensors_atomic

    inputs = _inputs(toy_unet)
    peft_unet = _peft_unet(toy_unet, CONV_AND_MIXED)
    sd = {f"unet.{k}": v for k, v in get_peft_model_state_dict(peft_unet, adapter_name="default").items()}
    cfg = {f"unet.{k}": v for k, v in peft_unet.peft_config["default"].to_dict().items()}
    cfg = {k: sorted(v) if isinstance(v, set) else v for k, v in cfg.items()}
    save_safetensors_atomic(sd, tmp_path / "p.safetensors", {"lora_adapter_metadata": cfg})
    lora = load_lora(tmp_path / "p.safetensors")
    assert lora.source_layout == "diffusers"
    applied = copy.deepcopy(toy_unet)
    apply_lora(applied, lora)
    torch.testing.assert_close(_out(applied, inputs), _out(peft_unet, inputs), atol=2e-5, rtol=1e-4)


def test_sd15_attention_projections_map_completely():
    """All 128 attention projections of a full-size SD1.5 UNet get the kohya names hosts map."""
    from diffusers import UNet2DConditionModel
    from scdpo.lora.naming import kohya_module_table
    from scdpo.sd.configs import unet_config

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config("sd15"))
    names = kohya_names_for_unet(unet, DEFAULT_TARGET_MODULES)
    blocks = [f"down_blocks_{b}_attentions_{a}" for b in range(3) for a in range(2)] + ["mid_block_attentions_0"]
    blocks += [f"up_blocks_{b}_attentions_{a}" for b in (1, 2, 3) for a in range(3)]
    expected = {
        f"lora_unet_{blk}_transformer_blocks_0_{attn}_{proj}"
        for blk in blocks
        for attn in ("attn1", "attn2")
        for proj in ("to_q", "to_k", "to_v", "to_out_0")
    }
    assert len(expected) == 128 and names == expected
    # the rule is injective over every LoRA-able module, so names map back unambiguously
    n_modules = sum(isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) for m in unet.modules())
    assert len(kohya_module_table(unet)) == n_modules == 282


def test_sdxl_attention_projections_map_completely():
    from diffusers import UNet2DConditionModel
    from scdpo.lora.naming import kohya_module_table
    from scdpo.sd.configs import unet_config

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config("sdxl"))
    names = kohya_names_for_unet(unet, DEFAULT_TARGET_MODULES)
    # transformer depth 2 in down_blocks.1 (2 attentions), 10 in down_blocks.2 (2), mid 10,
    # up_blocks.0 10 (3 attentions), up_blocks.1 2 (3): 4 + 20 + 10 + 30 + 6 = 70 blocks x 8
    assert len(names) == 560
    assert "lora_unet_up_blocks_0_attentions_2_transformer_blocks_9_attn2_to_out_0" in names
    n_modules = sum(isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) for m in unet.modules())
    assert len(kohya_module_table(unet)) == n_modules


# ---- clear errors -----------------------------------------------------------------------------


def _toy_lora_tensors(toy_unet):
    return peft_unet_to_kohya(_peft_unet(toy_unet, ATTN))


def test_missing_corrupt_and_non_lora_files_are_refused(toy_unet, tmp_path):
    with pytest.raises(InputFileError, match="not found"):
        load_lora(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(WeightsFormatError):
        load_lora(tmp_path / "junk.safetensors")
    from scdpo.fileio import save_safetensors_atomic

    save_safetensors_atomic({"model.diffusion_model.out.2.weight": torch.zeros(2)}, tmp_path / "ckpt.safetensors")
    with pytest.raises(WeightsFormatError, match="full model checkpoint"):
        load_lora(tmp_path / "ckpt.safetensors")
    save_safetensors_atomic({"foo.weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(WeightsFormatError, match="not a LoRA"):
        load_lora(tmp_path / "other.safetensors")
    t = _toy_lora_tensors(toy_unet)
    name = sorted(t)[0].split(".")[0]
    broken = {k: v for k, v in t.items() if k != f"{name}.lora_up.weight"}
    save_safetensors_atomic(broken, tmp_path / "half.safetensors")
    with pytest.raises(WeightsFormatError, match=f"{name} lacks"):
        load_lora(tmp_path / "half.safetensors")
    nan = dict(t)
    nan[f"{name}.lora_up.weight"] = torch.full_like(t[f"{name}.lora_up.weight"], float("nan"))
    save_safetensors_atomic(nan, tmp_path / "nan.safetensors")
    with pytest.raises(WeightsFormatError, match="NaN"):
        load_lora(tmp_path / "nan.safetensors")


def test_lora_for_another_base_model_is_refused_with_the_keys_named(toy_unet, tmp_path):
    t = _toy_lora_tensors(toy_unet)
    lora = load_lora(save_lora(tmp_path / "l.safetensors", t, {"ss_base_model_version": "toy_v1"}))
    with pytest.raises(IncompatibleModelError, match="trained for base model toy_v1.*sd_v1"):
        apply_lora(copy.deepcopy(toy_unet), lora, base_model_version="sd_v1")

    foreign = dict(t)
    foreign["lora_unet_up_blocks_0_attentions_2_transformer_blocks_9_attn2_to_q.lora_down.weight"] = torch.zeros(4, 64)
    foreign["lora_unet_up_blocks_0_attentions_2_transformer_blocks_9_attn2_to_q.lora_up.weight"] = torch.zeros(64, 4)
    lora = load_lora(save_lora(tmp_path / "f.safetensors", foreign, {"ss_base_model_version": "sdxl_base_v1-0"}))
    unet = copy.deepcopy(toy_unet)
    with pytest.raises(IncompatibleModelError, match="transformer_blocks_9_attn2_to_q.*sdxl_base_v1-0"):
        apply_lora(unet, lora)
    assert not getattr(unet, "peft_config", None)  # nothing half-applied

    name = sorted(t)[0].split(".")[0]
    wrong = dict(t)
    wrong[f"{name}.lora_down.weight"] = torch.zeros(4, 3)
    lora = load_lora(save_lora(tmp_path / "w.safetensors", wrong, {"ss_base_model_version": "toy_v1"}))
    with pytest.raises(IncompatibleModelError, match=f"{name} has lora_down \\(4, 3\\)"):
        apply_lora(copy.deepcopy(toy_unet), lora)


def test_reapplying_replaces_the_adapter_instead_of_stacking(toy_unet, tmp_path):
    inputs = _inputs(toy_unet)
    lora = load_lora(save_lora(tmp_path / "l.safetensors", _toy_lora_tensors(toy_unet), {"ss_base_model_version": "toy_v1"}))
    unet = copy.deepcopy(toy_unet)
    apply_lora(unet, lora)
    once = _out(unet, inputs)
    apply_lora(unet, lora)
    torch.testing.assert_close(_out(unet, inputs), once)
    assert not any(p.requires_grad for n, p in unet.named_parameters() if "lora_" in n)


def test_adapter_on_a_half_precision_base_is_fp32_when_trainable(toy_unet, tmp_path):
    lora = load_lora(save_lora(tmp_path / "l.safetensors", _toy_lora_tensors(toy_unet), {"ss_base_model_version": "toy_v1"}))
    half = copy.deepcopy(toy_unet).to(torch.bfloat16)
    apply_lora(half, lora, trainable=True)
    lora_params = {n: p for n, p in half.named_parameters() if "lora_" in n}
    assert len(lora_params) == 2 * 56
    assert all(p.dtype == torch.float32 and p.requires_grad for p in lora_params.values())
    x, t, ctx = _inputs(toy_unet)
    out = half(x.bfloat16(), t, encoder_hidden_states=ctx.bfloat16()).sample
    out.float().pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in lora_params.values())
