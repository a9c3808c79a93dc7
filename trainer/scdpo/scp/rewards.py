"""Preference rewards ``R`` for ranking candidates of one prompt (higher = preferred).

A reward is any object with ``name`` and ``score(images [B,H,W,C] float 0..1, prompts: list[PromptSpec])
-> Tensor[B]``. Shipped:

* :class:`ToyFidelityReward` — the toy world's: the oracle judge's fidelity on the prompt's **clean**
  attributes only (objects' colour + shape, background); unsafe motifs neither add nor subtract,
  so safety enters only through the cost model and the pairing rules;
* :class:`CallableReward` — a user's function ``module:function`` (e.g. a PickScore / HPS wrapper
  they installed) called as ``fn(images, prompts: list[str]) -> sequence of floats``.
"""

from __future__ import annotations

import importlib
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


def make_reward(spec: str | None):
    """``None`` / ``"toy"`` → :class:`ToyFidelityReward`; ``module:function`` → :class:`CallableReward`."""
    if spec in (None, "", "toy", "toy_fidelity"):
        return ToyFidelityReward()
    return CallableReward(spec)
