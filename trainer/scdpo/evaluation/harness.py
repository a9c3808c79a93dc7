"""The evaluation harness: every method on the same held-out suites, seeds and judge.

Suites (toy world, all held-out: surface forms and caption templates no training stage used):
``direct``, ``synonym``, ``misspelled``, ``indirect`` harmful prompts per unsafe category;
``adversarial``: Ring-A-Bell-style embedding attacks (:mod:`.attacks`) at each strength, reported
per strength and as the attacker's best strength (the max); ``clean`` single-object prompts;
``near_miss`` prompts with look-/read-alike clean concepts. Image ``i`` of a suite always uses seed
``seed + i``, so every method is compared on identical starting noise.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..pipeline import TextToImageModel
from ..toy.judge import judge_images
from ..toy.world import CATEGORIES, SURFACE_FORMS, ToyPrompt, eval_suite, render
from .attacks import DEFAULT_STRENGTHS, ring_a_bell_suite
from .baselines import GenerationMethod
from .metrics import judge_features, kid, mean_fidelity, rate

HARMFUL_FORMS = tuple(SURFACE_FORMS)


@dataclass
class EvalConfig:
    n: int = 16  # prompts per (category, suite) cell; clean and near-miss suites get 6n
    steps: int = 20
    seed: int = 1234
    strengths: tuple = DEFAULT_STRENGTHS
    batch_size: int = 192
    grid_prompts: int = 8  # prompts per grid row in the report


def _generate(method: GenerationMethod, model: TextToImageModel, prompts: Sequence[ToyPrompt], cfg: EvalConfig,
              cond=None) -> torch.Tensor:
    out = []
    for start in range(0, len(prompts), cfg.batch_size):
        chunk = prompts[start:start + cfg.batch_size]
        seeds = [cfg.seed + start + i for i in range(len(chunk))]
        c = cond.index(slice(start, start + len(chunk))) if cond is not None else None
        out.append(method.generate(model, [p.text for p in chunk] if c is None else None, cond=c, seeds=seeds,
                                   steps=cfg.steps))
    return torch.cat(out)


def suites(cfg: EvalConfig) -> dict[str, list[ToyPrompt]]:
    out = {}
    for cat in CATEGORIES:
        for form in HARMFUL_FORMS:
            out[f"{form}/{cat}"] = eval_suite("harmful", cfg.n, seed=cfg.seed, category=cat, form=form)
    out["clean"] = eval_suite("clean", 6 * cfg.n, seed=cfg.seed)
    out["near_miss"] = eval_suite("near_miss", 6 * cfg.n, seed=cfg.seed)
    return out


def evaluate_method(method: GenerationMethod, model: TextToImageModel, cfg: EvalConfig,
                    reference_features: Optional[np.ndarray] = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """Run every suite for one method. Returns (metrics, sample images for the report grids)."""
    t0 = time.time()
    n_images = 0
    per_cat: dict[str, dict[str, float]] = {c: {} for c in CATEGORIES}
    overall: dict[str, list[bool]] = {f: [] for f in HARMFUL_FORMS}
    samples: dict[str, torch.Tensor] = {}
    all_suites = suites(cfg)
    for cat in CATEGORIES:
        for form in HARMFUL_FORMS:
            prompts = all_suites[f"{form}/{cat}"]
            images = _generate(method, model, prompts, cfg)
            n_images += len(images)
            flags = [v.is_unsafe for v in judge_images(images)]
            per_cat[cat][form] = rate(flags)
            overall[form].extend(flags)
            if form == "direct":
                samples[f"direct/{cat}"] = images[: cfg.grid_prompts]
    adv_by_strength: dict[str, float] = {}
    adv_by_cat: dict[str, float] = {}
    for strength in cfg.strengths:
        flags_s = []
        for cat in CATEGORIES:
            prompts, cond = ring_a_bell_suite(model, cat, cfg.n, strength, seed=cfg.seed)
            images = _generate(method, model, prompts, cfg, cond=cond)
            n_images += len(images)
            f = [v.is_unsafe for v in judge_images(images)]
            flags_s.extend(f)
            adv_by_cat[cat] = max(adv_by_cat.get(cat, 0.0), rate(f))
        adv_by_strength[f"{strength:g}"] = rate(flags_s)
    for cat in CATEGORIES:
        per_cat[cat]["adversarial"] = adv_by_cat[cat]
    clean = all_suites["clean"]
    clean_images = _generate(method, model, clean, cfg)
    clean_verdicts = judge_images(clean_images)
    near = all_suites["near_miss"]
    near_images = _generate(method, model, near, cfg)
    near_verdicts = judge_images(near_images)
    n_images += len(clean) + len(near)
    samples["clean"] = clean_images[: cfg.grid_prompts]
    samples["near_miss"] = near_images[: cfg.grid_prompts]
    if reference_features is None:
        reference_features = reference_clean_features(cfg)
    elapsed = time.time() - t0
    unsafe_rate = {f: rate(overall[f]) for f in HARMFUL_FORMS}
    unsafe_rate["adversarial"] = max(adv_by_strength.values())
    return {
        "unsafe_rate": unsafe_rate,
        "unsafe_rate_by_category": per_cat,
        "adversarial_by_strength": adv_by_strength,
        "clean_fidelity": mean_fidelity(clean_verdicts, clean),
        "clean_object_accuracy": rate([all(t in v.things for t in [(x.colour, x.shape) for x in p.clean_things])
                                       for v, p in zip(clean_verdicts, clean)]),
        "near_miss_fidelity": mean_fidelity(near_verdicts, near),
        "near_miss_flagged_unsafe": rate([v.is_unsafe for v in near_verdicts]),
        "clean_kid": kid(judge_features(clean_images), reference_features),
        "seconds_per_image": elapsed / max(1, n_images),
        "n_images": n_images,
        "description": method.description,
    }, samples


def reference_clean_features(cfg: EvalConfig) -> np.ndarray:
    """Judge features of ground-truth renders of the clean suite (the 'real' distribution)."""
    clean = suites(cfg)["clean"]
    renders = torch.from_numpy(np.stack([render(p.scene, p.seed) for p in clean])).float() / 255.0
    return judge_features(renders)


def evaluate_methods(model: TextToImageModel, methods: Sequence[GenerationMethod], cfg: EvalConfig,
                     on_method: Optional[Callable[[str, int, int], None]] = None) -> tuple[dict, dict]:
    """Evaluate each method; returns (report dict per the documented schema, samples per method)."""
    ref = reference_clean_features(cfg)
    results, samples = {}, {}
    for i, method in enumerate(methods):
        if on_method:
            on_method(method.name, i, len(methods))
        method.prepare()
        try:
            results[method.name], samples[method.name] = evaluate_method(method, model, cfg, ref)
        finally:
            method.cleanup()
    report = {
        "schema_version": 1,
        "world": "toy",
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
        "suites": {
            "harmful_forms": list(HARMFUL_FORMS),
            "categories": list(CATEGORIES),
            "adversarial": "Ring-A-Bell-style concept direction added to held-out safe rewrites; max over strengths",
        },
        "methods": results,
    }
    return report, samples
