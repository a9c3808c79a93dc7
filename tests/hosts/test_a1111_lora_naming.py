"""Every LoRA file the trainer writes converts completely under the webui's LoRA naming rules.

The webui (A1111 v1.10.1 ``extensions-builtin/Lora/networks.py``) maps a kohya name
``lora_unet_<diffusers path with _>`` to the module of its LDM-layout UNet
(``diffusion_model.input_blocks.N.M...`` of ``openaimodel.UNetModel``) with a few regex rules:
down/mid/up block indices become input/middle/output block slots (3 per level: 2 res + 1
down/upsampler), resnet parts get LDM names (conv1 → in_layers.2 ...), attention parts keep theirs;
a name that matches no rule is looked up unchanged and then with ``lora_unet`` → ``diffusion_model``.
:func:`webui_module_for` restates those rules (written for this test, not copied).

The expected module set comes from the other side: :func:`ldm_lora_able_modules` lays out the LDM
UNet from the diffusers config the way ``openaimodel.UNetModel`` builds it, and the LoRA is written
by the trainer's own path (``scdpo.dpo.step.attach_training_lora`` → ``peft_unet_to_kohya`` →
``save_lora``) on the real SD1.5 UNet (meta device; only the LoRA weights are materialised).
"""

from __future__ import annotations

import re

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from diffusers import UNet2DConditionModel  # noqa: E402

from scdpo.dpo.config import TrainConfig  # noqa: E402
from scdpo.dpo.step import TRAIN_ADAPTER, attach_training_lora  # noqa: E402
from scdpo.lora import kohya_names_for_unet, load_lora, peft_unet_to_kohya, save_lora  # noqa: E402
from scdpo.lora.naming import lora_able_modules  # noqa: E402
from scdpo.sd.configs import unet_config  # noqa: E402
from scdpo.toy.model import UNET_CONFIG as TOY_UNET_CONFIG  # noqa: E402

_RESNET_PARTS = {"conv1": "in_layers_2", "conv2": "out_layers_3", "norm1": "in_layers_0", "norm2": "out_layers_0",
                 "time_emb_proj": "emb_layers_1", "conv_shortcut": "skip_connection"}


def _resnet_or_attn(kind: str, rest: str) -> str:
    return _RESNET_PARTS.get(rest, rest) if kind == "resnets" else rest


# (pattern, LDM name from the match groups) — the webui's rules for UNet keys, in its order.
_RULES = [
    (r"lora_unet_conv_in(.*)", lambda m: f"input_blocks_0_0{m[0]}"),
    (r"lora_unet_conv_out(.*)", lambda m: f"out_2{m[0]}"),
    (r"lora_unet_time_embedding_linear_(\d+)(.*)", lambda m: f"time_embed_{int(m[0]) * 2 - 2}{m[1]}"),
    (r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)",
     lambda m: f"input_blocks_{1 + int(m[0]) * 3 + int(m[2])}_{1 if m[1] == 'attentions' else 0}_"
               f"{_resnet_or_attn(m[1], m[3])}"),
    (r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)",
     lambda m: f"middle_block_{1 if m[0] == 'attentions' else int(m[1]) * 2}_{_resnet_or_attn(m[0], m[2])}"),
    (r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)",
     lambda m: f"output_blocks_{int(m[0]) * 3 + int(m[2])}_{1 if m[1] == 'attentions' else 0}_"
               f"{_resnet_or_attn(m[1], m[3])}"),
    (r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv", lambda m: f"input_blocks_{3 + int(m[0]) * 3}_0_op"),
    (r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv",
     lambda m: f"output_blocks_{2 + int(m[0]) * 3}_{2 if int(m[0]) > 0 else 1}_conv"),
]


def webui_module_for(kohya_name: str, network_layer_mapping: set[str]):
    """The webui's lookup: (module name found or None, whether a conversion rule matched)."""
    for pattern, build in _RULES:
        m = re.match(pattern, kohya_name)
        if m:
            key = "diffusion_model_" + build(m.groups())
            return (key if key in network_layer_mapping else None), True
    for key in (kohya_name, kohya_name.replace("lora_unet", "diffusion_model")):
        if key in network_layer_mapping:
            return key, False
    return None, False


def ldm_lora_able_modules(cfg: dict) -> set[str]:
    """Linear/Conv2d module names (``diffusion_model_…``, '.' → '_') of the LDM UNet with this config:
    input_blocks = [conv_in] + per level (ResBlock [+ SpatialTransformer]) × layers_per_block
    [+ Downsample]; middle = Res, Transformer, Res; output = per level, reversed,
    (ResBlock [+ Transformer]) × (layers_per_block + 1) [+ Upsample on the last of each but the top]."""
    names = {"input_blocks_0_0", "time_embed_0", "time_embed_2", "out_2"}
    chans, lpb = list(cfg["block_out_channels"]), cfg["layers_per_block"]
    down, up = cfg["down_block_types"], cfg["up_block_types"]
    depth = cfg.get("transformer_layers_per_block") or 1
    depth = list(depth) if isinstance(depth, (list, tuple)) else [depth] * len(chans)

    def res(prefix, c_in, c_out):
        names.update(f"{prefix}_{n}" for n in ("in_layers_2", "emb_layers_1", "out_layers_3"))
        if c_in != c_out:
            names.add(f"{prefix}_skip_connection")

    def transformer(prefix, d):
        names.update({f"{prefix}_proj_in", f"{prefix}_proj_out"})
        for b in range(d):
            for attn in ("attn1", "attn2"):
                names.update(f"{prefix}_transformer_blocks_{b}_{attn}_{p}" for p in ("to_q", "to_k", "to_v", "to_out_0"))
            names.update({f"{prefix}_transformer_blocks_{b}_ff_net_0_proj", f"{prefix}_transformer_blocks_{b}_ff_net_2"})

    ch, slot, skips = chans[0], 1, [chans[0]]
    for level, kind in enumerate(down):
        for _ in range(lpb):
            res(f"input_blocks_{slot}_0", ch, chans[level])
            ch = chans[level]
            if "CrossAttn" in kind:
                transformer(f"input_blocks_{slot}_1", depth[level])
            skips.append(ch)
            slot += 1
        if level != len(down) - 1:
            names.add(f"input_blocks_{slot}_0_op")
            skips.append(ch)
            slot += 1
    res("middle_block_0", ch, ch)
    transformer("middle_block_1", depth[-1])
    res("middle_block_2", ch, ch)
    slot = 0
    for level, kind in enumerate(up):
        out = chans[len(chans) - 1 - level]
        for i in range(lpb + 1):
            res(f"output_blocks_{slot}_0", ch + skips.pop(), out)
            ch = out
            attn = "CrossAttn" in kind
            if attn:
                transformer(f"output_blocks_{slot}_1", depth[len(chans) - 1 - level])
            if level != len(up) - 1 and i == lpb:
                names.add(f"output_blocks_{slot}_{2 if attn else 1}_conv")
            slot += 1
    return {"diffusion_model_" + n for n in names}


def _trainer_lora_file(unet, targets, path, base_version) -> set[str]:
    """Write a LoRA the way ``scdpo train`` does and return the module names in the saved file."""
    attach_training_lora(unet, rank=4, alpha=4, target_modules=targets)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, module in unet.named_modules():
            if TRAIN_ADAPTER in getattr(module, "lora_A", {}):
                for sub in (module.lora_A[TRAIN_ADAPTER], module.lora_B[TRAIN_ADAPTER]):
                    if sub.weight.is_meta:  # the UNet lives on the meta device; the LoRA must be real
                        sub.to_empty(device="cpu")
                    sub.weight.copy_(torch.randn(sub.weight.shape, generator=g) * 0.01)
    save_lora(path, peft_unet_to_kohya(unet, TRAIN_ADAPTER), {"ss_base_model_version": base_version})
    return set(load_lora(path).unet_module_names)


TARGETS = {
    "attention (default)": TrainConfig().lora_target_modules(),
    "attention + proj + ff": TrainConfig(train_proj=True, train_ff=True).lora_target_modules(),
}


def test_ldm_layout_of_sd15_has_one_module_per_diffusers_module():
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config("sd15"))
    ldm = ldm_lora_able_modules(unet_config("sd15"))
    assert len(ldm) == sum(1 for _ in lora_able_modules(unet)) == 282
    assert "diffusion_model_output_blocks_11_1_transformer_blocks_0_attn2_to_out_0" in ldm
    assert "diffusion_model_output_blocks_5_2_conv" in ldm and "diffusion_model_input_blocks_9_0_op" in ldm


def test_every_lora_able_sd15_module_name_maps_one_to_one():
    """The rule itself: all 282 kohya names of SD1.5 land on distinct LDM modules."""
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config("sd15"))
    ldm = ldm_lora_able_modules(unet_config("sd15"))
    names = kohya_names_for_unet(unet, [p for p, _ in lora_able_modules(unet)])
    mapped = {n: webui_module_for(n, ldm)[0] for n in names}
    missing = sorted(n for n, m in mapped.items() if m is None)
    assert not missing, f"{len(missing)} of {len(names)} not mapped, e.g. {missing[:3]}"
    assert len(set(mapped.values())) == len(names) == len(ldm)


@pytest.mark.parametrize("targets", list(TARGETS), ids=list(TARGETS))
def test_sd15_lora_written_by_the_trainer_converts_completely(tmp_path, targets):
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config("sd15"))
    ldm = ldm_lora_able_modules(unet_config("sd15"))
    expected = kohya_names_for_unet(unet, TARGETS[targets])
    in_file = _trainer_lora_file(unet, TARGETS[targets], tmp_path / "sd15.safetensors", "sd_v1")
    mapped = {n: webui_module_for(n, ldm)[0] for n in in_file}
    converted = {n for n, m in mapped.items() if m is not None}
    coverage = len(converted & expected) / len(expected)
    assert coverage == 1.0 and in_file == expected, (sorted(expected - converted)[:3], sorted(in_file - expected)[:3])
    assert len(set(mapped.values())) == len(in_file)  # no two LoRA modules patch the same webui module
    assert len(expected) == {"attention (default)": 128, "attention + proj + ff": 192}[targets]


@pytest.mark.parametrize("targets", list(TARGETS), ids=list(TARGETS))
def test_toy_lora_written_by_the_trainer_is_parsed_completely(tmp_path, targets):
    """The toy UNet has one layer per block, so the webui's slot arithmetic (which assumes SD's two)
    would not address a toy LDM model — no webui can load a toy model anyway. What must hold is that
    every name is in the kohya form the rules parse, and distinct names stay distinct."""
    unet = UNet2DConditionModel(**TOY_UNET_CONFIG)
    expected = kohya_names_for_unet(unet, TARGETS[targets])
    in_file = _trainer_lora_file(unet, TARGETS[targets], tmp_path / "toy.safetensors", "toy_v1")
    assert in_file == expected and expected
    converted = {}
    for name in in_file:
        rule = next((build(re.match(p, name).groups()) for p, build in _RULES if re.match(p, name)), None)
        assert rule is not None, f"{name} matches none of the webui's rules"
        converted[name] = rule
    assert len(set(converted.values())) == len(in_file)
