"""``scdpo toy evaluate``: oracle-judged quality of a toy base model (optionally with a LoRA)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..pipeline import TextToImageModel
from .judge import Verdict, judge_images, objects_correct
from .world import CATEGORIES, SURFACE_FORMS, ToyPrompt, eval_suite


def generate_and_judge(
    model: TextToImageModel,
    prompts: Sequence[ToyPrompt],
    seed: int = 0,
    steps: int = 20,
    guidance_scale: Optional[float] = None,
    batch_size: int = 128,
    **generate_kwargs,
) -> tuple[torch.Tensor, list[Verdict]]:
    """Generate one image per prompt (image ``i`` with seed ``seed + i``) and judge it."""
    images, verdicts = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        seeds = [seed + start + i for i in range(len(chunk))]
        imgs = model.generate([p.text for p in chunk], seed=seeds, steps=steps,
                              guidance_scale=guidance_scale, **generate_kwargs)
        images.append(imgs)
        verdicts.extend(judge_images(imgs))
    return torch.cat(images), verdicts


def evaluate_base(weights: Optional[str] = None, lora: Optional[str] = None, n: int = 16, seed: int = 1234,
                  steps: int = 20, model: Optional[TextToImageModel] = None) -> dict:
    """Clean object+colour accuracy and unsafe-motif rate per category and surface form.

    ``n`` prompts per (category, surface form) cell and ``6 * n`` clean prompts, all from the
    held-out suites with fixed seeds, so two runs agree exactly.
    """
    if model is None:
        from ..generate import attach_lora
        from ..models import load_base_model

        model = load_base_model(weights)
        attach_lora(model, lora)
    clean = eval_suite("clean", 6 * n, seed=seed)
    _, verdicts = generate_and_judge(model, clean, seed=seed, steps=steps)
    clean_acc = sum(objects_correct(v, p) for v, p in zip(verdicts, clean)) / len(clean)
    by_cat: dict[str, dict[str, float]] = {}
    overall: dict[str, list[bool]] = {f: [] for f in SURFACE_FORMS}
    for cat in CATEGORIES:
        by_cat[cat] = {}
        for form in SURFACE_FORMS:
            prompts = eval_suite("harmful", n, seed=seed, category=cat, form=form)
            _, vs = generate_and_judge(model, prompts, seed=seed, steps=steps)
            flags = [v.is_unsafe for v in vs]
            by_cat[cat][form] = sum(flags) / len(flags)
            overall[form].extend(flags)
    return {
        "clean_accuracy": clean_acc,
        "unsafe_rate": {f: sum(v) / len(v) for f, v in overall.items()},
        "unsafe_rate_by_category": by_cat,
        "n_clean": len(clean),
        "n_per_cell": n,
        "seed": seed,
        "steps": steps,
        "model": getattr(model, "model_id", "?"),
    }


def format_report(report: dict) -> str:
    lines = [f"model: {report['model']}  (seed {report['seed']}, {report['steps']} steps)",
             f"clean prompts: object+colour accuracy {report['clean_accuracy']:.1%} (n={report['n_clean']})",
             f"unsafe-motif rate (n={report['n_per_cell']} per cell):",
             "  category  " + "".join(f"{f:>12}" for f in SURFACE_FORMS)]
    for cat, row in report["unsafe_rate_by_category"].items():
        lines.append(f"  {cat:<9} " + "".join(f"{row[f]:>12.1%}" for f in SURFACE_FORMS))
    lines.append("  overall   " + "".join(f"{report['unsafe_rate'][f]:>12.1%}" for f in SURFACE_FORMS))
    return "\n".join(lines)
