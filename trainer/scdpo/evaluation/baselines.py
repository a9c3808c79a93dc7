"""Training-free safety baselines: negative prompt, Safe Latent Diffusion guidance, word blacklist.

Each is a :class:`GenerationMethod`: given prompts (or a ready conditioning for embedding-space
attacks) and per-image seeds, it returns images ``[B,H,W,C]`` float 0..1. LoRA methods are the same
class with the UNet's adapter switched (see :mod:`scdpo.evaluation.harness`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from ..pipeline import Conditioning, TextToImageModel
from ..toy.world import CATEGORIES

# What a careful operator would list, from the words they know (training split only).
def training_concept_phrases() -> list[str]:
    out = []
    for cat in CATEGORIES.values():
        for form in ("direct", "synonym"):
            out.extend(cat.forms[form]["train"])
    return out


def blacklist_words() -> set[str]:
    stop = {"a", "an", "the", "body"}
    return {w for phrase in training_concept_phrases() for w in phrase.split() if w not in stop}


@dataclass
class GenerationMethod:
    """A way of generating images for a prompt suite. ``prepare`` / ``cleanup`` run once before /
    after a method is evaluated (attach / remove its LoRA); ``transform_prompts`` may rewrite prompts
    (blacklist); ``guidance_fn_factory`` builds a guidance function per batch (SLD);
    ``negative_prompt`` replaces the empty one."""

    name: str
    prepare: Callable[[], None] = lambda: None
    cleanup: Callable[[], None] = lambda: None
    negative_prompt: str = ""
    transform_prompts: Optional[Callable[[list[str]], list[str]]] = None
    guidance_fn_factory: Optional[Callable[[TextToImageModel, int, int], Callable]] = None
    description: str = ""
    lora_path: Optional[str] = None

    def generate(self, model: TextToImageModel, prompts: Optional[Sequence[str]] = None, *,
                 cond: Optional[Conditioning] = None, seeds: Sequence[int], steps: int,
                 guidance_scale: Optional[float] = None) -> torch.Tensor:
        if cond is None:
            prompts = list(prompts or [])
            if self.transform_prompts is not None:
                prompts = self.transform_prompts(prompts)
            cond = model.encode_prompt(prompts)
        gfn = self.guidance_fn_factory(model, len(cond), steps) if self.guidance_fn_factory else None
        return model.generate(cond=cond, seed=list(seeds), steps=steps, guidance_scale=guidance_scale,
                              negative_prompt=self.negative_prompt, guidance_fn=gfn)


def negative_prompt_method() -> GenerationMethod:
    neg = ", ".join(training_concept_phrases())
    return GenerationMethod("negative-prompt", negative_prompt=neg,
                            description=f"classifier-free guidance away from: {neg}")


def blacklist_method() -> GenerationMethod:
    words = blacklist_words()
    pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, words))) + r")\b", re.IGNORECASE)

    def scrub(prompts: list[str]) -> list[str]:
        return [re.sub(r"\s+", " ", pattern.sub("", p)).strip() for p in prompts]

    return GenerationMethod("blacklist", transform_prompts=scrub,
                            description=f"prompt filter removing {len(words)} known words")


@dataclass
class SLDConfig:
    """Safe Latent Diffusion (Schramowski et al., 2023) hyper-parameters, 'medium' preset scaled to
    the number of sampling steps (warm-up given as a fraction of the steps)."""

    guidance_scale: float = 1000.0
    warmup_fraction: float = 0.15
    threshold: float = 0.01
    momentum_scale: float = 0.3
    momentum_beta: float = 0.4


def sld_method(config: SLDConfig = SLDConfig(), cfg_scale: Optional[float] = None) -> GenerationMethod:
    concept = ", ".join(training_concept_phrases())

    def factory(model: TextToImageModel, n: int, steps: int):
        safety = model.encode_prompt([concept]).to(model.device, model.dtype)
        scale = model.default_guidance if cfg_scale is None else cfg_scale
        state = {"momentum": None}

        def guide(eps_u, eps_c, t, step, latents):
            eps_s = model.predict_noise(latents, t.expand(n).to(model.device), safety.repeat(n))
            guidance = eps_c - eps_u
            safety_dir = eps_s - eps_u
            s = torch.clamp((eps_c - eps_s).abs() * config.guidance_scale, max=1.0)
            s = torch.where(eps_c - eps_s >= config.threshold, torch.zeros_like(s), s)
            safety_term = safety_dir * s
            if state["momentum"] is None:
                state["momentum"] = torch.zeros_like(safety_term)
            safety_term = safety_term + config.momentum_scale * state["momentum"]
            state["momentum"] = config.momentum_beta * state["momentum"] + (1 - config.momentum_beta) * safety_term
            if step >= config.warmup_fraction * steps:
                guidance = guidance - safety_term
            return eps_u + scale * guidance

        return guide

    return GenerationMethod("safe-guidance", guidance_fn_factory=factory,
                            description=f"Safe Latent Diffusion guidance away from: {concept}")


def lora_method(name: str, model: TextToImageModel, path: str, strength: float = 1.0,
                description: str = "") -> GenerationMethod:
    """A safety LoRA on the same UNet: attached in ``prepare``. The file is read and checked against
    ``model`` (base model version, module names and shapes) here, so a wrong LoRA fails before any
    method is evaluated rather than after the ones listed before it."""
    from ..lora import apply_lora, check_compatible, load_lora, remove_lora

    lora = load_lora(path)
    check_compatible(model.unet, lora, model.base_model_version)
    adapter = "scdpo_eval"

    return GenerationMethod(
        name,
        prepare=lambda: apply_lora(model, lora, scale=strength, adapter_name=adapter),
        cleanup=lambda: remove_lora(model.unet, adapter),
        description=description or f"safety LoRA {path} (strength {strength:g})",
        lora_path=str(path),
    )


TRAINING_FREE = {
    "negative-prompt": negative_prompt_method,
    "safe-guidance": sld_method,
    "blacklist": blacklist_method,
}
