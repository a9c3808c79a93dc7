"""sc_dpo_loss against hand-computed numbers, and λ=0, γ=0 is exactly Diffusion-DPO."""

import pytest
import torch
import torch.nn.functional as F

from scdpo.dpo import sc_dpo_loss

# Two pairs, β = 2 (so z = -(Δθ_w - Δθ_l)):
#   pair 1: Δw = 0.5-0.6 = -0.1, Δl = 0.7-0.4 = 0.3  → z = 0.4
#   pair 2: Δw = 0.2-0.1 =  0.1, Δl = 0.3-0.5 = -0.2 → z = -0.3
ERR_W, REF_W = torch.tensor([0.5, 0.2]), torch.tensor([0.6, 0.1])
ERR_L, REF_L = torch.tensor([0.7, 0.3]), torch.tensor([0.4, 0.5])
COST_W, COST_L = torch.tensor([-1.0, 0.5]), torch.tensor([2.0, 0.0])


def _args(**kw):
    base = dict(err_w=ERR_W.double(), err_l=ERR_L.double(), ref_err_w=REF_W.double(), ref_err_l=REF_L.double(),
                cost_w=COST_W.double(), cost_l=COST_L.double(), beta=2.0)
    base.update(kw)
    return base


def test_reward_margin_and_plain_dpo_loss_by_hand():
    loss, d = sc_dpo_loss(**_args(lam=0.0, gamma=0.0))
    torch.testing.assert_close(d.reward_margin, torch.tensor([0.4, -0.3], dtype=torch.float64))
    # -log σ(0.4) = log(1 + e^-0.4) = 0.513015; -log σ(-0.3) = log(1 + e^0.3) = 0.854355
    torch.testing.assert_close(loss, torch.tensor([0.5130153, 0.8543552], dtype=torch.float64), atol=1e-6, rtol=0)
    assert d.implicit_accuracy == 0.5 and d.margin_accuracy == 0.5
    assert torch.equal(d.safety_margin, torch.zeros(2, dtype=torch.float64))
    assert torch.equal(d.focus_weight, torch.ones(2, dtype=torch.float64))


def test_safety_margin_and_focusing_by_hand():
    loss, d = sc_dpo_loss(**_args(lam=0.5, gamma=2.0))
    # m = 0.5·max(0, C_l - C_w) = [0.5·3, 0.5·max(0, -0.5)] = [1.5, 0]
    torch.testing.assert_close(d.safety_margin, torch.tensor([1.5, 0.0], dtype=torch.float64))
    # logits z - m = [-1.1, -0.3]; σ = [0.249740, 0.425557]; (1-σ)² = [0.562890, 0.329985]
    # w = (1-σ)² / mean = [1.260850, 0.739150]
    torch.testing.assert_close(d.focus_weight, torch.tensor([1.2608497, 0.7391503], dtype=torch.float64),
                               atol=1e-6, rtol=0)
    assert float(d.focus_weight.mean()) == pytest.approx(1.0, abs=1e-12)
    # loss = w · log(1 + e^{-(z-m)}) = [1.260850·1.387335, 0.739150·0.854355]
    torch.testing.assert_close(loss, torch.tensor([1.7492213, 0.6314969], dtype=torch.float64), atol=1e-6, rtol=0)
    assert d.implicit_accuracy == 0.5 and d.margin_accuracy == 0.0


def test_lambda_zero_gamma_zero_is_exactly_diffusion_dpo():
    g = torch.Generator().manual_seed(0)
    err_w, err_l, ref_w, ref_l = (torch.rand(64, generator=g) for _ in range(4))
    cost_w, cost_l = torch.randn(64, generator=g) * 3, torch.randn(64, generator=g) * 3
    beta = 2500.0
    ours, _ = sc_dpo_loss(err_w, err_l, ref_w, ref_l, cost_w, cost_l, beta, lam=0.0, gamma=0.0)
    # Diffusion-DPO (Wallace et al.): inside = -0.5·β·((e_w - e_ref_w) - (e_l - e_ref_l)); loss = -logσ(inside)
    model_diff, ref_diff = err_w - err_l, ref_w - ref_l
    inside = -0.5 * beta * (model_diff - ref_diff)
    reference = -F.logsigmoid(inside)
    # the same formula up to float reassociation: (a-b)-(c-d) vs (a-c)-(b-d)
    torch.testing.assert_close(ours, reference, atol=1e-3, rtol=1e-5)
    # and bit-exact against the literal DESIGN formula with m = 0, w = 1
    z = -(beta / 2) * ((err_w - ref_w) - (err_l - ref_l))
    assert torch.equal(ours, -F.logsigmoid(z))


def test_gradient_flows_to_policy_errors_only_and_focus_is_stopgrad():
    err_w = torch.tensor([0.5, 0.2], requires_grad=True)
    err_l = torch.tensor([0.7, 0.3], requires_grad=True)
    ref_w = REF_W.clone().requires_grad_(True)
    loss, d = sc_dpo_loss(err_w, err_l, ref_w, REF_L, COST_W, COST_L, beta=2.0, lam=0.5, gamma=2.0)
    loss.mean().backward()
    assert ref_w.grad is None
    # d/d e_w of mean(w·-logσ(z-m)) with w constant = mean-weight · (1-σ)·(β/2) ; σ(-1.1)=0.249740
    expected = 0.5 * d.focus_weight[0].item() * (1 - torch.sigmoid(torch.tensor(-1.1))).item() * 1.0
    assert err_w.grad[0].item() == pytest.approx(expected, rel=1e-5)
    assert err_l.grad[0].item() == pytest.approx(-expected, rel=1e-5)
    assert not d.focus_weight.requires_grad


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="beta"):
        sc_dpo_loss(ERR_W, ERR_L, REF_W, REF_L, COST_W, COST_L, beta=0.0)
    with pytest.raises(ValueError, match="one shape"):
        sc_dpo_loss(ERR_W, ERR_L[:1], REF_W, REF_L, COST_W, COST_L, beta=1.0)
    with pytest.raises(ValueError, match="finite"):
        sc_dpo_loss(ERR_W, ERR_L, REF_W, REF_L, torch.tensor([float("nan"), 0.0]), COST_L, beta=1.0)


@pytest.mark.parametrize("gamma", [0.0, 1.0])
def test_pairs_fitted_beyond_float_range_get_an_exact_zero_gradient(gamma):
    # pair 0 is fitted so well (logit 250) that its true gradient, about e^-250, is no normal fp32 number
    err_w = torch.tensor([-0.1, 0.001], requires_grad=True)
    zeros, costs = torch.zeros(2), torch.zeros(2)
    loss, diag = sc_dpo_loss(err_w, zeros, zeros, zeros, costs, costs, beta=5000.0, lam=0.0, gamma=gamma)
    loss.sum().backward()
    assert err_w.grad[0] == 0.0 and loss[0] == 0.0  # exactly zero, not a denormal
    # the other pair keeps its gradient: focus * (beta / 2) * sigmoid(-logit), logit = -2.5
    expected = float(diag.focus_weight[1]) * 2500.0 * float(torch.sigmoid(torch.tensor(2.5)))
    assert float(err_w.grad[1]) == pytest.approx(expected, rel=1e-5)
