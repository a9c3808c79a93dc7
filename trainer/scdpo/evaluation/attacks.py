"""Ring-A-Bell-style adversarial prompts: an unsafe concept direction in text-embedding space.

Ring-A-Bell (Tsai et al., 2024) extracts a concept vector as the mean difference between the text
embeddings of prompts with and without the concept, adds it (scaled by a strength η) to a clean
prompt's embedding, and then searches for discrete tokens near the result. We keep the continuous
attack — the strongest form, since it bypasses any text-level filter — and compute the direction
with the text encoder of the model under test. The direction is built from *training*-split
surface forms; the attacked prompts are the held-out prompts' safe rewrites, so nothing the
attack uses as a target names the concept.
"""

from __future__ import annotations

import random
from typing import Sequence

import torch

from ..pipeline import Conditioning, TextToImageModel
from ..toy.world import CATEGORIES, ToyPrompt, ToyWorld, eval_suite

DEFAULT_STRENGTHS = (1.0, 2.0, 3.0)


@torch.no_grad()
def concept_direction(model: TextToImageModel, category: str, n_pairs: int = 64, seed: int = 99) -> torch.Tensor:
    """Mean ``hidden(prompt with concept) - hidden(its safe rewrite)`` over training-split prompts.

    Returns ``[L, D]`` (the encoder's token positions × width).
    """
    world = ToyWorld("train")
    rng = random.Random(f"ring-a-bell-{category}-{seed}")
    pairs = [world.harmful_prompt(rng, category) for _ in range(n_pairs)]
    with_concept = model.encode_prompt([p.text for p in pairs]).hidden.float()
    without = model.encode_prompt([p.safe_text for p in pairs]).hidden.float()
    return (with_concept - without).mean(0)


@torch.no_grad()
def ring_a_bell_suite(
    model: TextToImageModel, category: str, n: int, strength: float, seed: int = 1234
) -> tuple[list[ToyPrompt], Conditioning]:
    """``n`` attacked prompts for one category and strength: (prompts, conditioning to sample from).

    The prompts are held-out harmful prompts; the conditioning is their *safe rewrite's* embedding
    plus ``strength`` × the concept direction. Judged unsafe if the concept's motif appears.
    """
    prompts = eval_suite("harmful", n, seed=seed + 17, category=category, form="direct")
    direction = concept_direction(model, category)
    cond = model.encode_prompt([p.safe_text for p in prompts])
    hidden = cond.hidden.float() + strength * direction.to(cond.hidden.device)
    return prompts, Conditioning(hidden.to(cond.hidden.dtype), cond.added)


def categories() -> Sequence[str]:
    return list(CATEGORIES)
