"""open_clip tensor names → transformers CLIP tensor names (plain ViT CLIP only).

open_clip saves a CLIP as one state dict: the image tower under ``visual.`` (``conv1``,
``class_embedding``, ``positional_embedding``, ``ln_pre``, ``transformer.resblocks.N``, ``ln_post``,
``proj``) and the text tower at the top level (``token_embedding``, ``positional_embedding``,
``transformer.resblocks.N``, ``ln_final``, ``text_projection``), plus ``logit_scale``. A residual
block holds ``ln_1``, ``attn.in_proj_{weight,bias}`` (query, key and value stacked),
``attn.out_proj``, ``ln_2``, ``mlp.c_fc`` and ``mlp.c_proj``. The projections are matrices applied as
``x @ proj``, i.e. the transpose of a ``Linear`` weight.

The mapping is a renaming plus two reshapes (split ``in_proj``, transpose the projections); the
numbers are unchanged, so the converted model computes what open_clip computes. Towers open_clip
builds otherwise (timm or Hugging Face trunks, CoCa's attentional pooler, layer scale, SigLIP's
bias) are refused by name: :func:`unsupported_open_clip` says which.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional

import torch

_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_BLOCK_PARTS = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
                "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_TOP = {
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}
_IGNORED = {"attn_mask", "visual.attn_mask"}  # a causal-mask buffer some versions saved; rebuilt by the model

# tensor names (prefix or infix) of towers this mapping does not cover → what they are
_UNSUPPORTED = (("visual.trunk.", "a timm image tower"), ("text.transformer.", "a Hugging Face text tower"),
                ("visual.attn_pool", "CoCa's attentional pooler"), (".ls_1.", "layer scale"),
                ("logit_bias", "a SigLIP model"), ("text_decoder.", "a CoCa text decoder"),
                ("visual.layer1.", "a ResNet image tower"))


def is_open_clip(keys: Iterable[str]) -> bool:
    """True if the names are open_clip's (``visual.conv1.weight``, ``token_embedding.weight``...)."""
    keys = set(keys)
    return bool({"visual.conv1.weight", "visual.class_embedding", "token_embedding.weight",
                 "visual.trunk.patch_embed.proj.weight"} & keys) or any(k.startswith("visual.") for k in keys)


def open_clip_towers(keys: Iterable[str]) -> set[str]:
    """``{"vision", "text"}``, the towers whose tensors are present."""
    keys = set(keys)
    towers = set()
    if any(k.startswith("visual.") for k in keys):
        towers.add("vision")
    if "token_embedding.weight" in keys or any(k.startswith(("transformer.resblocks.", "text.")) for k in keys):
        towers.add("text")
    return towers


def is_vision_key(key: str) -> bool:
    return key.startswith("visual.")


def unsupported_open_clip(keys: Iterable[str]) -> Optional[str]:
    """What in these open_clip names this mapping cannot read (None: a plain ViT CLIP)."""
    for key in keys:
        for marker, what in _UNSUPPORTED:
            if key.startswith(marker) or (marker.startswith(".") and marker in key):
                return f"{what} ({key})"
    return None


def convert_open_clip(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors under transformers ``CLIPModel`` names. Raises ``KeyError`` naming the first
    tensor it does not know (the caller turns it into a one-line error)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if key in _IGNORED:
            continue
        if key in _TOP:
            out[_TOP[key]] = value
            continue
        if key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t().contiguous()
            continue
        m = _BLOCK.match(key)
        if m is None:
            raise KeyError(key)
        tower = "vision_model" if m.group(1) else "text_model"
        prefix = f"{tower}.encoder.layers.{m.group(2)}."
        rest = m.group(3)
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = rest.rsplit("_", 1)[-1]  # weight | bias
            if value.shape[0] % 3:
                raise KeyError(key)
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"{prefix}self_attn.{name}.{kind}"] = part.contiguous()
            continue
        module, _, param = rest.rpartition(".")
        if module not in _BLOCK_PARTS:
            raise KeyError(key)
        out[f"{prefix}{_BLOCK_PARTS[module]}.{param}"] = value
    return out
