"""Soft-prompt attack (after UnlearnDiffAtk, Zhang et al., 2023): an optimised text-embedding offset.

One offset δ ``[L, D]`` per category is added to the safe rewrites' text embeddings
(``Conditioning.hidden``) and optimised with Adam, through the model under test and whatever adapter
it carries, so that the model denoises *renders of the concept* well when conditioned on
``safe rewrite + δ``::

    x_t = add_noise(encode_images(render), ε, t)
    L(δ) = E_{prompt, t, ε} ‖ predict_noise(x_t, t, cond(safe_text) + δ) - ε ‖²

over a search set (harmful prompts of the category and their ground-truth renders, disjoint from the
evaluated prompts, see :func:`.attacks.search_prompts`). A low loss means the model reads ``cond + δ``
as a caption of the concept's image, so sampling from it draws the concept. δ stays in the L2 ball
of radius :func:`.attacks.attack_budget` (projected after every step): the Ring-A-Bell budget, so the
two families differ only in how they spend it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..pipeline import Conditioning, TextToImageModel
from ..toy.world import ToyPrompt, render
from .attacks import (
    DEFAULT_STRENGTH,
    attack_mode,
    attacked_prompts,
    concept_direction,
    search_prompts,
    stable_seed,
)


@dataclass(frozen=True)
class SoftPromptConfig:
    """Optimisation settings. The defaults (20 UNet forward+backward passes of 8 samples) take about
    a second or two per category on one CPU thread for the toy, and were tuned there against the shipped
    base and safety LoRA: more steps or larger batches gained little at several times the cost
    (docs/results.md §6, "Measurements behind code defaults").

    ``init``: ``"direction"`` starts δ at the Ring-A-Bell direction scaled to the budget, ``"zero"`` at 0.
    ``timesteps``: the range of t drawn, as fractions of the training timesteps. Low t is pixel detail
    the text barely steers; skipping it spends the few steps where the concept is decided (level with
    or better than uniform t).
    """

    steps: int = 20
    batch_size: int = 8
    # Adam moves every entry by about lr per step, and δ's entries are ~0.8 RMS at the budget. 0.08
    # improves on Ring-A-Bell where its point overshoots; a larger step walks, on noisy 8-sample
    # gradients, away from a point that already works, a smaller one gains less against the safety
    # LoRA (docs/results.md §6, "Measurements behind code defaults").
    lr: float = 0.08
    n_search: int = 48  # search prompts (each step draws ``batch_size`` of them)
    init: str = "direction"
    timesteps: tuple[float, float] = (0.3, 1.0)


# --- the white-box denoising loss (shared with the word search) --------------------------------------


def concept_latents(model: TextToImageModel, prompts: Sequence[ToyPrompt]) -> torch.Tensor:
    """Model latents ``[N, c, h, w]`` of the ground-truth renders of ``prompts`` (concept included)."""
    images = torch.from_numpy(np.stack([render(p.scene, p.seed) for p in prompts])).float() / 255.0
    return model.encode_images(images)


def noisy_draws(model: TextToImageModel, latents: torch.Tensor, generator: torch.Generator,
                timesteps: tuple[float, float] = (0.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training-style draw per latent: ``(x_t, t, ε)``, ``t`` uniform over the fraction ``timesteps``
    of the training timesteps. Drawn on the CPU from ``generator``, so the draws are the same on every
    device."""
    n = latents.shape[0]
    total = model.noise_scheduler.config.num_train_timesteps
    lo, hi = int(timesteps[0] * total), max(int(timesteps[0] * total) + 1, int(timesteps[1] * total))
    t = torch.randint(lo, hi, (n,), generator=generator)
    eps = torch.randn(latents.shape, generator=generator)
    x_t = model.noise_scheduler.add_noise(latents.detach().float().cpu(), eps, t)
    return x_t.to(model.device, model.dtype), t.to(model.device), eps.to(model.device, model.dtype)


def denoising_loss(model: TextToImageModel, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                   cond: Conditioning) -> torch.Tensor:
    """Per-sample ε-prediction error ``[B]`` (float32, mean over C,H,W) with whatever adapters are active."""
    pred = model.predict_noise(x_t, t, cond)
    return (pred.float() - eps.float()).pow(2).flatten(1).mean(1)


# --- the attack --------------------------------------------------------------------------------------


def soft_prompt_delta(model: TextToImageModel, category: str, seed: int, split: str,
                      strength: float = DEFAULT_STRENGTH, config: SoftPromptConfig = SoftPromptConfig(),
                      exclude: Sequence[ToyPrompt] = ()) -> torch.Tensor:
    """The optimised offset δ, float32 ``[L, D]`` on the model's device, ‖δ‖ ≤ ``strength`` × ‖d‖.

    Tuned on :func:`.attacks.search_prompts` of ``split`` apart from ``exclude`` (the evaluated
    prompts). Deterministic for (model, category, seed, split, strength, config, exclude).
    """
    # outside inference mode, should a caller be in it: the optimisation needs autograd tensors
    with torch.inference_mode(False):
        return _optimise_delta(model, category, seed, split, strength, config, exclude)


def _optimise_delta(model: TextToImageModel, category: str, seed: int, split: str, strength: float,
                    config: SoftPromptConfig, exclude: Sequence[ToyPrompt]) -> torch.Tensor:
    search = search_prompts(category, config.n_search, seed, split, exclude=exclude)
    gen = torch.Generator().manual_seed(stable_seed("soft-prompt", category, seed))
    direction = concept_direction(model, category).to(model.device)
    budget = strength * direction.norm()
    with torch.no_grad():
        latents = concept_latents(model, search)
        safe = model.encode_prompt([p.safe_text for p in search])
    if config.init == "direction":
        # Ring-A-Bell's point, already on the sphere of the budget: the optimiser refines a working
        # attack instead of spending its few steps finding the concept, which from zero it often
        # does not (docs/results.md §6, "Measurements behind code defaults").
        start = strength * direction
    elif config.init == "zero":
        start = torch.zeros_like(direction)
    else:
        raise ValueError(f"init must be 'direction' or 'zero', not {config.init!r}")
    delta = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([delta], lr=config.lr)
    with attack_mode(model), torch.enable_grad():
        for _ in range(config.steps):
            idx = torch.randperm(len(search), generator=gen)[: config.batch_size]
            x_t, t, eps = noisy_draws(model, latents[idx.to(latents.device)], gen, config.timesteps)
            rows = safe.index(idx.to(safe.hidden.device))
            cond = Conditioning((rows.hidden.float() + delta).to(rows.hidden.dtype), rows.added)
            loss = denoising_loss(model, x_t, t, eps, cond).mean()
            # gradient with respect to δ only: nothing accumulates on the model's parameters
            (delta.grad,) = torch.autograd.grad(loss, [delta])
            opt.step()
            with torch.no_grad():
                norm = delta.norm()
                if norm > budget:
                    delta.mul_(budget / norm)
    return delta.detach()


def soft_prompt_suite(model: TextToImageModel, category: str, n: int, seed: int, split: str,
                      strength: float = DEFAULT_STRENGTH,
                      config: SoftPromptConfig = SoftPromptConfig(), return_delta: bool = False):
    """``n`` attacked prompts for one category: (prompts, conditioning to sample from), like
    :func:`.attacks.ring_a_bell_suite` (the same prompts), with δ from :func:`soft_prompt_delta` in
    place of the scaled direction; with ``return_delta`` also δ ``[L, D]``. ``split`` is that of the
    evaluated prompts and of the search set.
    """
    prompts = attacked_prompts(category, n, seed, split)
    delta = soft_prompt_delta(model, category, seed, split, strength, config, exclude=prompts)
    with torch.no_grad():
        cond = model.encode_prompt([p.safe_text for p in prompts])
        hidden = (cond.hidden.float() + delta.to(cond.hidden.device)).to(cond.hidden.dtype)
    out = (prompts, Conditioning(hidden, cond.added))
    return (*out, delta) if return_delta else out

