"""A tiny random full CLIP whose text projection is solved so that chosen prompts embed exactly onto
chosen images' embeddings: the reward and the zero-shot scorer then have answers known in advance.

Used by tests/cost/test_clip_zero_shot.py and tests/scp/test_clip_reward.py (imported by file path).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

CLIP_MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
CLIP_STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
RED_PROMPT, BLUE_PROMPT = "a red square", "a blue circle"


def tiny_clip_config():
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         vocab_size=49408, max_position_embeddings=77),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)


def red_and_blue(n: int = 1, seed: int = 0, noise: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """``n`` red-ish and ``n`` blue-ish ``[32,32,3]`` uint8 images (the first of each without noise)."""
    rng = np.random.default_rng(seed)
    red = np.zeros((32, 32, 3), np.int16)
    red[..., 0] = 220
    red[8:24, 8:24, 1] = 60
    blue = np.zeros((32, 32, 3), np.int16)
    blue[..., 2] = 200
    blue[4:28, 12:20, 1] = 140
    out = []
    for base in (red, blue):
        imgs = [base] + [base + rng.integers(-noise, noise + 1, base.shape) for _ in range(n - 1)]
        out.append(np.clip(np.stack(imgs), 0, 255).astype(np.uint8))
    return out[0], out[1]


@torch.no_grad()
def image_embeddings(model, images_uint8: np.ndarray) -> torch.Tensor:
    """Unit image embeddings straight from transformers (pixels normalised by hand, already 32×32)."""
    px = (torch.from_numpy(images_uint8).float().div(255).permute(0, 3, 1, 2) - CLIP_MEAN) / CLIP_STD
    emb = model.visual_projection(model.vision_model(pixel_values=px).pooler_output)
    return torch.nn.functional.normalize(emb, dim=-1)


@torch.no_grad()
def pooled_text(model, texts: list[str]) -> torch.Tensor:
    from scdpo.sd.tokenizers import clip_tokenizer

    ids = clip_tokenizer()(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return model.text_model(input_ids=ids).pooler_output


@dataclass
class AlignedClip:
    folder: Path  # transformers folder (config.json + model.safetensors)
    model: object  # the transformers CLIPModel
    e_red: torch.Tensor  # unit embedding of the clean red image
    e_blue: torch.Tensor
    logit_scale: float


def build_aligned_clip(folder: Path, to_red: list[str], to_blue: list[str], seed: int = 0) -> AlignedClip:
    """Random tiny CLIPModel; its text projection solved so that the prompts ``to_red`` embed onto the red
    image's embedding and ``to_blue`` onto the blue one's (least squares, exact for ≤ 64 prompts)."""
    from transformers import CLIPModel

    torch.manual_seed(seed)
    model = CLIPModel(tiny_clip_config()).eval()
    red, blue = red_and_blue(1)
    e_red, e_blue = image_embeddings(model, red)[0], image_embeddings(model, blue)[0]
    texts = list(to_red) + list(to_blue)
    hidden = pooled_text(model, texts).double()  # [T, 64]
    targets = torch.stack([e_red] * len(to_red) + [e_blue] * len(to_blue)).double()  # [T, 16]
    weight = torch.linalg.lstsq(hidden, targets).solution.T  # [16, 64]: weight @ h_t = target_t
    model.text_projection.weight.data = weight.float().contiguous()
    model.save_pretrained(folder, safe_serialization=True)
    return AlignedClip(folder, model, e_red, e_blue, float(model.logit_scale.detach().exp()))


def to_open_clip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers CLIPModel state dict under open_clip's names (written independently of
    scdpo.cost.open_clip_keys, from open_clip's module layout)."""
    out = {}
    blocks: dict[str, dict[str, torch.Tensor]] = {}
    top = {"vision_model.embeddings.class_embedding": "visual.class_embedding",
           "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
           "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
           "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
           "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
           "vision_model.post_layernorm.weight": "visual.ln_post.weight",
           "vision_model.post_layernorm.bias": "visual.ln_post.bias",
           "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
           "text_model.embeddings.position_embedding.weight": "positional_embedding",
           "text_model.final_layer_norm.weight": "ln_final.weight", "text_model.final_layer_norm.bias": "ln_final.bias",
           "logit_scale": "logit_scale"}
    parts = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc",
             "mlp.fc2": "mlp.c_proj"}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        if key in top:
            out[top[key]] = value
        elif key == "visual_projection.weight":
            out["visual.proj"] = value.t().contiguous()
        elif key == "text_projection.weight":
            out["text_projection"] = value.t().contiguous()
        else:
            tower, _, rest = key.partition(".encoder.layers.")
            index, _, name = rest.partition(".")
            prefix = ("visual." if tower == "vision_model" else "") + f"transformer.resblocks.{index}."
            module, _, param = name.rpartition(".")
            if module.startswith("self_attn.") and module[-6:] in ("q_proj", "k_proj", "v_proj"):
                blocks.setdefault(f"{prefix}attn.in_proj_{param}", {})[module[-6]] = value
            else:
                out[f"{prefix}{parts[module]}.{param}"] = value
    for key, qkv in blocks.items():
        out[key] = torch.cat([qkv["q"], qkv["k"], qkv["v"]]).contiguous()
    return out


def write_open_clip_config(path: Path) -> None:
    """``open_clip_config.json`` for :func:`tiny_clip_config` (heads are not in the weights)."""
    cfg = {"model_cfg": {"embed_dim": 16, "quick_gelu": True,
                         "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
                         "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}}
    path.write_text(json.dumps(cfg), encoding="utf-8")
