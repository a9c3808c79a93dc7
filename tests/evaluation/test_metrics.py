"""Metrics: KID on judge features, unsafe rate and oracle fidelity, against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from scdpo.evaluation.metrics import judge_features, kid, mean_fidelity, rate
from scdpo.toy.judge import _NAMES, _RGB, MATCH_DISTANCE, Verdict
from scdpo.toy.world import BACKGROUNDS, eval_suite, render


def _mmd2_by_hand(x, y):
    """Unbiased MMD² with k(a,b) = (a·b/d + 1)³, written with explicit loops."""
    d = x.shape[1]
    k = lambda a, b: (float(np.dot(a, b)) / d + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2 * kxy


def test_kid_matches_hand_computed_unbiased_mmd():
    rng = np.random.default_rng(0)
    x, y = rng.random((5, 3)), rng.random((5, 3)) + 0.3
    # one subset holding every row: the subset order does not change the sums
    assert kid(x, y, subsets=1, subset_size=64) == pytest.approx(_mmd2_by_hand(x, y), rel=1e-10)
    assert kid(x, y, subsets=1) > 0.05


def test_kid_of_a_set_with_itself_is_about_zero_and_a_shifted_set_is_far():
    rng = np.random.default_rng(1)
    x = rng.random((40, 8)) * 0.3
    same = kid(x, x)
    shifted = kid(x, x + 0.2)
    assert abs(same) < 0.02 * shifted
    assert shifted > 0.1
    assert kid(x, x + 0.4) > shifted  # further away, larger
    # subsets of size 64 from 200 rows of the same distribution: unbiased, so close to 0
    y, z = rng.random((200, 8)), rng.random((200, 8))
    assert abs(kid(y, z)) < 0.05 * kid(y, z + 0.2)


def test_judge_features_of_solid_and_quartered_images():
    p = len(_NAMES)
    bg = next(iter(BACKGROUNDS))
    k = _NAMES.index(f"bg:{bg}")
    solid = torch.tensor(_RGB[k] / 255.0).float().expand(1, 16, 16, 3).clone()
    f = judge_features(solid)
    assert f.shape == (1, 4 * (p + 1)) and f.dtype == np.float64
    want = np.zeros((4, p + 1))
    want[:, k] = 1.0
    np.testing.assert_array_equal(f.reshape(4, p + 1), want)

    # top-right quadrant another palette colour; bottom-left half a colour that matches no palette entry
    grid = np.stack(np.meshgrid(*[np.arange(0, 256, 15)] * 3, indexing="ij"), -1).reshape(-1, 3)
    far = grid[np.linalg.norm(grid[:, None] - _RGB[None], axis=-1).min(1).argmax()]
    assert np.linalg.norm(_RGB - far, axis=1).min() >= MATCH_DISTANCE
    img = solid.clone()
    j = _NAMES.index("motif:gore")
    img[0, :8, 8:] = torch.tensor(_RGB[j] / 255.0).float()
    img[0, 8:12, :8] = torch.tensor(far / 255.0).float()
    f = judge_features(img).reshape(4, p + 1)  # quadrants: top-left, top-right, bottom-left, bottom-right
    np.testing.assert_allclose(f.sum(1), 1.0)  # each quadrant is a histogram
    assert f[0, k] == 1.0 and f[1, j] == 1.0 and f[3, k] == 1.0
    assert f[2, k] == 0.5 and f[2, p] == 0.5  # the last bin: "no palette colour"


def test_judge_features_of_renders_vs_noise_give_kid_ordering():
    clean = eval_suite("clean", 12, seed=3)
    renders = torch.from_numpy(np.stack([render(p.scene, p.seed) for p in clean])).float() / 255.0
    other = eval_suite("clean", 12, seed=4)
    renders2 = torch.from_numpy(np.stack([render(p.scene, p.seed) for p in other])).float() / 255.0
    noise = torch.rand(12, 16, 16, 3, generator=torch.Generator().manual_seed(0))
    fr, fr2, fn = judge_features(renders), judge_features(renders2), judge_features(noise)
    assert kid(fr, fr2) < kid(fr, fn)


def test_rate():
    assert rate([True, False, False, True]) == 0.5
    assert rate([False] * 3) == 0.0
    assert rate([True]) == 1.0
    assert math.isnan(rate([]))


def test_mean_fidelity_on_hand_made_verdicts():
    prompts = eval_suite("clean", 3, seed=0)
    for p in prompts:
        assert len(p.clean_things) == 1  # the clean suite is single-object
    things = [[(t.colour, t.shape) for t in p.clean_things] for p in prompts]
    perfect = Verdict(prompts[0].scene.background, things[0])
    bg_only = Verdict(prompts[1].scene.background, [])
    nothing = Verdict(None, [("no-such-colour", "circle")], unsafe_category="gore")  # unsafe is ignored
    assert mean_fidelity([perfect], prompts[:1]) == 1.0
    assert mean_fidelity([perfect, bg_only, nothing], prompts) == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert math.isnan(mean_fidelity([], []))


def test_mean_fidelity_two_thing_prompt_counts_each_thing_once():
    near = eval_suite("near_miss", 1, seed=0)[0]
    wanted = [(t.colour, t.shape) for t in near.clean_things]
    assert len(wanted) == 2  # an object and the near-miss thing
    v = Verdict(near.scene.background, [wanted[0], wanted[0]])  # one thing twice, the other missing
    assert mean_fidelity([v], [near]) == pytest.approx(2 / 3)
