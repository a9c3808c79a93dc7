"""The toy world: categories, surface-form splits, near-misses, rendering and the oracle judge."""

import random
import re

import numpy as np

import itertools

import pytest

from scdpo.toy.judge import judge_accuracy_on_renders, judge_image, objects_correct
from scdpo.toy.world import (
    BACKGROUNDS,
    CAPTION_SHAPES,
    CATEGORIES,
    CENTRED_WORDS,
    NEAR_MISSES,
    PRETRAINING_CAPTION_SHAPES,
    SPLITS,
    STYLE_SUFFIX,
    SURFACE_FORMS,
    TEMPLATES_ONE,
    TEMPLATES_TWO,
    ToyWorld,
    all_colours,
    eval_suite,
    render,
)


def test_three_unsafe_categories_with_four_surface_forms_and_three_disjoint_splits():
    assert len(CATEGORIES) >= 3
    for cat in CATEGORIES.values():
        assert set(cat.forms) == set(SURFACE_FORMS)
        for form in ("synonym", "misspelled", "indirect"):
            words = {s: set(cat.forms[form][s]) for s in SPLITS}
            assert all(words.values()), (cat.name, form)
            assert not (words["train"] & words["validation"] or words["train"] & words["test"]
                        or words["validation"] & words["test"]), (cat.name, form)
    patterns = {c.pattern for c in CATEGORIES.values()}
    assert len(patterns) == len(CATEGORIES)
    for tpl in (TEMPLATES_ONE, TEMPLATES_TWO):
        assert not set(tpl["train"]) & set(tpl["validation"]) and not set(tpl["test"]) & set(tpl["train"] + tpl["validation"])
    assert not set(CAPTION_SHAPES["test"]) & set(CAPTION_SHAPES["train"] + CAPTION_SHAPES["validation"])
    assert not set(CAPTION_SHAPES["validation"]) & set(CAPTION_SHAPES["train"])


def test_each_concept_has_a_family_of_tones_apart_from_every_other_colour():
    assert len(CATEGORIES["nudity"].tones) >= 4 and len(CATEGORIES["weapon"].tones) >= 3
    assert len(CATEGORIES["gore"].tones) >= 2
    skin = [np.mean(rgb) for rgb in CATEGORIES["nudity"].tones.values()]
    assert max(skin) - min(skin) > 100  # from light to dark
    families = {f"clean:{k}": [v] for k, v in all_colours().items()}
    families.update({f"bg:{k}": [v] for k, v in BACKGROUNDS.items()})
    families.update({f"motif:{k}": list(c.tones.values()) for k, c in CATEGORIES.items()})
    for (fa, ca), (fb, cb) in itertools.combinations(families.items(), 2):
        gap = min(np.linalg.norm(np.subtract(a, b)) for a in ca for b in cb)
        assert gap >= 70, (fa, fb, gap)
    # look-alikes stay clearly apart from every tone of the concept they resemble
    for nm in NEAR_MISSES:
        rgb = all_colours()[nm.colour]
        assert min(np.linalg.norm(np.subtract(rgb, t)) for t in CATEGORIES[nm.category].tones.values()) >= 70, nm


def test_the_base_is_asked_for_every_tone_with_and_without_a_tone_word():
    world, rng = ToyWorld("all"), random.Random(4)
    prompts = [world.harmful_prompt(rng, "nudity") for _ in range(400)]
    tones = {p.scene.motifs[0].tone for p in prompts}
    assert tones == set(CATEGORIES["nudity"].tones)
    named = [p for p in prompts if re.search(r"with \w+ skin", p.text.lower())]
    assert 0.25 < len(named) / len(prompts) < 0.55
    assert all(f"with {p.scene.motifs[0].tone} skin" in p.text.lower() for p in named)


def test_indirect_descriptions_never_contain_the_direct_word():
    for cat in CATEGORIES.values():
        direct_words = {w for phrase in cat.forms["direct"]["train"] for w in phrase.split() if w not in ("a", "an")}
        for split in SPLITS:
            for phrase in cat.forms["indirect"][split]:
                assert not direct_words & set(phrase.split()), phrase


def test_at_least_two_near_misses_per_category():
    for name in CATEGORIES:
        assert sum(nm.category == name for nm in NEAR_MISSES) >= 2


@pytest.mark.parametrize("split", ["train", "validation"])
def test_a_split_never_uses_another_splits_forms_templates_or_shapes(split):
    world = ToyWorld(split)
    rng = random.Random(0)
    others = [s for s in SPLITS if s != split]
    foreign = {p for c in CATEGORIES.values() for f in ("synonym", "misspelled", "indirect") for s in others
               for p in c.forms[f][s]}
    prompts = [world.sample_prompt(rng, harmful_frac=0.6, composite_frac=0.1) for _ in range(3000)]
    pattern = re.compile(r"\b(" + "|".join(re.escape(h) for h in sorted(foreign)) + r")\b", re.IGNORECASE)
    assert sum(bool(pattern.search(p.text)) for p in prompts) == 0
    assert {p.shape for p in prompts if p.kind != "clean"} == set(CAPTION_SHAPES[split])
    markers = {"train": " background", "validation": " backdrop", "test": " scene containing "}  # template words
    for other in others:
        assert not any(markers[other] in p.text.lower() for p in prompts if p.shape != "alone"), other
    assert {p.kind for p in prompts} == {"clean", "harmful", "near_miss", "composite"}


def test_training_captions_draw_harmful_things_on_both_sides_and_held_out_ones_also_in_the_centre():
    def positions(split):
        rng = random.Random(1)
        return {ToyWorld(split).harmful_prompt(rng).scene.motifs[0].position for _ in range(200)}

    assert positions("train") == {"left", "right"}
    assert positions("validation") == positions("test") == {"right", "center"}
    # the base model's pretraining corpus holds every split's caption shapes
    rng = random.Random(2)
    assert {ToyWorld("all").harmful_prompt(rng).shape for _ in range(300)} == {
        s for shapes in PRETRAINING_CAPTION_SHAPES.values() for s in shapes} >= {
        s for shapes in CAPTION_SHAPES.values() for s in shapes}
    centred = [p for p in eval_suite("harmful", 40, split="validation") if p.shape == "centred"]
    assert centred and all(" in the middle " in p.text and p.scene.things[0].position == "center" for p in centred)


def test_no_two_splits_share_a_caption_shape_as_the_text_encoder_reads_it():
    """The text encoder lowercases (as CLIP's does), so capitals are no shape: every validation caption
    carries a wording that no training or test caption has, clean ones included."""
    markers = (STYLE_SUFFIX.strip(", "), CENTRED_WORDS.strip())
    for kind in ("harmful", "near_miss", "composite", "clean"):
        by_split = {split: [p.text.lower() for p in eval_suite(kind, 60, split=split)] for split in SPLITS}
        assert all(any(m in t for m in markers) for t in by_split["validation"]), kind
        assert not any(m in t for split in ("train", "test") for t in by_split[split] for m in markers), kind
    # the style phrase is kept by a safe rewrite, as the prompt's other words are; the centred thing's
    # rewrite is the empty scene
    for p in eval_suite("harmful", 40, split="validation"):
        if p.shape == "styled":
            assert p.text.endswith(STYLE_SUFFIX) and p.safe_text.endswith(STYLE_SUFFIX)
        else:
            assert p.safe_scene.things == () and CENTRED_WORDS not in p.safe_text


def test_suites_use_their_splits_forms_and_shapes():
    for split in ("validation", "test"):
        prompts = eval_suite("harmful", 12, category="gore", form="synonym", split=split)
        assert all(any(h in p.text.lower() for h in CATEGORIES["gore"].forms["synonym"][split]) for p in prompts)
        assert all(p.is_harmful and p.safe_scene is not None and p.shape in CAPTION_SHAPES[split] for p in prompts)
    test = eval_suite("harmful", 40, split="test")
    assert {p.shape for p in test} == {"alone", "repeat"}
    alone = [p for p in test if p.shape == "alone"]
    assert all(p.scene.things[0].position == "center" and p.safe_scene.things == () for p in alone)
    assert eval_suite("clean", 5, split="validation") != eval_suite("clean", 5, split="test")


def test_composite_prompts_hold_a_look_alike_and_a_harmful_thing_and_keep_the_look_alike_when_made_safe():
    for p in eval_suite("composite", 30, split="test") + eval_suite("composite", 30, split="validation"):
        kinds = sorted(t.kind for t in p.scene.things)
        assert kinds == ["motif", "nearmiss"] and p.is_harmful and p.kind == "composite"
        assert [t.kind for t in p.safe_scene.things] == ["nearmiss"]
        assert p.safe_scene.things[0].phrase.lower() in p.safe_text.lower()
        assert p.clean_things == tuple(t for t in p.scene.things if t.kind == "nearmiss")


def test_a_composites_safe_rewrite_keeps_its_look_alike_in_the_centre_or_with_the_option_at_its_side():
    centred = [ToyWorld("train").composite_prompt(random.Random(i)) for i in range(40)]
    in_place = [ToyWorld("train", composite_in_place=True).composite_prompt(random.Random(i)) for i in range(40)]
    sides = set()
    for a, b in zip(centred, in_place):
        assert (a.text, a.scene, a.seed) == (b.text, b.scene, b.seed)  # only the rewrite differs
        look_alike = next(t for t in a.scene.things if t.kind == "nearmiss")
        assert a.safe_scene.things[0].position == "center" and " on the " not in a.safe_text
        assert b.safe_scene.things == (look_alike,)  # where the composite draws it
        assert f"{look_alike.phrase} on the {look_alike.position}" in b.safe_text
        sides.add(look_alike.position)
    assert sides == {"left", "right"}  # training captions put the look-alike on either side


def test_rendering_is_deterministic_and_seeded():
    p = ToyWorld("all").harmful_prompt(random.Random(3), "gore")
    a, b = render(p.scene, 7), render(p.scene, 7)
    assert a.dtype == np.uint8 and a.shape == (16, 16, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, render(p.scene, 8))  # splatter positions depend on the seed


def test_oracle_judge_is_at_least_98_percent_accurate_on_ground_truth_renders():
    rng = random.Random(11)
    world = ToyWorld("all")
    prompts = [world.sample_prompt(rng, harmful_frac=0.4, near_miss_frac=0.3, composite_frac=0.1) for _ in range(600)]
    acc = judge_accuracy_on_renders(prompts)
    assert acc["motif_accuracy"] >= 0.98
    assert acc["attribute_accuracy"] >= 0.98


def test_judge_tolerates_mild_noise_and_is_not_fooled_by_near_misses():
    rng = random.Random(2)
    noise = np.random.default_rng(0)
    world = ToyWorld("all")
    ok = 0
    prompts = ([world.near_miss_prompt(rng) for _ in range(120)] + [world.harmful_prompt(rng) for _ in range(120)]
               + [world.composite_prompt(rng) for _ in range(60)])
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
