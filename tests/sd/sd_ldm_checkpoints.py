"""Test helper: random-weight SD 1.x / SDXL single-file checkpoints in the original (LDM / sgm) key layout.

Written independently of the loader under test: diffusers / transformers models are randomly
initialised from a config folder and their state dicts renamed to LDM keys here (the inverse of
what diffusers' single-file loader does), so loading them back checks the real conversion path.
Files are cached under ``$SCDPO_TEST_CACHE`` (default ``~/.cache/scdpo-tests``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

CACHE = Path(os.environ.get("SCDPO_TEST_CACHE", Path.home() / ".cache" / "scdpo-tests"))


# ---- UNet -------------------------------------------------------------------------------------
_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]


def _resnet(rest: str) -> str:
    for d, l in _RESNET:
        if rest.startswith(d + "."):
            return l + rest[len(d):]
    raise KeyError(rest)


def unet_to_ldm(sd: dict, config: dict) -> dict:
    n_layers = config["layers_per_block"]
    up_has_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    out = {}
    top = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
           "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
           "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for key, value in sd.items():
        mod, _, leaf = key.rpartition(".")
        if mod in top:
            new = f"{top[mod]}.{leaf}"
        elif m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            blk = (n_layers + 1) * i + j + 1
            new = f"input_blocks.{blk}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{blk}.1.{rest}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            new = f"input_blocks.{(n_layers + 1) * (int(m[1]) + 1)}.0.op.{m[2]}"
        elif m := re.match(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
        elif m := re.match(r"mid_block\.attentions\.0\.(.+)", key):
            new = f"middle_block.1.{m[1]}"
        elif m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            blk = (n_layers + 1) * i + j
            new = f"output_blocks.{blk}.0.{_resnet(rest)}" if kind == "resnets" else f"output_blocks.{blk}.1.{rest}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
            i = int(m[1])
            new = f"output_blocks.{(n_layers + 1) * i + n_layers}.{2 if up_has_attn[i] else 1}.{m[2]}"
        else:
            raise KeyError(f"no LDM name for UNet key {key}")
        out["model.diffusion_model." + new] = value
    return out


# ---- VAE --------------------------------------------------------------------------------------
def vae_to_ldm(sd: dict, n_blocks: int) -> dict:
    out = {}
    for key, value in sd.items():
        new = key
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", new)
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                     lambda m: f"decoder.up.{n_blocks - 1 - int(m[1])}.block.{m[2]}.", new)
        new = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                     lambda m: f"decoder.up.{n_blocks - 1 - int(m[1])}.upsample.", new)
        new = re.sub(r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.",
                     lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}.", new)
        new = re.sub(r"^(encoder|decoder)\.mid_block\.attentions\.0\.", r"\1.mid.attn_1.", new)
        new = re.sub(r"\.conv_norm_out\.", ".norm_out.", new)
        new = new.replace(".conv_shortcut.", ".nin_shortcut.")
        if ".mid.attn_1." in new:
            new = (new.replace(".group_norm.", ".norm.").replace(".to_q.", ".q.").replace(".to_k.", ".k.")
                   .replace(".to_v.", ".v.").replace(".to_out.0.", ".proj_out."))
            if new.endswith("weight") and value.ndim == 2:
                value = value[:, :, None, None]  # LDM uses 1x1 convs
        out["first_stage_model." + new] = value
    return out


# ---- OpenCLIP text encoder (SDXL's second) ----------------------------------------------------
def open_clip_to_ldm(sd: dict, prefix: str) -> dict:
    out = {}
    layers = sorted({int(m[1]) for k in sd if (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.", k))})
    for i in layers:
        p = f"text_model.encoder.layers.{i}."
        q = f"{prefix}transformer.resblocks.{i}."
        for w in ("weight", "bias"):
            out[q + f"attn.in_proj_{w}"] = torch.cat([sd[p + f"self_attn.{n}_proj.{w}"] for n in ("q", "k", "v")])
            out[q + f"attn.out_proj.{w}"] = sd[p + f"self_attn.out_proj.{w}"]
            out[q + f"ln_1.{w}"] = sd[p + f"layer_norm1.{w}"]
            out[q + f"ln_2.{w}"] = sd[p + f"layer_norm2.{w}"]
            out[q + f"mlp.c_fc.{w}"] = sd[p + f"mlp.fc1.{w}"]
            out[q + f"mlp.c_proj.{w}"] = sd[p + f"mlp.fc2.{w}"]
    out[prefix + "token_embedding.weight"] = sd["text_model.embeddings.token_embedding.weight"]
    out[prefix + "positional_embedding"] = sd["text_model.embeddings.position_embedding.weight"]
    out[prefix + "ln_final.weight"] = sd["text_model.final_layer_norm.weight"]
    out[prefix + "ln_final.bias"] = sd["text_model.final_layer_norm.bias"]
    out[prefix + "text_projection"] = sd["text_projection.weight"].T.contiguous()
    out[prefix + "logit_scale"] = torch.tensor(4.6052)
    return out


def _sd_of(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _hf_clip_sd(model) -> dict:
    """CLIP text encoder weights under the names of the original files (``text_model.…``; newer
    transformers drop that level inside the model)."""
    sd = _sd_of(model)
    return {k if k.startswith(("text_model.", "text_projection")) else "text_model." + k: v for k, v in sd.items()}


def build_checkpoint(config_dir: Path, family: str, out: Path, dtype=torch.float16, seed: int = 0) -> Path:
    """Random-init the components described by ``config_dir`` and save them as one LDM-layout file."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config_dir = Path(config_dir)
    read = lambda sub: json.loads((config_dir / sub / "config.json").read_text())  # noqa: E731
    sd = {}
    unet_cfg = read("unet")
    with torch.no_grad():
        unet = UNet2DConditionModel.from_config(unet_cfg)
        sd.update(unet_to_ldm(_sd_of(unet), unet_cfg))
        del unet
        vae_cfg = read("vae")
        vae = AutoencoderKL.from_config(vae_cfg)
        sd.update(vae_to_ldm(_sd_of(vae), len(vae_cfg["block_out_channels"])))
        del vae
        te = CLIPTextModel(CLIPTextConfig(**read("text_encoder")))
        te_sd = _hf_clip_sd(te)
        te_sd.setdefault("text_model.embeddings.position_ids", torch.arange(77)[None])
        prefix = "cond_stage_model.transformer." if family == "sd15" else "conditioner.embedders.0.transformer."
        sd.update({prefix + k: v for k, v in te_sd.items()})
        if family == "sdxl":
            te2 = CLIPTextModelWithProjection(CLIPTextConfig(**read("text_encoder_2")))
            sd.update(open_clip_to_ldm(_hf_clip_sd(te2), "conditioner.embedders.1.model."))
    sd = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    save_file(sd, str(tmp), metadata={"note": "random weights, NOT a trained model"})
    os.replace(tmp, out)
    return out


def cached_checkpoint(name: str, config_dir: Path, family: str, dtype=torch.float16) -> Path:
    path = CACHE / f"{name}.safetensors"
    if not path.exists():
        build_checkpoint(config_dir, family, path, dtype)
    return path


# ---- reduced-size configs ---------------------------------------------------------------------
def write_tiny_configs(family: str, out: Path) -> Path:
    """A config folder shaped like ``family`` (same block types and conditioning) but tiny."""
    from scdpo.sd.configs import config_dir

    src = config_dir(family)
    out = Path(out)
    for f in src.rglob("*.json"):
        dst = out / f.relative_to(src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(f.read_text())
    def patch(sub, **kw):
        p = out / sub / "config.json"
        cfg = json.loads(p.read_text())
        cfg.update(kw)
        p.write_text(json.dumps(cfg))
    clip = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, projection_dim=32)
    patch("vae", block_out_channels=[16, 16, 32], down_block_types=["DownEncoderBlock2D"] * 3,
          up_block_types=["UpDecoderBlock2D"] * 3, norm_num_groups=8, layers_per_block=1)
    patch("text_encoder", **clip)
    if family == "sd15":
        patch("unet", block_out_channels=[32, 64], down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
              up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], cross_attention_dim=32, attention_head_dim=4,
              norm_num_groups=8, layers_per_block=1)
    else:
        # the second encoder must be wider than the first: diffusers tells them apart by width
        patch("text_encoder_2", **dict(clip, hidden_size=48, projection_dim=48, num_attention_heads=4))
        patch("unet", block_out_channels=[32, 64], down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
              up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], cross_attention_dim=32 + 48, attention_head_dim=[2, 4],
              transformer_layers_per_block=[1, 2], norm_num_groups=8, layers_per_block=1,
              addition_time_embed_dim=8, projection_class_embeddings_input_dim=8 * 6 + 48)
    return out


def write_narrow_sdxl_configs(out: Path) -> Path:
    """SDXL's full block structure (3 levels, transformer depths 1/2/10, 12- and 32-layer text
    encoders, the same module names as SDXL base) at a fraction of its width."""
    from scdpo.sd.configs import config_dir

    src = config_dir("sdxl")
    out = Path(out)
    for f in src.rglob("*.json"):
        dst = out / f.relative_to(src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(f.read_text())

    def patch(sub, **kw):
        p = out / sub / "config.json"
        p.write_text(json.dumps({**json.loads(p.read_text()), **kw}))

    patch("text_encoder", hidden_size=64, intermediate_size=128, num_attention_heads=2, projection_dim=64)
    patch("text_encoder_2", hidden_size=96, intermediate_size=192, num_attention_heads=2, projection_dim=96)
    patch("unet", block_out_channels=[64, 128, 256], attention_head_dim=[1, 2, 4], cross_attention_dim=64 + 96,
          projection_class_embeddings_input_dim=256 * 6 + 96)
    patch("vae", block_out_channels=[32, 32, 64, 64])
    return out
