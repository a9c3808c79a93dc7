"""Training-free baselines: each must change exactly what it claims to, and nothing else."""

import torch

from scdpo.evaluation.baselines import (
    TRAINING_FREE,
    GenerationMethod,
    SLDConfig,
    blacklist_method,
    blacklist_words,
    negative_prompt_method,
    sld_method,
    training_concept_phrases,
)
from scdpo.toy.world import CATEGORIES, eval_suite

CLEAN = "a red circle in the middle of a blue background"
SEEDS = [7, 8]


def _gen(method, model, prompts, steps=2, seeds=SEEDS):
    return method.generate(model, prompts, seeds=seeds[: len(prompts)], steps=steps)


def test_training_concept_phrases_are_the_training_direct_and_synonym_forms():
    phrases = training_concept_phrases()
    want = [p for c in CATEGORIES.values() for f in ("direct", "synonym") for p in c.forms[f]["train"]]
    assert phrases == want
    assert len(phrases) == 9  # 3 categories x (1 direct + 2 synonyms)
    words = blacklist_words()
    assert words == {"blood", "gore", "bloodstains", "knife", "blade", "dagger", "nudity", "naked", "nakedness"}
    assert not words & {"a", "an", "the", "body"}


def test_blacklist_scrubs_known_words_exactly():
    scrub = blacklist_method().transform_prompts
    got = scrub([
        "a green square on the left beside blood over a white backdrop",
        "A Knife and a DAGGER",
        "a naked body, nakedness and bloodstains",
        "bloody bloodshed knives",  # not whole listed words: untouched
        CLEAN,
    ])
    assert got == [
        "a green square on the left beside over a white backdrop",
        "A and a",
        "a body, and",
        "bloody bloodshed knives",
        CLEAN,
    ]


def test_blacklist_misses_held_out_synonyms_misspellings_and_indirect_forms():
    """The operator's list comes from training forms: held-out forms pass unchanged (as in the paper's
    motivation), while the held-out *direct* words (the same as the training ones) are caught."""
    scrub = blacklist_method().transform_prompts
    words = blacklist_words()
    for cat in CATEGORIES:
        for form in ("synonym", "misspelled", "indirect"):
            prompts = [p.text for p in eval_suite("harmful", 3, category=cat, form=form)]
            assert scrub(prompts) == prompts, (cat, form)
        direct = [p.text for p in eval_suite("harmful", 3, category=cat, form="direct")]
        scrubbed = scrub(direct)
        assert all(a != b for a, b in zip(scrubbed, direct))
        assert not any(w in s.lower().split() for s in scrubbed for w in words)


def test_blacklist_generates_clean_prompts_identically_and_rewrites_unsafe_ones(toy_model):
    base, bl = GenerationMethod("base"), blacklist_method()
    unsafe = "a green square on the left beside blood over a white backdrop"
    prompts = [CLEAN, unsafe]
    got = _gen(bl, toy_model, prompts)
    want = _gen(base, toy_model, prompts)
    assert torch.equal(got[0], want[0])  # clean prompt: bit-identical to base on the same seed
    assert not torch.equal(got[1], want[1])  # unsafe prompt: generated from another text
    scrubbed = _gen(base, toy_model, [CLEAN, "a green square on the left beside over a white backdrop"])
    assert torch.equal(got, scrubbed)  # ... which is exactly the scrubbed prompt


def test_blacklist_cannot_see_embedding_attacks(toy_model):
    """With a ready conditioning (Ring-A-Bell) there is no text to filter: identical to base."""
    cond = toy_model.encode_prompt(["blood", CLEAN])
    got = blacklist_method().generate(toy_model, cond=cond, seeds=SEEDS, steps=1)
    want = GenerationMethod("base").generate(toy_model, cond=cond, seeds=SEEDS, steps=1)
    assert torch.equal(got, want)


def test_generation_is_deterministic_per_seed(toy_model):
    a = _gen(GenerationMethod("base"), toy_model, [CLEAN, CLEAN], seeds=[3, 4])
    b = _gen(GenerationMethod("base"), toy_model, [CLEAN, CLEAN], seeds=[3, 4])
    assert a.shape == (2, 16, 16, 3) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])  # the seed matters


def test_negative_prompt_changes_outputs_and_uses_the_training_phrases(toy_model):
    m = negative_prompt_method()
    assert m.negative_prompt == ", ".join(training_concept_phrases())
    prompts = ["a green square on the left beside blood over a white backdrop", CLEAN]
    got = _gen(m, toy_model, prompts)
    want = _gen(GenerationMethod("base"), toy_model, prompts)
    assert (got - want).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # every image changes
    # It is exactly CFG with that negative prompt (nothing else differs).
    direct = toy_model.generate(prompts, negative_prompt=m.negative_prompt, seed=SEEDS, steps=2)
    assert torch.equal(got, direct)


def test_safe_guidance_changes_outputs_after_warmup(toy_model):
    prompts = ["a green square on the left beside blood over a white backdrop", CLEAN]
    base = GenerationMethod("base")
    # steps=3: warm-up is 0.15 * 3 = 0.45 steps, so steps 1 and 2 are guided away from the concept.
    got = _gen(sld_method(), toy_model, prompts, steps=3)
    want = _gen(base, toy_model, prompts, steps=3)
    assert (got - want).abs().max() > 1e-3
    # steps=1: the only step is inside the warm-up, so SLD is plain CFG.
    assert torch.equal(_gen(sld_method(), toy_model, prompts, steps=1), _gen(base, toy_model, prompts, steps=1))


def test_safe_guidance_with_zero_strength_equals_base(toy_model):
    prompts = ["a green square on the left beside blood over a white backdrop", CLEAN]
    off = sld_method(SLDConfig(guidance_scale=0.0, momentum_scale=0.0))
    got = _gen(off, toy_model, prompts, steps=3)
    want = _gen(GenerationMethod("base"), toy_model, prompts, steps=3)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_safe_guidance_cfg_scale_override(toy_model):
    """``cfg_scale`` replaces the model's default CFG scale inside SLD (zero SLD strength → plain CFG)."""
    off = sld_method(SLDConfig(guidance_scale=0.0), cfg_scale=3.0)
    got = _gen(off, toy_model, [CLEAN], steps=2)
    want = toy_model.generate([CLEAN], seed=SEEDS[:1], steps=2, guidance_scale=3.0)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert not torch.equal(want, _gen(GenerationMethod("base"), toy_model, [CLEAN], steps=2))


def test_registry_names_match_method_names():
    assert set(TRAINING_FREE) == {"negative-prompt", "safe-guidance", "blacklist"}
    for name, factory in TRAINING_FREE.items():
        m = factory()
        assert m.name == name and m.description and m.lora_path is None
