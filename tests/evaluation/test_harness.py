"""The evaluation harness: documented schema, identical seeds across methods, metrics recomputable
from the returned samples."""

import math

import pytest
import torch

from scdpo.evaluation.baselines import GenerationMethod, blacklist_method
from scdpo.evaluation.harness import (HARMFUL_FORMS, EvalConfig, evaluate_methods, look_alike, reference_clean_features,
                                      suites)
from scdpo.evaluation.metrics import judge_features, kid, mean_fidelity, rate
from scdpo.toy.judge import judge_images, strict_unsafe_flags
from scdpo.toy.world import CATEGORIES, NEAR_MISSES, eval_suite

SUITES = ("direct", "synonym", "misspelled", "indirect", "adversarial")
CFG = EvalConfig(n=1, steps=2, strengths=(1.0, 3.0), attacks=("ring-a-bell", "ring-a-bell-unseen"))


@pytest.fixture(scope="module")
def evaluated(toy_model):
    calls = []
    methods = [GenerationMethod("base", description="no measure"), blacklist_method(), GenerationMethod("base-again")]
    report, samples = evaluate_methods(toy_model, methods, CFG, on_method=lambda *a: calls.append(a))
    return report, samples, calls


def test_report_schema(evaluated):
    report, samples, calls = evaluated
    assert calls == [("base", 0, 3), ("blacklist", 1, 3), ("base-again", 2, 3)]
    assert report["schema_version"] == 2 and report["world"] == "toy" and report["split"] == "validation"
    assert report["config"] == {"n": 1, "steps": 2, "seed": 1234, "strengths": [1.0, 3.0], "batch_size": 192,
                                "grid_prompts": 8, "split": "validation", "attack_budget": 2.0,
                                "attacks": ["ring-a-bell", "ring-a-bell-unseen"]}
    assert set(report["suites"]["adversarial"]) == {"ring-a-bell", "ring-a-bell-unseen"}
    assert report["suites"]["harmful_forms"] == list(HARMFUL_FORMS) == list(SUITES[:4])
    assert report["suites"]["categories"] == list(CATEGORIES)
    assert list(report["methods"]) == ["base", "blacklist", "base-again"]
    n_images = (len(CATEGORIES) * 4 * CFG.n + (len(CFG.strengths) + 1) * len(CATEGORIES) * CFG.n
                + 2 * 6 * CFG.n + 3 * CFG.n)
    for name, m in report["methods"].items():
        assert set(m) == {"unsafe_rate", "oracle_unsafe_rate", "leak_rate", "unsafe_rate_by_category",
                          "oracle_unsafe_rate_by_category", "leak_rate_by_category", "unsafe_rate_by_shape",
                          "near_miss_fidelity_by_shape", "near_miss_fidelity_by_look_alike", "adversarial_by_family",
                          "adversarial_by_strength", "adversarial_details", "composite", "clean_fidelity",
                          "clean_object_accuracy",
                          "near_miss_fidelity", "near_miss_flagged_unsafe", "clean_kid", "seconds_per_image",
                          "n_images", "description"}
        for key in ("unsafe_rate", "oracle_unsafe_rate", "leak_rate"):  # strict = oracle or leak, so it is the max
            assert tuple(m[key]) == SUITES
        for s in SUITES[:4]:
            assert m["unsafe_rate"][s] >= max(m["oracle_unsafe_rate"][s], m["leak_rate"][s])
            assert m["unsafe_rate"][s] <= m["oracle_unsafe_rate"][s] + m["leak_rate"][s]
        assert set(m["adversarial_by_family"]) == {"ring-a-bell", "ring-a-bell-unseen"}
        assert m["adversarial_details"] == {}  # Ring-A-Bell searches nothing
        for cat in CATEGORIES:  # the adversarial cell is the worst family of the category
            assert m["unsafe_rate_by_category"][cat]["adversarial"] == max(
                f[cat] for f in m["adversarial_by_family"].values())
        assert set(m["composite"]) == {"strict", "oracle", "leak", "look_alike_kept"}
        assert tuple(m["unsafe_rate"]) == SUITES
        assert all(0.0 <= v <= 1.0 for v in m["unsafe_rate"].values()), name
        assert set(m["unsafe_rate_by_category"]) == set(CATEGORIES)
        for cat, r in m["unsafe_rate_by_category"].items():
            assert tuple(r) == SUITES and all(0.0 <= v <= 1.0 for v in r.values())
        assert set(m["adversarial_by_strength"]) == {"1", "3"}
        # per caption shape: the validation shapes, and together they are the pooled rate of the four forms
        harmful = [p for cat in CATEGORIES for form in HARMFUL_FORMS
                   for p in eval_suite("harmful", CFG.n, seed=CFG.seed, category=cat, form=form, split="validation")]
        shapes = {p.shape for p in harmful}
        assert set(m["unsafe_rate_by_shape"]) == shapes <= {"styled", "centred"}
        pooled = sum(m["unsafe_rate_by_shape"][k] * sum(p.shape == k for p in harmful) for k in shapes) / len(harmful)
        assert pooled == pytest.approx(sum(m["unsafe_rate"][f] for f in HARMFUL_FORMS) / len(HARMFUL_FORMS))
        assert set(m["near_miss_fidelity_by_shape"]) <= {"styled", "centred"}
        assert all(0.0 <= v <= 1.0 for v in m["near_miss_fidelity_by_shape"].values())
        near = suites(CFG)["near_miss"]
        by_look = m["near_miss_fidelity_by_look_alike"]
        assert set(by_look) == {look_alike(p) for p in near} <= {nm.name for nm in NEAR_MISSES}
        pooled = sum(by_look[look_alike(p)] for p in near) / len(near)  # each prompt weighs the same
        assert pooled == pytest.approx(m["near_miss_fidelity"])
        for form in HARMFUL_FORMS:  # overall = mean over categories (equal cell sizes)
            assert m["unsafe_rate"][form] == pytest.approx(
                sum(m["unsafe_rate_by_category"][c][form] for c in CATEGORIES) / len(CATEGORIES))
        for k in ("clean_fidelity", "clean_object_accuracy", "near_miss_fidelity", "near_miss_flagged_unsafe"):
            assert 0.0 <= m[k] <= 1.0, (name, k)
        assert math.isfinite(m["clean_kid"])
        assert m["seconds_per_image"] > 0 and m["n_images"] == n_images == 36
    assert report["methods"]["base"]["description"] == "no measure"
    assert set(samples) == {"base", "blacklist", "base-again"}
    assert list(samples["base"]) == [f"direct/{c}" for c in CATEGORIES] + ["composite", "clean", "near_miss"]
    assert samples["base"]["clean"].shape == (6, 16, 16, 3) and samples["base"]["direct/gore"].shape == (1, 16, 16, 3)


def _numbers(m):
    return {k: v for k, v in m.items() if k not in ("seconds_per_image", "description")}


def test_same_method_twice_gives_identical_numbers_and_images(evaluated):
    report, samples, _ = evaluated
    assert _numbers(report["methods"]["base"]) == _numbers(report["methods"]["base-again"])
    for k, v in samples["base"].items():
        assert torch.equal(v, samples["base-again"][k]), k


def test_blacklist_shares_seeds_with_base(evaluated):
    """Identical noise per image: where the blacklist changes nothing (clean, near-miss, embedding
    attacks) its images and numbers equal the base's; held-out direct words are scrubbed, so those differ."""
    report, samples, _ = evaluated
    base, bl = report["methods"]["base"], report["methods"]["blacklist"]
    for k in ("clean", "near_miss"):
        assert torch.equal(samples["base"][k], samples["blacklist"][k]), k
    for k in ("clean_fidelity", "near_miss_fidelity", "clean_kid", "adversarial_by_strength"):
        assert bl[k] == base[k], k
    assert bl["unsafe_rate"]["adversarial"] == base["unsafe_rate"]["adversarial"]
    for cat in CATEGORIES:
        assert not torch.equal(samples["base"][f"direct/{cat}"], samples["blacklist"][f"direct/{cat}"]), cat


def test_metrics_recompute_from_samples(evaluated):
    """With n=1 every direct image and (6n=6 <= grid_prompts) every clean/near-miss image is in the samples,
    so the report's numbers can be recomputed independently."""
    report, samples, _ = evaluated
    all_suites = suites(CFG)
    ref = reference_clean_features(CFG)
    for name, m in report["methods"].items():
        s = samples[name]
        for cat in CATEGORIES:
            images, prompts = s[f"direct/{cat}"], all_suites[f"direct/{cat}"]
            assert m["oracle_unsafe_rate_by_category"][cat]["direct"] == rate(
                [v.is_unsafe for v in judge_images(images)])
            assert m["unsafe_rate_by_category"][cat]["direct"] == rate(strict_unsafe_flags(images, prompts))
        clean_v, near_v = judge_images(s["clean"]), judge_images(s["near_miss"])
        assert m["clean_fidelity"] == pytest.approx(mean_fidelity(clean_v, all_suites["clean"]))
        assert m["near_miss_fidelity"] == pytest.approx(mean_fidelity(near_v, all_suites["near_miss"]))
        assert m["near_miss_flagged_unsafe"] == rate([v.is_unsafe for v in near_v])
        assert m["clean_kid"] == pytest.approx(kid(judge_features(s["clean"]), ref))


def test_suites_are_fixed_of_one_split_and_sized():
    s = suites(EvalConfig(n=2))
    assert len(s) == len(CATEGORIES) * 4 + 3
    assert len(s["clean"]) == len(s["near_miss"]) == 12 and len(s["composite"]) == 6
    test = suites(EvalConfig(n=2, split="test"))
    assert all(p.shape in ("alone", "repeat") for p in test["direct/gore"])
    assert [p.text for p in test["clean"]] != [p.text for p in s["clean"]]
    with pytest.raises(ValueError, match="not 'train'"):
        suites(EvalConfig(n=2, split="train"))
    for cat in CATEGORIES:
        for form in HARMFUL_FORMS:
            ps = s[f"{form}/{cat}"]
            assert len(ps) == 2 and all(p.category == cat and p.form == form for p in ps)
    again = suites(EvalConfig(n=2))
    assert [p.text for p in s["clean"]] == [p.text for p in again["clean"]]
    assert [p.text for p in s["clean"]] != [p.text for p in suites(EvalConfig(n=2, seed=1))["clean"]]


def test_batches_do_not_change_images(toy_model):
    """Seeds are per image (seed + index), so the batch size does not change what is generated."""
    from scdpo.evaluation.harness import _generate

    prompts = suites(EvalConfig(n=1))["clean"][:3]
    one = _generate(GenerationMethod("base"), toy_model, prompts, EvalConfig(n=1, steps=1, batch_size=3))
    small = _generate(GenerationMethod("base"), toy_model, prompts, EvalConfig(n=1, steps=1, batch_size=1))
    torch.testing.assert_close(one, small, atol=1e-5, rtol=0)


def test_cleanup_runs_when_a_method_fails(toy_model):
    log = []

    def boom(prompts):
        raise RuntimeError("boom")

    m = GenerationMethod("bad", prepare=lambda: log.append("prepare"), cleanup=lambda: log.append("cleanup"),
                         transform_prompts=boom)
    with pytest.raises(RuntimeError, match="boom"):
        evaluate_methods(toy_model, [m], EvalConfig(n=1, steps=1))
    assert log == ["prepare", "cleanup"]


def test_the_report_says_what_the_optimised_attacks_found(toy_model, tmp_path):
    from scdpo.evaluation.attacks import attack_budget
    from scdpo.evaluation.report import render_html
    from scdpo.evaluation.word_search import concept_words
    from PIL import Image

    cfg = EvalConfig(n=1, steps=2, attacks=("soft-prompt", "word-search"))
    report, _ = evaluate_methods(toy_model, [GenerationMethod("base")], cfg)
    details = report["methods"]["base"]["adversarial_details"]
    assert set(details) == {"soft-prompt", "word-search"}
    banned = concept_words()
    for cat in CATEGORIES:
        soft, words = details["soft-prompt"][cat], details["word-search"][cat]
        assert soft["budget"] == pytest.approx(attack_budget(toy_model, cat, cfg.attack_budget))
        assert 0 < soft["norm"] <= soft["budget"] * (1 + 1e-5)
        assert len(words["words"]) == 2 and not set(words["words"]) & banned
        assert 0.0 <= words["search_unsafe_rate"] <= 1.0
    page = render_html(report, Image.new("RGB", (4, 4)), {}, [])
    assert "What the optimised attacks found" in page
    assert " ".join(details["word-search"]["gore"]["words"]) in page
