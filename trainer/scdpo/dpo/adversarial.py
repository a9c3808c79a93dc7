"""Adversarial training in the loop: harmful pairs trained under an attack on the *current* LoRA.

A safety LoRA trained only on the prompts it sees, or on attacks drawn once from an earlier model,
learns to refuse those; an attacker who optimises against the finished LoRA finds what it left
(AdvUnlearn, Zhang et al. 2024, makes the same observation for concept erasure). So, at every
step, a share of the batch's harmful pairs is attacked before the DPO update:

1. the pair is conditioned on its prompt's **safe rewrite** (which names no concept), shifted by
   ``δ``; ``δ`` starts at ``η · d_category`` with ``η ~ U(0, budget)`` (a Ring-A-Bell push along
   the category's concept direction, :meth:`~scdpo.dpo.inputs.EncodedPairs.concept_directions`);
2. ``steps`` projected gradient steps move ``δ`` to make the *policy* (UNet + the LoRA being
   trained) denoise the pair's unsafe loser better — the UnlearnDiffAtk objective, white-box
   against the model as it is now — keeping ``‖δ‖ ≤ budget · ‖d_category‖`` (Frobenius norm);
3. the SC-DPO loss of the pair (safe winner, unsafe loser) is then computed under that attacked
   conditioning, so the update teaches the LoRA to prefer the safe image exactly where the attack
   found it weakest.

Clean and look-alike pairs are untouched and keep the quality. The attack's gradients are taken
with respect to ``δ`` only (``torch.autograd.grad``): no gradient reaches the LoRA from step 2.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch

from ..pipeline import Conditioning
from .loss import denoising_error


def project_l2(delta: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Rows of ``delta`` ``[N, ...]`` scaled back onto the L2 ball of ``radius`` ``[N]`` where outside it."""
    norm = delta.flatten(1).norm(dim=1).clamp(min=1e-12)
    scale = torch.clamp(radius / norm, max=1.0)
    return delta * scale.view(-1, *([1] * (delta.ndim - 1)))


def attack_conditioning(
    policy: Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor],
    cond: Conditioning,
    noisy_losers: torch.Tensor,
    timesteps: torch.Tensor,
    targets: torch.Tensor,
    start: torch.Tensor,
    radius: torch.Tensor,
    steps: int,
) -> torch.Tensor:
    """Projected gradient descent on a text-embedding shift ``δ`` ``[N, L, D]`` (float32).

    ``cond``: the N attacked rows' conditioning (safe rewrites); ``noisy_losers`` / ``timesteps`` /
    ``targets``: their unsafe losers noised, and what the UNet output should be (ε or v); ``start``:
    the initial shift, already inside the ball; ``radius`` ``[N]``: the budget per row. Each step
    moves ``δ`` by ``2·radius/steps`` against the normalised gradient of the policy's denoising error
    on the losers, then projects. Returns the shift, detached.
    """
    delta = start.detach().float().clone()
    step_size = 2.0 * radius / max(1, steps)
    for _ in range(steps):
        delta.requires_grad_(True)
        attacked = Conditioning((cond.hidden.float() + delta).to(cond.hidden.dtype), cond.added)
        error = denoising_error(policy(noisy_losers, timesteps, attacked), targets).sum()
        (grad,) = torch.autograd.grad(error, delta)
        with torch.no_grad():
            g_norm = grad.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, *([1] * (grad.ndim - 1)))
            delta = project_l2(delta - step_size.view_as(g_norm) * grad / g_norm, radius)
    return delta.detach()


def adversarial_rows(category_rows: torch.Tensor, safe_rows: torch.Tensor, drop: Sequence[bool],
                     generator: torch.Generator, share: float, budget: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Which pairs of a batch are attacked (harmful, with a safe rewrite, prompt not dropped, picked with
    probability ``share``) and their starting push ``η ~ U(0, budget)``. Draws ``2B`` numbers from
    ``generator`` whatever is picked, so the step's other draws do not depend on the outcome."""
    b = category_rows.shape[0]
    pick = torch.rand(b, generator=generator) < share
    eta = torch.rand(b, generator=generator) * budget
    pick &= (category_rows >= 0) & (safe_rows >= 0) & ~torch.tensor(list(drop), dtype=torch.bool)
    return pick, eta


class UniversalAttack:
    """One attack shift ``δ_k`` ``[L, D]`` per category, kept from step to step and refined against the
    current policy (``--adversarial-mode universal``).

    The evaluation's soft-prompt attack (and UnlearnDiffAtk's) is one offset per concept, optimised
    over many prompts and noise draws; a shift optimised per pair on one noise draw finds what makes
    that one sample easier, not what makes the model draw the concept. This attacker plays the
    evaluation's game during training: ``δ_k`` starts at ``budget · d_k`` (Ring-A-Bell's point on the
    budget's sphere), and every training step moves it ``steps`` Adam steps (learning rate ``lr`` ×
    the RMS entry of a shift at the budget) to lower the policy's denoising error on the batch's
    unsafe losers of category ``k`` conditioned on their safe rewrites, then projects it back into
    ``‖δ_k‖ ≤ budget · ‖d_k‖``. Over a run the attacker follows the LoRA, so the LoRA is trained
    where the strongest universal shift of the moment sits. Its state (shifts and Adam moments) is
    part of the training checkpoint.

    ``restart`` > 0: after that many Adam steps a category's shift starts again from Ring-A-Bell's
    point with fresh moments. The evaluation's attacker starts there too and walks a few dozen steps
    against the finished LoRA; a shift kept for the whole run drifts away from that path, and the
    LoRA learns to resist where the shift went rather than where a fresh attack goes.
    """

    BETAS = (0.9, 0.999)

    def __init__(self, directions: torch.Tensor, budget: float, steps: int, lr: float = 0.1, restart: int = 0):
        directions = directions.detach().float()
        self.radius = budget * directions.flatten(1).norm(dim=1)  # [K]
        self.start = budget * directions
        self.delta = self.start.clone()
        self.restart = restart
        self.m = torch.zeros_like(self.delta)
        self.v = torch.zeros_like(self.delta)
        self.count = torch.zeros(directions.shape[0])  # Adam steps taken, per category
        self.steps = steps
        self.step_size = lr * self.radius / float(directions[0].numel()) ** 0.5  # [K]

    def state(self) -> dict[str, torch.Tensor]:
        return {"delta": self.delta, "m": self.m, "v": self.v, "count": self.count}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        for key, value in tensors.items():
            getattr(self, key).copy_(value)

    def attack(self, policy: Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor],
               cond: Conditioning, noisy_losers: torch.Tensor, timesteps: torch.Tensor, targets: torch.Tensor,
               categories: torch.Tensor) -> torch.Tensor:
        """Refine the shifts of ``categories`` ``[N]`` on these rows; returns each row's shift ``[N, L, D]``."""
        present = torch.bincount(categories.cpu(), minlength=self.delta.shape[0]) > 0
        for _ in range(self.steps):
            if self.restart > 0:
                self._restart((self.count >= self.restart) & present)
            self._adam_step(policy, cond, noisy_losers, timesteps, targets, categories)
        return self.delta[categories.cpu()].to(cond.hidden.device)

    def refresh(self, policy: Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor],
                draws: Iterable[tuple[Conditioning, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        """A fresh attack in place of every shift (``--adversarial-refresh``): each category starts again at
        Ring-A-Bell's point with fresh moments and takes one Adam step per element of ``draws``, each a
        batch ``(cond, noisy_losers, timesteps, targets, categories)`` of harmful pairs drawn anew from
        the training data, as the evaluation's soft-prompt attack walks against a finished LoRA. The
        shifts the training steps then refine start from where that attack ended."""
        self._restart(torch.ones(self.delta.shape[0], dtype=torch.bool))
        for cond, noisy_losers, timesteps, targets, categories in draws:
            self._adam_step(policy, cond, noisy_losers, timesteps, targets, categories)

    def _adam_step(self, policy: Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor],
                   cond: Conditioning, noisy_losers: torch.Tensor, timesteps: torch.Tensor, targets: torch.Tensor,
                   categories: torch.Tensor) -> None:
        """One Adam step of the shifts of the categories present in ``categories``, then the projection."""
        device = cond.hidden.device
        per_category = (-1,) + (1,) * (self.delta.ndim - 1)  # a [K] vector as [K, 1, 1]
        present = torch.bincount(categories.cpu(), minlength=self.delta.shape[0]) > 0
        keep = present.view(per_category)
        b1, b2 = self.BETAS
        delta = self.delta.to(device).requires_grad_(True)
        rows = delta[categories.to(device)]
        attacked = Conditioning((cond.hidden.float() + rows).to(cond.hidden.dtype), cond.added)
        error = denoising_error(policy(noisy_losers, timesteps, attacked), targets).sum()
        (grad,) = torch.autograd.grad(error, delta)
        grad = grad.detach().float().cpu()
        with torch.no_grad():
            self.count += present.float()
            self.m = torch.where(keep, b1 * self.m + (1 - b1) * grad, self.m)
            self.v = torch.where(keep, b2 * self.v + (1 - b2) * grad * grad, self.v)
            c = self.count.clamp(min=1).view(per_category)
            m_hat, v_hat = self.m / (1 - b1 ** c), self.v / (1 - b2 ** c)
            move = self.step_size.view(per_category) * m_hat / (v_hat.sqrt() + 1e-8)
            self.delta = project_l2(torch.where(keep, self.delta - move, self.delta), self.radius)

    def _restart(self, which: torch.Tensor) -> None:
        """Categories ``which`` ``[K]`` (bool) back to Ring-A-Bell's point, with fresh Adam moments."""
        if not bool(which.any()):
            return
        reset = which.view((-1,) + (1,) * (self.delta.ndim - 1))
        self.delta = torch.where(reset, self.start, self.delta)
        self.m = torch.where(reset, torch.zeros_like(self.m), self.m)
        self.v = torch.where(reset, torch.zeros_like(self.v), self.v)
        self.count = torch.where(which, torch.zeros_like(self.count), self.count)
