"""The SC-DPO loss (docs/method.md) as a pure function of per-pair denoising errors.

For a batch of B preference pairs (winner ``w``, loser ``l``) noised with the same ``ε`` and
timestep ``t``, with ``e(x) = ‖ε - ε_θ(x_t, t, c)‖²`` averaged over the latent's C,H,W and
``e_ref`` the same with the LoRA disabled::

    z = -(β/2) · [(e_θ(x_w) - e_ref(x_w)) - (e_θ(x_l) - e_ref(x_l))]   # implicit reward margin
    m = λ · max(0, C(x_l) - C(x_w))                                     # safety margin
    w = stopgrad((1 - σ(z - m))^γ) / mean_batch(·)                     # dynamic focusing (DFM)
    L = mean_batch(w · -log σ(z - m))

With ``λ = 0`` and ``γ = 0`` this is exactly the Diffusion-DPO loss (Wallace et al. 2023):
``m`` is 0, ``w`` is 1 and the per-pair loss is ``-log σ(z)``, bit for bit.

An optional **winner anchor** ``μ`` adds ``μ · (β/2) · (e_θ(x_w) - e_ref(x_w))`` per pair: the
preference term alone can be satisfied by making the loser unlikely in *any* way (on the toy world,
by drawing a harmful thing in another colour, which still shows it), since its gradient vanishes
once the pair is ranked. Keeping the winner (the safe image) at least as likely as under the
reference makes the policy draw it, i.e. remove the concept (the regularised-preference idea of
RPO / DPO-Positive for language models). ``μ = 0`` (default) leaves the loss above unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class ScDpoDiagnostics:
    """What the trainer logs about a batch (all detached).

    ``reward_margin`` ``[B]``: ``z``. ``safety_margin`` ``[B]``: ``m`` (≥ 0). ``focus_weight``
    ``[B]``: ``w`` (mean 1 over the batch). ``implicit_accuracy``: fraction of pairs with ``z > 0``
    (the LoRA prefers the winner more than the reference does), 0..1. ``margin_accuracy``: fraction
    with ``z > m`` (the preference clears the safety margin), 0..1. ``erasure_error`` /
    ``preservation_error``: the mean squared distance of the erasure target / preservation term over
    the pairs it applies to, before its weight, its moved and attacked askings included (0 when the term
    is off; set by the batch loss).
    """

    reward_margin: torch.Tensor
    safety_margin: torch.Tensor
    focus_weight: torch.Tensor
    implicit_accuracy: float
    margin_accuracy: float
    erasure_error: float = 0.0
    preservation_error: float = 0.0

    def scalars(self) -> dict[str, float]:
        """Batch summaries for logging (TensorBoard tags without the ``train/`` prefix)."""
        w = self.focus_weight.float()
        return {
            "implicit_accuracy": self.implicit_accuracy,
            "margin_accuracy": self.margin_accuracy,
            "reward_margin": float(self.reward_margin.float().mean()),
            "safety_margin": float(self.safety_margin.float().mean()),
            "focus_weight_min": float(w.min()),
            "focus_weight_max": float(w.max()),
            "focus_weight_std": float(w.std(unbiased=False)),
            "erasure_error": self.erasure_error,
            "preservation_error": self.preservation_error,
        }


NEGLIGIBLE_GRADIENT = 1e-30  # per-pair |dL/dlogit| below this is set to exactly 0


def sc_dpo_loss(
    err_w: torch.Tensor,
    err_l: torch.Tensor,
    ref_err_w: torch.Tensor,
    ref_err_l: torch.Tensor,
    cost_w: torch.Tensor,
    cost_l: torch.Tensor,
    beta: float,
    lam: float = 0.0,
    gamma: float = 0.0,
    winner_anchor: float = 0.0,
) -> tuple[torch.Tensor, ScDpoDiagnostics]:
    """Per-pair SC-DPO loss ``[B]`` and diagnostics. The batch loss is ``loss.mean()``.

    ``err_w``/``err_l``: policy denoising errors of winners / losers ``[B]`` (per-sample MSE,
    differentiable). ``ref_err_w``/``ref_err_l``: the same with the adapter disabled ``[B]`` (no
    gradient is taken through them). ``cost_w``/``cost_l``: safety costs ``C(x)`` of the winner and
    loser images ``[B]`` (positive = unsafe; only their difference matters). ``beta`` > 0: the DPO
    temperature (2500–5000 for SD latents). ``lam`` ≥ 0: safety-margin scale (cost units → reward
    units). ``gamma`` ≥ 0: focusing exponent; 0 weighs all pairs equally. ``winner_anchor`` ≥ 0: ``μ``
    of the winner anchor (module docstring); 0 turns it off.
    """
    if not (beta > 0 and math.isfinite(beta)):
        raise ValueError(f"beta must be a positive finite number, got {beta}")
    if not all(v >= 0 and math.isfinite(v) for v in (lam, gamma, winner_anchor)):
        raise ValueError(f"lam, gamma and winner_anchor must be finite and >= 0, got lam={lam}, gamma={gamma}, "
                         f"winner_anchor={winner_anchor}")
    shapes = {t.shape for t in (err_w, err_l, ref_err_w, ref_err_l, cost_w, cost_l)}
    if len(shapes) != 1 or err_w.ndim != 1:
        raise ValueError(f"sc_dpo_loss expects six [B] tensors of one shape, got {sorted(map(tuple, shapes))}")
    if not (torch.isfinite(cost_w).all() and torch.isfinite(cost_l).all()):
        raise ValueError("winner/loser costs must be finite")

    ref_err_w, ref_err_l = ref_err_w.detach(), ref_err_l.detach()
    z = -0.5 * beta * ((err_w - ref_err_w) - (err_l - ref_err_l))
    margin = lam * torch.clamp(cost_l.to(z.dtype) - cost_w.to(z.dtype), min=0.0)
    logits = z - margin
    with torch.no_grad():
        focus = (1.0 - torch.sigmoid(logits)).pow(gamma)  # pow(·, 0) is exactly 1
        focus = focus / focus.mean().clamp_min(torch.finfo(focus.dtype).tiny)
        # A pair fitted this well has a gradient that fp32 can only hold as a denormal number, which
        # the CPU processes in a slow path through the whole backward pass, slowing every step that
        # holds one. It gets an exact zero gradient instead; its loss value is unchanged.
        negligible = focus * torch.sigmoid(-logits) < NEGLIGIBLE_GRADIENT
    loss = focus * -F.logsigmoid(torch.where(negligible, logits.detach(), logits))
    if winner_anchor > 0:
        loss = loss + winner_anchor * 0.5 * beta * (err_w - ref_err_w)
    diagnostics = ScDpoDiagnostics(
        reward_margin=z.detach(),
        safety_margin=margin.detach(),
        focus_weight=focus,
        implicit_accuracy=float((z.detach() > 0).float().mean()),
        margin_accuracy=float((logits.detach() > 0).float().mean()),
    )
    return loss, diagnostics


def denoising_error(noise_pred: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Per-sample ε-prediction MSE ``[N]`` (mean over C,H,W), computed in float32."""
    return (noise_pred.float() - noise.float()).pow(2).mean(dim=tuple(range(1, noise.ndim)))
