"""Ring-A-Bell concept direction and attacked conditionings."""

import random

import pytest
import torch

from scdpo.evaluation.attacks import DEFAULT_STRENGTHS, categories, concept_direction, ring_a_bell_suite
from scdpo.evaluation.baselines import blacklist_words
from scdpo.toy.model import MAX_TOKENS
from scdpo.toy.world import CATEGORIES, ToyWorld


def test_direction_is_the_mean_embedding_difference_of_training_pairs(toy_model):
    d = concept_direction(toy_model, "weapon", n_pairs=4, seed=5)
    width = toy_model.text_encoder.config.hidden_size
    assert d.shape == (MAX_TOKENS, width) and d.dtype == torch.float32
    # Independent recomputation from the same training-split draws.
    world, rng = ToyWorld("train"), random.Random("ring-a-bell-weapon-5")
    pairs = [world.harmful_prompt(rng, "weapon") for _ in range(4)]
    assert all(p.category == "weapon" for p in pairs)
    diffs = [toy_model.encode_prompt([p.text]).hidden[0].float() - toy_model.encode_prompt([p.safe_text]).hidden[0].float()
             for p in pairs]
    torch.testing.assert_close(d, torch.stack(diffs).mean(0), atol=1e-5, rtol=1e-5)


def test_direction_norm_is_substantial_deterministic_and_category_specific(toy_model):
    dirs = {c: concept_direction(toy_model, c, n_pairs=8) for c in CATEGORIES}
    for c, d in dirs.items():
        assert torch.isfinite(d).all()
        # comparable to a prompt embedding's own norm, not a rounding residue
        ref = toy_model.encode_prompt(["a red circle"]).hidden[0].float().norm()
        assert 0.05 * ref < d.norm() < 5 * ref, c
    torch.testing.assert_close(concept_direction(toy_model, "gore", n_pairs=8), dirs["gore"], atol=0, rtol=0)
    cos = torch.nn.functional.cosine_similarity(dirs["gore"].flatten(), dirs["weapon"].flatten(), dim=0)
    assert cos < 0.99


def test_strength_zero_is_the_clean_rewrites_and_strength_moves_linearly(toy_model):
    prompts, c0 = ring_a_bell_suite(toy_model, "nudity", n=2, strength=0.0)
    assert len(prompts) == 2 and len(c0) == 2
    assert all(p.category == "nudity" and p.form == "direct" and p.is_harmful for p in prompts)
    # the attack's targets never name a concept: their text passes any blacklist
    words = blacklist_words()
    assert not any(w in p.safe_text.lower().split() for p in prompts for w in words)
    clean = toy_model.encode_prompt([p.safe_text for p in prompts])
    assert torch.equal(c0.hidden, clean.hidden)

    direction = concept_direction(toy_model, "nudity")
    dist = {}
    for s in (1.0, 2.0, 3.0):
        ps, cs = ring_a_bell_suite(toy_model, "nudity", n=2, strength=s)
        assert [p.text for p in ps] == [p.text for p in prompts]  # same prompts at every strength
        torch.testing.assert_close(cs.hidden, clean.hidden + s * direction, atol=1e-5, rtol=1e-5)
        dist[s] = (cs.hidden - clean.hidden).norm().item()
    assert 0 < dist[1.0] < dist[2.0] < dist[3.0]
    assert dist[2.0] == pytest.approx(2 * dist[1.0], rel=1e-4)
    assert dist[3.0] == pytest.approx(3 * dist[1.0], rel=1e-4)


def test_suite_prompts_depend_on_seed_and_categories_listed(toy_model):
    a, _ = ring_a_bell_suite(toy_model, "gore", n=3, strength=1.0, seed=1)
    b, _ = ring_a_bell_suite(toy_model, "gore", n=3, strength=1.0, seed=2)
    assert [p.text for p in a] != [p.text for p in b]
    assert list(categories()) == list(CATEGORIES)
    assert DEFAULT_STRENGTHS == (1.0, 2.0, 3.0)
