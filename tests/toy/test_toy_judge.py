"""The oracle judge by concept in any tone, and the colour-blind concept-leak metric, on renders."""

import random
from dataclasses import replace

import numpy as np
import pytest

from scdpo.toy.judge import concept_leak, judge_image, strict_unsafe, strict_unsafe_flags
from scdpo.toy.world import CATEGORIES, Scene, ToyWorld, all_colours, eval_suite, render


def _with_tone(prompt, tone):
    things = tuple(replace(t, tone=tone) if t.kind == "motif" else t for t in prompt.scene.things)
    return replace(prompt, scene=Scene(prompt.scene.background, things))


def _recoloured(prompt, rgb):
    """The prompt's render with its motif's pixels painted ``rgb`` (the concept's shape kept)."""
    img = render(prompt.scene, prompt.seed)
    bare = render(Scene(prompt.scene.background, tuple(t for t in prompt.scene.things if t.kind != "motif")),
                  prompt.seed)
    motif = np.any(img != bare, axis=-1)
    out = img.copy()
    out[motif] = rgb
    return out


@pytest.mark.parametrize("category", list(CATEGORIES))
def test_the_judge_flags_a_concept_in_every_one_of_its_tones(category):
    world, rng = ToyWorld("all"), random.Random(f"tones-{category}")
    prompts = [world.harmful_prompt(rng, category) for _ in range(60)]
    for tone in CATEGORIES[category].tones:
        hits = [judge_image(render(p.scene, p.seed)).unsafe_category == category
                for p in map(lambda p: _with_tone(p, tone), prompts)]
        assert np.mean(hits) >= 0.98, (category, tone, np.mean(hits))
        leaks = [concept_leak(render(p.scene, p.seed), p) == category for p in (_with_tone(p, tone) for p in prompts)]
        assert np.mean(leaks) >= 0.98, (category, tone)


def test_a_medium_brown_figure_is_nudity_to_the_judge():
    # the colour an earlier LoRA recoloured nude figures to, which a one-colour judge let pass
    prompts = eval_suite("harmful", 20, category="nudity", form="direct")
    flagged = [judge_image(_recoloured(p, (195, 125, 71))).unsafe_category == "nudity" for p in prompts]
    assert np.mean(flagged) >= 0.95


@pytest.mark.parametrize("rgb", [(245, 245, 245), (250, 140, 0), (240, 225, 40), (60, 200, 200), (200, 60, 140)])
def test_a_recoloured_concept_leaks_in_any_colour(rgb):
    prompts = eval_suite("harmful", 30, split="validation") + eval_suite("harmful", 30, split="test")
    for p in prompts:
        img = _recoloured(p, rgb)
        assert concept_leak(img, p) == p.category, (p.text, rgb)
        assert strict_unsafe(img, p)


def test_removing_the_concept_or_changing_its_shape_does_not_leak():
    prompts = eval_suite("harmful", 30, split="test") + eval_suite("composite", 30, split="validation")
    for p in prompts:
        removed = render(p.safe_scene, p.seed) if p.kind == "harmful" else render(
            Scene(p.scene.background, p.clean_things), p.seed)
        assert concept_leak(removed, p) is None and not strict_unsafe(removed, p), p.text
        motif = p.scene.motifs[0]
        square = replace(motif, kind="object", colour="white", shape="square")
        swapped = Scene(p.scene.background, tuple(square if t is motif else t for t in p.scene.things))
        assert concept_leak(render(swapped, p.seed), p) is None, p.text
    flags = strict_unsafe_flags(np.stack([render(p.scene, p.seed) for p in prompts]), prompts)
    assert all(flags)


def test_prompts_without_a_harmful_thing_never_leak():
    for kind in ("clean", "near_miss"):
        for p in eval_suite(kind, 60, split="test"):
            img = render(p.scene, p.seed)
            assert concept_leak(img, p) is None and not strict_unsafe(img, p)
    assert set(all_colours()) >= {"white", "orange", "yellow", "pink"}
