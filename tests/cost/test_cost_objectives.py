"""The cost model's training objectives against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from scdpo.cost.objectives import (
    CostObjective,
    cost_anchoring_loss,
    cost_model_loss,
    pairwise_ranking_loss,
    supervised_contrastive_loss,
)


def _nls(x: float) -> float:  # -log sigmoid(x)
    return math.log1p(math.exp(-x))


def test_ranking_loss_averages_unsafe_safe_pairs_within_groups():
    cost = torch.tensor([2.0, 0.5, -1.0, 1.0])
    labels = torch.tensor([0, -1, -1, 1])  # 0 and 3 unsafe
    every = pairwise_ranking_loss(cost, labels)
    expected = (_nls(1.5) + _nls(3.0) + _nls(0.5) + _nls(2.0)) / 4  # pairs (0,1) (0,2) (3,1) (3,2)
    assert every.item() == pytest.approx(expected, rel=1e-6)
    groups = torch.tensor([7, 7, 8, 8])  # only (0,1) and (3,2) share a group
    assert pairwise_ranking_loss(cost, labels, groups).item() == pytest.approx((_nls(1.5) + _nls(2.0)) / 2, rel=1e-6)
    wildcard = torch.tensor([7, -1, 8, 8])  # image 1 has no concept: pairs with both unsafe images
    assert pairwise_ranking_loss(cost, labels, wildcard).item() == pytest.approx(
        (_nls(1.5) + _nls(0.5) + _nls(2.0)) / 3, rel=1e-6)


def test_anchoring_pushes_unsafe_above_margin_and_safe_below_minus_margin():
    cost = torch.tensor([3.0, -2.0])
    per_cat = torch.tensor([[3.0, -4.0], [-2.0, -2.5]])
    labels = torch.tensor([0, -1])
    m = 1.0
    on_total = (_nls(3.0 - m) + _nls(2.0 - m)) / 2
    on_cats = (_nls(3.0 - m) + _nls(4.0 - m) + _nls(2.0 - m) + _nls(2.5 - m)) / 4
    assert cost_anchoring_loss(cost, per_cat, labels, m).item() == pytest.approx(on_total + on_cats, rel=1e-6)
    # the loss falls as the signs become more confident
    assert cost_anchoring_loss(cost * 3, per_cat * 3, labels, m) < cost_anchoring_loss(cost, per_cat, labels, m)


def test_supcon_is_low_for_clustered_features_and_high_for_mixed_ones():
    labels = torch.tensor([0, 0, -1, -1])
    clustered = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
    lo = supervised_contrastive_loss(clustered, labels, 0.1).item()
    hi = supervised_contrastive_loss(mixed, labels, 0.1).item()
    assert lo < 0.01 < 3.0 < hi
    # two identical pairs: each anchor's only positive is its twin → loss = log(1 + 2·exp((0 - 1)/τ))
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert supervised_contrastive_loss(feats, labels, 0.5).item() == pytest.approx(math.log(1 + 2 * math.exp(-2)),
                                                                                    rel=1e-5)


def test_switches_select_terms_and_all_off_is_refused():
    cost = torch.tensor([1.0, -1.0])
    per_cat = cost[:, None]
    feats = torch.randn(2, 4)
    labels = torch.tensor([0, -1])
    _, parts = cost_model_loss(cost, per_cat, feats, labels, CostObjective())
    assert set(parts) == {"contrastive", "ranking", "anchoring"}
    _, parts = cost_model_loss(cost, per_cat, feats, labels, CostObjective(contrastive=False, ranking=False))
    assert set(parts) == {"anchoring"}
    with pytest.raises(ValueError, match="switched off"):
        cost_model_loss(cost, per_cat, feats, labels, CostObjective(contrastive=False, ranking=False, anchoring=False))
