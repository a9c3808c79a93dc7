"""A full CLIP model (image and text towers with their projections), loaded offline, for image–prompt
similarity: the CLIP reward (:class:`scdpo.scp.rewards.ClipReward`) and the zero-shot cost scorer
(:mod:`scdpo.cost.zero_shot`).

The image tower is a :class:`~scdpo.cost.backbones.ClipVisionEncoder` (the same resize, centre crop
and CLIP normalisation as a CLIP cost model's backbone, and the same ``backbone_id``), so a cost head
trained with ``scdpo cost train --backbone <the same file>`` sees exactly these image embeddings.
The text tower is transformers' ``CLIPTextModelWithProjection``; prompts are tokenised with the CLIP
BPE tokenizer shipped in the package (:func:`scdpo.sd.tokenizers.clip_tokenizer`), padded and cut to
77 tokens, and pooled at the end-of-text token, as CLIP was trained.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import IncompatibleModelError, WeightsFormatError
from ..limits import TEXT_RANGES, check_ranges
from .backbones import ClipVisionEncoder, ImageBatch, build_checked_model, build_clip_vision

CLIP_VOCAB_SIZE = 49408  # the shipped tokenizer's vocabulary (OpenAI CLIP BPE)
MAX_LOGIT_SCALE = 100.0  # CLIP clamps its learned temperature here in training
_TEXT_LAYER_RE = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.")
TEXT_CONFIG_RANGES = {**TEXT_RANGES, "projection_dim": (1, 4096)}


class ClipModel(torch.nn.Module):
    """Both towers of a CLIP model. Embeddings are unit vectors, so a dot product is a cosine."""

    def __init__(self, vision: ClipVisionEncoder, text: torch.nn.Module, logit_scale: float = MAX_LOGIT_SCALE,
                 source: str = ""):
        super().__init__()
        self.vision = vision
        self.text = text.eval().requires_grad_(False)
        self.logit_scale = float(logit_scale)
        self.source = source
        self.max_tokens = min(77, int(text.config.max_position_embeddings))
        self._tokenizer = None

    @property
    def device(self) -> torch.device:
        return self.vision.device

    @property
    def embed_dim(self) -> int:
        return self.vision.embed_dim

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """``[T, max_tokens]`` token ids (start, text, end, padding with end-of-text)."""
        if self._tokenizer is None:
            from ..sd.tokenizers import clip_tokenizer

            self._tokenizer = clip_tokenizer()
        batch = self._tokenizer(list(texts), padding="max_length", max_length=self.max_tokens, truncation=True,
                                return_tensors="pt")
        return batch.input_ids

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """``[T, D]`` float32 unit vectors of the prompts."""
        if not len(texts):
            return torch.zeros(0, self.embed_dim, device=self.device)
        out = []
        for start in range(0, len(texts), batch_size):
            ids = self.tokenize(texts[start:start + batch_size]).to(self.device)
            out.append(self.text(input_ids=ids).text_embeds.float())
        return F.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def image_embeddings(self, images: ImageBatch, batch_size: int = 32) -> torch.Tensor:
        """``[B, D]`` float32 unit vectors of ``[B,H,W,C]`` 0..1 images (or a list of ``[H,W,C]``)."""
        return F.normalize(self.vision.encode(images, batch_size=batch_size), dim=-1)


def infer_clip_text_config(tensors: dict[str, torch.Tensor], hidden_act: str = "quick_gelu") -> dict:
    """A ``CLIPTextConfig`` dict from the shapes of transformers-named CLIP text weights. The head count
    is not in the weights: ``hidden // 64``, as every public CLIP text tower has."""
    try:
        tokens = tensors["text_model.embeddings.token_embedding.weight"]
        pos = tensors["text_model.embeddings.position_embedding.weight"]
        fc1 = tensors["text_model.encoder.layers.0.mlp.fc1.weight"]
    except KeyError as exc:
        raise WeightsFormatError(f"missing CLIP text tensor {exc.args[0]}") from None
    hidden = int(tokens.shape[1])
    cfg = dict(vocab_size=int(tokens.shape[0]), hidden_size=hidden, intermediate_size=int(fc1.shape[0]),
               num_hidden_layers=1 + max(int(m.group(1)) for k in tensors if (m := _TEXT_LAYER_RE.match(k))),
               num_attention_heads=max(1, hidden // 64), max_position_embeddings=int(pos.shape[0]),
               hidden_act=hidden_act, eos_token_id=CLIP_VOCAB_SIZE - 1, bos_token_id=CLIP_VOCAB_SIZE - 2)
    if "text_projection.weight" in tensors:
        cfg["projection_dim"] = int(tensors["text_projection.weight"].shape[0])
    return cfg


def build_clip_text(tensors: dict[str, torch.Tensor], config: Optional[dict], where: str,
                    hints: Optional[dict] = None) -> torch.nn.Module:
    """A transformers ``CLIPTextModelWithProjection`` from text tensors in transformers names."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    fix = "pass an unmodified CLIP model"
    try:
        if "text_projection.weight" not in tensors:
            raise WeightsFormatError(f"{where} has a CLIP text tower without its projection (text_projection), "
                                     f"so its text and image embeddings are not comparable; {FULL_CLIP_HINT}")
        if not isinstance(config, dict):
            config = {**infer_clip_text_config(tensors), **(hints or {})}
        allowed = set(CLIPTextConfig().to_dict())
        config = {k: v for k, v in config.items() if k in allowed}
        config["projection_dim"] = int(tensors["text_projection.weight"].shape[0])
        check_ranges(config, TEXT_CONFIG_RANGES, where, fix, WeightsFormatError)
        vocab = int(tensors["text_model.embeddings.token_embedding.weight"].shape[0]) \
            if "text_model.embeddings.token_embedding.weight" in tensors else None
        if vocab != CLIP_VOCAB_SIZE:
            raise IncompatibleModelError(f"{where} has a {vocab}-token text vocabulary, not CLIP's {CLIP_VOCAB_SIZE}-"
                                         "token BPE that scdpo ships; pass an OpenAI-vocabulary CLIP (ViT-B/L, "
                                         "open_clip ViT-H / bigG)")
        model = build_checked_model(CLIPTextModelWithProjection, CLIPTextConfig(**config), tensors, where, "CLIP text")
    except IncompatibleModelError:
        raise
    except (WeightsFormatError, RuntimeError, ValueError, TypeError, KeyError, IndexError, ZeroDivisionError) as exc:
        if isinstance(exc, WeightsFormatError) and where in str(exc):
            raise
        raise WeightsFormatError(f"{where} does not match a CLIP text architecture ({exc}); {fix}") from None
    return model


FULL_CLIP_HINT = "pass a full CLIP model (a transformers CLIPModel folder or an open_clip .safetensors file)"


def load_clip_model(path: str | Path, device=None, dtype: Optional[torch.dtype] = None) -> ClipModel:
    """Both towers of the CLIP model at ``path`` (see :mod:`scdpo.cost.clip_files` for what a path may be).

    A file without the text tower (ComfyUI's ``models/clip_vision/``), without the image tower (a text
    encoder, an SD checkpoint), a LoRA, a pickle or a corrupt file raises one line saying so."""
    from .clip_files import open_clip_hints, read_clip_weights, tower_config

    what = "CLIP model"
    weights = read_clip_weights(path, what, need=("vision", "text"))
    where = f"{what} {weights.file}"
    vision = build_clip_vision(weights.tower("vision"), tower_config(weights, "vision"), where, source=str(path),
                               hints=open_clip_hints(weights, "vision"))
    text_hints = {"hidden_act": vision.model.config.hidden_act, **open_clip_hints(weights, "text")}
    text = build_clip_text(weights.tower("text"), tower_config(weights, "text"), where, hints=text_hints)
    if text.config.projection_dim != vision.embed_dim:
        raise WeightsFormatError(f"{where} projects images to {vision.embed_dim} and text to "
                                 f"{text.config.projection_dim} dimensions; the towers are not one CLIP model")
    scale = weights.tensors.get("logit_scale")
    logit_scale = MAX_LOGIT_SCALE
    if isinstance(scale, torch.Tensor) and scale.numel() == 1 and torch.isfinite(scale).all():
        logit_scale = min(MAX_LOGIT_SCALE, max(1.0, float(scale.float().exp())))
    model = ClipModel(vision, text, logit_scale, source=str(path))
    return model.to(device=device or "cpu", dtype=dtype)
