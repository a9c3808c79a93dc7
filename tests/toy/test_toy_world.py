"""The toy world: categories, surface-form splits, near-misses, rendering and the oracle judge."""

import random
import re

import numpy as np

from scdpo.toy.judge import judge_accuracy_on_renders, judge_image, objects_correct
from scdpo.toy.world import (
    CATEGORIES,
    NEAR_MISSES,
    SURFACE_FORMS,
    ToyWorld,
    eval_suite,
    render,
)


def test_three_unsafe_categories_with_four_surface_forms_and_disjoint_heldout_words():
    assert len(CATEGORIES) >= 3
    for cat in CATEGORIES.values():
        assert set(cat.forms) == set(SURFACE_FORMS)
        for form in ("synonym", "misspelled", "indirect"):
            train, held = set(cat.forms[form]["train"]), set(cat.forms[form]["heldout"])
            assert train and held and not (train & held), (cat.name, form)
    patterns = {c.pattern for c in CATEGORIES.values()}
    colours = {c.colour for c in CATEGORIES.values()}
    assert len(patterns) == len(CATEGORIES) and len(colours) == len(CATEGORIES)


def test_indirect_descriptions_never_contain_the_direct_word():
    for cat in CATEGORIES.values():
        direct_words = {w for phrase in cat.forms["direct"]["train"] for w in phrase.split() if w not in ("a", "an")}
        for split in ("train", "heldout"):
            for phrase in cat.forms["indirect"][split]:
                assert not direct_words & set(phrase.split()), phrase


def test_at_least_two_near_misses_per_category():
    for name in CATEGORIES:
        assert sum(nm.category == name for nm in NEAR_MISSES) >= 2


def test_training_split_prompts_never_use_heldout_forms():
    world = ToyWorld("train")
    rng = random.Random(0)
    heldout = {
        p for c in CATEGORIES.values() for f in ("synonym", "misspelled", "indirect") for p in c.forms[f]["heldout"]
    }
    texts = [world.sample_prompt(rng, harmful_frac=0.6).text for _ in range(3000)]
    pattern = re.compile(r"\b(" + "|".join(re.escape(h) for h in sorted(heldout)) + r")\b")
    assert sum(bool(pattern.search(t)) for t in texts) == 0
    assert sum(bool(pattern.search(p.text)) for p in eval_suite("harmful", 60, form="synonym")) == 60
    assert any("an image showing" in t for t in texts) is False  # held-out template too


def test_heldout_suites_use_heldout_forms():
    prompts = eval_suite("harmful", 12, category="gore", form="synonym")
    assert all(any(h in p.text for h in CATEGORIES["gore"].forms["synonym"]["heldout"]) for p in prompts)
    assert all(p.is_harmful and p.safe_scene is not None and len(p.safe_scene.things) == 1 for p in prompts)


def test_rendering_is_deterministic_and_seeded():
    p = ToyWorld("all").harmful_prompt(random.Random(3), "gore")
    a, b = render(p.scene, 7), render(p.scene, 7)
    assert a.dtype == np.uint8 and a.shape == (16, 16, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, render(p.scene, 8))  # splatter positions depend on the seed


def test_oracle_judge_is_at_least_98_percent_accurate_on_ground_truth_renders():
    rng = random.Random(11)
    world = ToyWorld("all")
    prompts = [world.sample_prompt(rng, harmful_frac=0.4, near_miss_frac=0.3) for _ in range(600)]
    acc = judge_accuracy_on_renders(prompts)
    assert acc["motif_accuracy"] >= 0.98
    assert acc["attribute_accuracy"] >= 0.98


def test_judge_tolerates_mild_noise_and_is_not_fooled_by_near_misses():
    rng = random.Random(2)
    noise = np.random.default_rng(0)
    world = ToyWorld("all")
    ok = 0
    prompts = [world.near_miss_prompt(rng) for _ in range(120)] + [world.harmful_prompt(rng) for _ in range(120)]
    for p in prompts:
        img = render(p.scene, p.seed).astype(np.float32) + noise.normal(0, 12, (16, 16, 3))
        v = judge_image(np.clip(img, 0, 255).astype(np.uint8))
        ok += int(v.unsafe_category == p.scene.unsafe_category and objects_correct(v, p))
    assert ok / len(prompts) >= 0.95


def test_red_object_with_dark_rim_is_not_gore():
    from scdpo.toy.world import Scene, Thing

    scene = Scene("black", (Thing("object", "red", "square", "center", "large"),))
    img = render(scene).astype(np.float32)
    # darken a one-pixel rim around the square to crimson-like values (anti-aliasing)
    img[4, 4:12] = img[11, 4:12] = (130, 10, 10)
    img[4:12, 4] = img[4:12, 11] = (130, 10, 10)
    assert judge_image(img.astype(np.uint8)).unsafe_category is None
