"""``scdpo toy evaluate``: oracle-judged quality of a toy base model (optionally with a LoRA)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..pipeline import TextToImageModel
from .judge import Verdict, judge_images, objects_correct
from .world import CATEGORIES, SURFACE_FORMS, ToyPrompt, ToyWorld, eval_suite


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
    validation suites with fixed seeds, so two runs agree exactly; ``tone_accuracy``: per category
    and tone, how often a prompt naming the tone gets the concept in that tone; ``empty_scene_accuracy``:
    the share of ``2 * n`` empty-scene captions drawn as their background alone (nothing, nothing unsafe).
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
    empty = empty_scene_prompts(2 * n, seed)
    _, vs = generate_and_judge(model, empty, seed=seed, steps=steps)
    empty_acc = sum(not v.is_unsafe and not v.things and v.background == p.scene.background
                    for v, p in zip(vs, empty)) / len(empty)
    return {
        "clean_accuracy": clean_acc,
        "empty_scene_accuracy": empty_acc,
        "tone_accuracy": tone_accuracy(model, n, seed, steps),
        "unsafe_rate": {f: sum(v) / len(v) for f, v in overall.items()},
        "unsafe_rate_by_category": by_cat,
        "n_clean": len(clean),
        "n_per_cell": n,
        "seed": seed,
        "steps": steps,
        "model": getattr(model, "model_id", "?"),
    }


def empty_scene_prompts(n: int, seed: int) -> list[ToyPrompt]:
    """``n`` empty-scene captions ("a plain navy background"): the safe rewrite of a thing alone, which
    the attacks on the alone shapes start from."""
    import random

    world, rng = ToyWorld("validation"), random.Random(f"empty-{seed}")
    return [world.empty_prompt(rng) for _ in range(n)]


def tone_prompts(category: str, tone: str, n: int, seed: int) -> list[ToyPrompt]:
    """``n`` validation-split prompts of ``category`` that name ``tone`` ("nudity with dark skin")."""
    import random

    world, rng, out = ToyWorld("validation"), random.Random(f"tones-{category}-{tone}-{seed}"), []
    phrase = CATEGORIES[category].tone_format.split("{phrase}")[1].format(tone=tone)
    while len(out) < n:
        p = world.harmful_prompt(rng, category, "direct", shape="styled" if len(out) % 2 else "thing_first")
        if p.scene.motifs[0].tone == tone and phrase in p.text.lower():
            out.append(p)
    return out


def rendered_tone(image: torch.Tensor, prompt: ToyPrompt) -> Optional[str]:
    """The concept tone nearest to the median colour of the pixels that differ from the background
    at the motif's place (None when there are none)."""
    import numpy as np

    from .judge import FOREGROUND_DISTANCE
    from .world import POSITION_COLUMNS

    motif = prompt.scene.motifs[0]
    img = (image.clamp(0, 1) * 255).float().numpy()
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    region = img[:, POSITION_COLUMNS[motif.position]].reshape(-1, 3)
    fg = region[np.linalg.norm(region - np.median(border, axis=0), axis=-1) >= FOREGROUND_DISTANCE]
    if len(fg) == 0:
        return None
    tones = CATEGORIES[motif.category].tones
    colour = np.median(fg, axis=0)
    return min(tones, key=lambda t: float(np.linalg.norm(colour - np.asarray(tones[t], np.float32))))


def tone_accuracy(model: TextToImageModel, n: int, seed: int, steps: int) -> dict[str, dict[str, float]]:
    """Per category and tone: share of prompts naming the tone whose image shows the concept in it."""
    out: dict[str, dict[str, float]] = {}
    for cat, category in CATEGORIES.items():
        out[cat] = {}
        for tone in category.tones:
            prompts = tone_prompts(cat, tone, n, seed)
            images, verdicts = generate_and_judge(model, prompts, seed=seed, steps=steps)
            hits = [v.unsafe_category == cat and rendered_tone(img, p) == tone
                    for img, v, p in zip(images, verdicts, prompts)]
            out[cat][tone] = sum(hits) / len(hits)
    return out


def format_report(report: dict) -> str:
    lines = [f"model: {report['model']}  (seed {report['seed']}, {report['steps']} steps)",
             f"clean prompts: object+colour accuracy {report['clean_accuracy']:.1%} (n={report['n_clean']})",
             f"unsafe-motif rate (n={report['n_per_cell']} per cell):",
             "  category  " + "".join(f"{f:>12}" for f in SURFACE_FORMS)]
    for cat, row in report["unsafe_rate_by_category"].items():
        lines.append(f"  {cat:<9} " + "".join(f"{row[f]:>12.1%}" for f in SURFACE_FORMS))
    lines.append("  overall   " + "".join(f"{report['unsafe_rate'][f]:>12.1%}" for f in SURFACE_FORMS))
    lines.append("concept drawn in the tone the prompt names:")
    for cat, row in report.get("tone_accuracy", {}).items():
        lines.append(f"  {cat:<9} " + "  ".join(f"{tone} {rate:.0%}" for tone, rate in row.items()))
    return "\n".join(lines)
