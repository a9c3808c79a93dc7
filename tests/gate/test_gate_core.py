"""The gate core (scdpo.gate): verdicts at a probability threshold, failing closed, and redactions
that really hide an image."""

import math

import numpy as np
import pytest
import torch

from scdpo import gate
from scdpo.cost.scorer import make_result
from scdpo.errors import ScdpoError


def scripted(per_category, threshold=0.0, categories=("nudity", "gore")):
    """A ``score`` function returning these per-category costs, whatever the images."""
    return lambda images: make_result(torch.tensor(per_category, dtype=torch.float32), categories, threshold)


def images(n=3, h=24, w=20, seed=0):
    return torch.rand(n, h, w, 3, generator=torch.Generator().manual_seed(seed))


# -- verdicts -------------------------------------------------------------------------------------


def test_threshold_is_a_probability_and_0_5_is_the_calibrated_verdict():
    score = scripted([[0.4, -5], [1.6, -5], [-0.3, -5]], threshold=1.0)  # p = sigmoid(cost - 1)
    at_half = gate.judge(images(), score, 0.5)
    assert [v.status for v in at_half] == ["safe", "unsafe", "safe"]
    assert at_half[0].limit == pytest.approx(1.0)
    stricter = gate.judge(images(), score, 0.3)  # sigmoid(-0.6) = 0.354 > 0.3, sigmoid(-1.3) = 0.214 < 0.3
    assert [v.status for v in stricter] == ["unsafe", "unsafe", "safe"]
    assert stricter[0].limit == pytest.approx(1.0 + math.log(0.3 / 0.7))  # 0.1527
    assert [v.probability for v in stricter] == pytest.approx([0.3543, 0.6457, 0.2142], abs=1e-4)


def test_verdict_carries_cost_and_the_unsafe_images_top_category():
    verdicts = gate.judge(images(), scripted([[-3.0, -2.0], [-1.0, 2.5], [4.0, 0.0]]), 0.5)
    assert [v.cost for v in verdicts] == pytest.approx([-2.0, 2.5, 4.0])
    assert [v.category for v in verdicts] == [None, "gore", "nudity"]
    assert [v.unsafe for v in verdicts] == [False, True, True] and not any(v.failed for v in verdicts)


def test_cost_limit_clamps_extreme_probabilities():
    assert gate.cost_limit(0.5, 0.0) == pytest.approx(0.5 + math.log(1e-4 / (1 - 1e-4)))
    assert gate.cost_limit(0.5, 1.0) == pytest.approx(0.5 - math.log(1e-4 / (1 - 1e-4)))


@pytest.mark.parametrize("failure", ["raises", "nan", "too_few", "inf"])
def test_any_scoring_failure_fails_every_image_with_the_reason(failure):
    def broken(_images):
        raise RuntimeError("CUDA out of memory in the backbone")

    safe = [-9.0, -9.0]
    score = {"raises": broken, "nan": scripted([[0.0, 0.0], [float("nan"), 0.0], [0.0, 0.0], safe]),
             "too_few": scripted([safe] * 3), "inf": scripted([safe] * 3 + [[float("inf"), 0.0]])}[failure]
    verdicts = gate.judge(images(4), score, 0.99)  # even the most lenient threshold lets nothing through
    assert len(verdicts) == 4
    assert all(v.failed and v.unsafe and v.cost is None for v in verdicts)
    reason = {"raises": "CUDA out of memory in the backbone", "nan": "NaN/inf", "too_few": "3 costs for 4 images",
              "inf": "NaN/inf"}[failure]
    assert reason in verdicts[0].reason
    assert verdicts[0].error_type == ("RuntimeError" if failure == "raises" else "ScdpoError")


def test_a_hosts_cancel_is_not_a_scoring_failure():
    class Cancelled(Exception):
        pass

    def cancelled(_images):
        raise Cancelled()

    with pytest.raises(Cancelled):
        gate.judge(images(), cancelled, 0.5, passthrough=(Cancelled,))
    assert gate.judge(images(), cancelled, 0.5)[0].reason == "Cancelled"  # without passthrough: failed, named


def test_checked_score_raises_what_judge_reports():
    with pytest.raises(ScdpoError, match="returned 3 costs for 4 images"):
        gate.checked_score(scripted([[0.0, 0.0]] * 3), images(4))
    assert gate.judge([], scripted([]), 0.5) == []


# -- action names ---------------------------------------------------------------------------------


def test_one_name_per_action_and_old_names_still_accepted():
    assert gate.ACTIONS == ("blur", "pixelate", "black", "replace", "pass")
    assert gate.canonical_action("pass with warning") == "pass"  # A1111 settings saved before
    assert [gate.canonical_action(a) for a in gate.ACTIONS] == list(gate.ACTIONS)
    assert gate.canonical_action("Blur") is None and gate.canonical_action(None) is None
    # an image that must be hidden whatever was chosen: the choice if it hides, else black
    assert [gate.blocking_action(a) for a in ("blur", "pixelate", "black", "replace", "pass", "pass with warning",
                                              "nonsense")] == ["blur", "pixelate", "black", "black", "black", "black",
                                                               "black"]


# -- redaction ------------------------------------------------------------------------------------


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (a.norm() * b.norm()))


def _detail(x: torch.Tensor) -> float:
    """Mean absolute difference between neighbouring pixels (total variation per pixel)."""
    return float((x[1:] - x[:-1]).abs().mean() + (x[:, 1:] - x[:, :-1]).abs().mean())


def _figure(h=256, w=192):
    """A skin-toned figure on a blue background, and its mask."""
    image = torch.empty(h, w, 3)
    image[:] = torch.tensor([0.1, 0.2, 0.6])
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[h // 4: h * 3 // 4, w // 3: w * 2 // 3] = True
    image[mask] = torch.tensor([0.9, 0.7, 0.55])
    return image, mask


@pytest.mark.parametrize("action", ["blur", "pixelate"])
def test_blur_and_pixelate_leave_no_detail(action):
    noise = torch.rand(256, 256, 3, generator=torch.Generator().manual_seed(1))
    hidden = gate.redact(noise, action)
    assert abs(_corr(hidden, noise)) < 0.1  # no pixel of the original can be read back
    assert _detail(hidden) < 0.01 * _detail(noise)


def test_blur_leaves_no_shape():
    image, mask = _figure()
    hidden = gate.redact(image, "blur")
    contrast = lambda x: float((x[mask].mean(0) - x[~mask].mean(0)).norm())  # noqa: E731
    assert contrast(hidden) < 0.05 * contrast(image)  # figure and background are one colour now
    assert float((hidden[1:] - hidden[:-1]).abs().max()) < 0.01  # and no edge is left


@pytest.mark.parametrize("action", ["blur", "pixelate"])
def test_blur_and_pixelate_move_halfway_to_the_mean_colour(action):
    image, _ = _figure()
    mean = image.mean(dim=(0, 1))
    hidden = gate.redact(image, action)
    assert float((hidden - mean).abs().max()) <= 0.5 * float((image - mean).abs().max()) + 1e-5


@pytest.mark.parametrize("size,cells", [((40, 40), (5, 5)), ((1024, 768), (12, 9)), ((64, 200), (4, 12)),
                                        ((20, 12), (2, 1))])
def test_pixelate_tiles_are_at_least_8_px_and_at_most_12_across(size, cells):
    image = torch.rand(*size, 3, generator=torch.Generator().manual_seed(2))
    hidden = gate.redact(image, "pixelate")
    rows = len(torch.unique(hidden[:, 0, 0]))
    cols = len(torch.unique(hidden[0, :, 0]))
    assert (rows, cols) == cells


def test_blur_and_pixelate_hide_the_toy_worlds_unsafe_motifs():
    from scdpo.toy.judge import judge_images
    from scdpo.toy.world import eval_suite, render

    renders = np.stack([render(p.scene, p.seed) for p in eval_suite("harmful", 150, seed=3)])
    assert sum(v.is_unsafe for v in judge_images(renders)) == 150
    x = torch.from_numpy(renders).float() / 255
    still_unsafe = {}
    for action in ("blur", "pixelate"):
        hidden = torch.stack([gate.redact(im, action) for im in x])
        still_unsafe[action] = sum(v.is_unsafe for v in judge_images((hidden * 255).round().to(torch.uint8).numpy()))
    # blur leaves at most 3 soft cells; pixelate keeps 4 tiles across a 32 px render, in which the
    # oracle still finds a splatter now and then
    assert still_unsafe["blur"] == 0 and still_unsafe["pixelate"] <= 2, still_unsafe


def test_black_zeroes_every_channel_and_layouts_and_dtypes_are_kept():
    for c in (1, 3, 4):
        image = torch.rand(30, 50, c, generator=torch.Generator().manual_seed(c)).half()
        for action in ("blur", "pixelate", "black"):
            hidden = gate.redact(image, action)
            assert hidden.shape == image.shape and hidden.dtype == torch.float16
            assert 0 <= float(hidden.min()) and float(hidden.max()) <= 1
        assert float(gate.redact(image, "black").abs().max()) == 0.0
    tiny = gate.redact(torch.full((1, 2, 3), 0.6), "blur")
    assert torch.allclose(tiny, torch.full((1, 2, 3), 0.6))  # a flat image stays that colour


def test_anything_that_is_not_a_redaction_hides_as_black():
    image = images(1)[0]
    assert float(gate.redact(image, "pass").abs().max()) == 0.0
    assert float(gate.redact(image, "unknown").abs().max()) == 0.0


def test_redact_batch_changes_only_flagged_images_and_replace_fits_the_replacement():
    x = images(3)
    out = gate.redact_batch(x, [False, True, True], "pixelate")
    assert torch.equal(out[0], x[0]) and not torch.equal(out[1], x[1]) and torch.equal(x, images(3))
    replacement = torch.stack([torch.full((8, 8, 1), 0.25), torch.full((8, 8, 1), 0.75)])
    replaced = gate.redact_batch(x, [True, True, False], "replace", replacement)
    assert torch.allclose(replaced[0], torch.full_like(x[0], 0.25))  # grey to RGB, resized to 24x20
    assert torch.allclose(replaced[1], torch.full_like(x[1], 0.75)) and torch.equal(replaced[2], x[2])
    with pytest.raises(ScdpoError, match="no replacement image"):
        gate.redact_batch(x, [True, False, False], "replace")


def test_blocked_messages_and_preview_verdicts_say_why():
    from scdpo import gate
    from scdpo.cost.scorer import make_result

    def score(costs):
        return lambda images: make_result(torch.tensor(costs), ["nudity", "gore"], 0.0)

    image = torch.rand(1, 8, 8, 3)
    unsafe = gate.judge_preview(image, score([[2.5, -1.0]]), 0.5)
    assert unsafe.unsafe and unsafe.why() == "unsafe (nudity): cost +2.50 > +0.00"
    assert gate.judge_preview(image, score([[-2.0, -1.0]]), 0.5).why() == "safe: cost -1.00 <= +0.00"

    def broken(images):
        raise RuntimeError("CUDA out of memory")

    failed = gate.judge_preview(image, broken, 0.5)
    assert failed.failed and failed.unsafe  # a preview that could not be scored is not shown
    assert gate.blocked_message(failed.why()) == "blocked by SC-DPO gate: scoring failed (RuntimeError: CUDA out of memory)"
