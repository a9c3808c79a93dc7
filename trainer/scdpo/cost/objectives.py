"""Training objectives of the safety cost model (docs/method.md), as pure functions of tensors.

Labels: ``label [B]`` int, ``-1`` = safe, ``k >= 0`` = unsafe of category ``k``.

* :func:`supervised_contrastive_loss` — SupCon / InfoNCE on L2-normalised adapter features;
  positives = same label (all safe images form one class).
* :func:`pairwise_ranking_loss` — ``-log σ(C(x_unsafe) - C(x_safe))`` over (unsafe, safe) pairs that
  share a group (a prompt or concept), or over all (unsafe, safe) pairs of the batch when no
  groups are given.
* :func:`cost_anchoring_loss` — ``-log σ(C(x_unsafe) - m) - log σ(-C(x_safe) - m)`` so that 0 is
  the decision boundary with margin ``m``; the same anchoring is applied to the per-category
  costs (the image's own category up, every other category down) so ``per_category`` is usable.

:class:`CostObjective` holds the three independent switches and weights. The "contrastive term" of
docs/method.md §1 is SupCon + ranking together; the ablation table switches them off together and
apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


@dataclass
class CostObjective:
    contrastive: bool = True  # supervised contrastive (SupCon) term
    ranking: bool = True  # pairwise ranking term
    anchoring: bool = True  # cost anchoring with margin
    margin: float = 1.0  # m
    temperature: float = 0.1  # SupCon τ
    w_contrastive: float = 1.0
    w_ranking: float = 1.0
    w_anchoring: float = 1.0

    def active_terms(self) -> list[str]:
        return [n for n, on in (("contrastive", self.contrastive), ("ranking", self.ranking),
                                ("anchoring", self.anchoring)) if on]


def supervised_contrastive_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SupCon (Khosla et al. 2020, L_out) on ``features [B,F]``; anchors without a positive are skipped."""
    z = F.normalize(features.float(), dim=-1)
    logits = z @ z.T / temperature
    n = len(z)
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = positives.sum(1)
    has = n_pos > 0
    if not has.any():
        return features.sum() * 0.0
    pos_log_prob = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(1)
    return -(pos_log_prob[has] / n_pos[has]).mean()


def pairwise_ranking_loss(cost: torch.Tensor, labels: torch.Tensor, groups: Optional[torch.Tensor] = None
                          ) -> torch.Tensor:
    """Mean ``-log σ(C_u - C_s)`` over (unsafe, safe) pairs (same group when ``groups`` is given)."""
    unsafe = labels >= 0
    pair = unsafe[:, None] & ~unsafe[None, :]
    if groups is not None:  # a negative group id (no concept known) pairs with every group
        pair = pair & ((groups[:, None] == groups[None, :]) | (groups[:, None] < 0) | (groups[None, :] < 0))
    if not pair.any():
        return cost.sum() * 0.0
    diff = cost[:, None] - cost[None, :]
    return F.softplus(-diff[pair]).mean()  # -log σ(x) = softplus(-x)


def cost_anchoring_loss(cost: torch.Tensor, per_category: torch.Tensor, labels: torch.Tensor,
                        margin: float = 1.0) -> torch.Tensor:
    """The anchoring on ``C`` of docs/method.md §1 plus the same anchoring on each category's own cost."""
    unsafe = labels >= 0
    total = torch.where(unsafe, F.softplus(-(cost - margin)), F.softplus(cost + margin)).mean()
    k = per_category.shape[1]
    own = F.one_hot(labels.clamp(min=0), k).bool() & unsafe[:, None]  # [B,K] the image's own category
    per_cat = torch.where(own, F.softplus(-(per_category - margin)), F.softplus(per_category + margin)).mean()
    return total + per_cat


def cost_model_loss(cost: torch.Tensor, per_category: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
                    objective: CostObjective, groups: Optional[torch.Tensor] = None
                    ) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the switched-on terms and their values for logging."""
    parts: dict[str, torch.Tensor] = {}
    if objective.contrastive:
        parts["contrastive"] = objective.w_contrastive * supervised_contrastive_loss(features, labels,
                                                                                     objective.temperature)
    if objective.ranking:
        parts["ranking"] = objective.w_ranking * pairwise_ranking_loss(cost, labels, groups)
    if objective.anchoring:
        parts["anchoring"] = objective.w_anchoring * cost_anchoring_loss(cost, per_category, labels, objective.margin)
    if not parts:
        raise ValueError("every cost-model objective is switched off; "
                         "enable at least one of contrastive, ranking, anchoring")
    loss = sum(parts.values())
    return loss, {k: float(v.detach()) for k, v in parts.items()}
