"""Preference rewards ``R`` for ranking candidates of one prompt (higher = preferred).

A reward is any object with ``name`` and ``score(images [B,H,W,C] float 0..1, prompts: list[PromptSpec])
-> Tensor[B]``. Shipped:

* :class:`ToyFidelityReward` — the toy world's: the oracle judge's fidelity on the prompt's **clean**
  attributes only (objects' colour + shape, background); unsafe motifs neither add nor subtract,
  so safety enters only through the cost model and the pairing rules;
* :class:`ClipReward` — image–prompt similarity of a full CLIP model the user has on disk
  (``clip:PATH``, or PATH alone): ``100 × cos(image embedding, prompt embedding)``;
* :class:`CallableReward` — a user's function ``module:function`` (e.g. a PickScore / HPS wrapper
  they installed) called as ``fn(images, prompts: list[str]) -> sequence of floats``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Sequence

import torch

from ..errors import ScdpoError


class ToyFidelityReward:
    name = "toy_fidelity"

    def score(self, images: torch.Tensor, prompts: Sequence) -> torch.Tensor:
        from ..toy.judge import fidelity, judge_images

        verdicts = judge_images(images)
        out = []
        for v, p in zip(verdicts, prompts):
            toy = getattr(p, "toy_prompt", None)
            if toy is None:
                raise ScdpoError("the toy fidelity reward needs toy-world prompts; pass --reward module:function "
                                 "for your own prompts")
            out.append(fidelity(v, toy))
        return torch.tensor(out, dtype=torch.float64)


class CallableReward:
    def __init__(self, spec: str):
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr:
            raise ScdpoError(f"reward {spec!r} must look like package.module:function")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ScdpoError(f"cannot import the reward {spec!r} ({exc}); check the module is installed") from None
        self.fn = fn
        self.name = spec

    def score(self, images: torch.Tensor, prompts: Sequence) -> torch.Tensor:
        values = self.fn(images, [getattr(p, "text", p) for p in prompts])
        out = torch.as_tensor([float(v) for v in values], dtype=torch.float64)
        if out.shape != (len(images),) or not torch.isfinite(out).all():
            raise ScdpoError(f"reward {self.name} must return one finite number per image (got {tuple(out.shape)})")
        return out


class ClipReward:
    """CLIP-score: ``R = 100 × cos(E_image(x), E_text(prompt))``, from -100 to 100 (about 15 to 35 for
    SD images with OpenAI's ViT-L/14). Unlike CLIPScore's ``max(cos, 0)`` it is not clipped at 0, so
    two poor candidates are still ordered. The model is loaded offline from ``path`` (a transformers
    CLIP folder, a Hugging Face cache entry or an open_clip file: :mod:`scdpo.cost.clip_files`);
    images are resized, centre-cropped and normalised as CLIP was trained
    (:class:`~scdpo.cost.backbones.ClipVisionEncoder`)."""

    def __init__(self, path: str | Path, device=None, dtype=None):
        from ..cost.clip_model import load_clip_model
        from ..models import resolve_device

        self.clip = load_clip_model(path, device=resolve_device(device) if device else None, dtype=dtype)
        self.name = f"clip:{Path(str(path)).name}"
        self._text: dict[str, torch.Tensor] = {}  # prompt → unit embedding (candidates share their prompt)

    def score(self, images: torch.Tensor, prompts: Sequence) -> torch.Tensor:
        from ..cost.scorer import images_to_list

        texts = [str(getattr(p, "text", p)) for p in prompts]
        if len(texts) != len(images):
            raise ScdpoError(f"reward {self.name}: {len(images)} image(s) but {len(texts)} prompt(s)")
        new = [t for t in dict.fromkeys(texts) if t not in self._text]
        if new:
            if len(self._text) > 4096:  # a long build: keep memory bounded
                self._text.clear()
            self._text.update(zip(new, self.clip.text_embeddings(new)))
        image_emb = self.clip.image_embeddings(images_to_list(images))
        text_emb = torch.stack([self._text[t] for t in texts]).to(image_emb.device)
        return (100.0 * (image_emb * text_emb).sum(-1)).double().cpu()


CLIP_PREFIX = "clip:"


def make_reward(spec: str | None, device=None):
    """``None`` / ``"toy"`` → :class:`ToyFidelityReward`; ``clip:PATH`` or the path of a CLIP folder or
    ``.safetensors`` file → :class:`ClipReward` (on ``device``); ``module:function`` → :class:`CallableReward`."""
    if spec in (None, "", "toy", "toy_fidelity"):
        return ToyFidelityReward()
    text = str(spec)
    if text.lower() == "clip":
        raise ScdpoError("--reward clip needs the model: clip:PATH, PATH a transformers CLIP folder (config.json + "
                         "model.safetensors, e.g. openai/clip-vit-large-patch14) or an open_clip .safetensors file")
    if text.lower().startswith(CLIP_PREFIX):
        return ClipReward(text[len(CLIP_PREFIX):], device=device)
    if Path(text).exists() or text.lower().endswith(".safetensors"):
        return ClipReward(text, device=device)
    return CallableReward(text)
