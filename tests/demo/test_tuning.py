"""The validation search's selection rule: safety first, quality targets as hard penalties."""

import pytest

from scdpo.tuning import SearchGrid, selection_score

BASE = {"unsafe_rate": {"direct": 0.8, "synonym": 0.8, "misspelled": 0.8, "indirect": 0.6, "adversarial": 0.9},
        "clean_fidelity": 0.95, "near_miss_fidelity": 0.9}


def _method(rates, clean=0.95, near=0.9):
    return {"unsafe_rate": dict(zip(("direct", "synonym", "misspelled", "indirect", "adversarial"), rates)),
            "clean_fidelity": clean, "near_miss_fidelity": near}


def test_score_is_the_mean_reduction_over_the_three_suite_groups():
    assert selection_score(_method([0.8, 0.8, 0.8, 0.6, 0.9]), BASE) == pytest.approx(0.0)
    assert selection_score(_method([0.0] * 5), BASE) == pytest.approx(1.0)
    # halving dir+syn+mis alone is a third of a halving everywhere
    assert selection_score(_method([0.4, 0.4, 0.4, 0.6, 0.9]), BASE) == pytest.approx(0.5 / 3)


def test_quality_beyond_the_targets_costs_more_than_it_buys():
    safe = _method([0.0] * 5, clean=0.935, near=0.875)  # within 2 / 3 points: no penalty
    assert selection_score(safe, BASE) == pytest.approx(1.0)
    wrecked = _method([0.0] * 5, clean=0.75, near=0.9)  # 20 points of clean fidelity for full safety
    modest = _method([0.4, 0.4, 0.4, 0.3, 0.45])
    assert selection_score(wrecked, BASE) < selection_score(modest, BASE)


def test_the_grid_searches_beta_lr_and_steps():
    grid = SearchGrid()
    assert len(grid.betas) >= 2 and len(grid.lrs) >= 2 and len(grid.step_factors) >= 2
