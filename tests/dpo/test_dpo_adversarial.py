"""Adversarial training in the loop: the attack on the current LoRA, its budget, and what it changes."""

import copy
import dataclasses

import pytest
import torch

from scdpo.dpo import ToyOraclePairs, TrainConfig, train_lora
from scdpo.dpo.adversarial import adversarial_rows, attack_conditioning, project_l2
from scdpo.dpo.inputs import encode_pairs
from scdpo.dpo.loss import denoising_error
from scdpo.dpo.step import _attack_shifts, _replace_rows, _shifted, attach_training_lora, unet_call
from scdpo.errors import ScdpoError
from scdpo.lora import load_lora
from scdpo.pipeline import Conditioning

TINY = dict(steps=4, batch_size=3, rank=4, alpha=4.0, lr=1e-3, warmup_steps=1, checkpoint_every=2, log_every=1,
            beta=500.0, lam=0.5, gamma=1.0)


@pytest.fixture(scope="module")
def pairs():
    return ToyOraclePairs(20, seed=5)


def test_projection_keeps_rows_inside_their_ball():
    delta = torch.randn(4, 3, 5) * torch.tensor([0.1, 1.0, 5.0, 20.0]).view(4, 1, 1)
    radius = torch.tensor([1.0, 1.0, 2.0, 2.0])
    out = project_l2(delta, radius)
    norms = out.flatten(1).norm(dim=1)
    assert torch.all(norms <= radius + 1e-5)
    torch.testing.assert_close(out[0], delta[0])  # already inside: unchanged
    torch.testing.assert_close(norms[2:], radius[2:])  # outside: onto the sphere, same direction
    cos = torch.nn.functional.cosine_similarity(out[3].flatten(), delta[3].flatten(), dim=0)
    assert cos > 0.9999


def test_the_attack_lowers_the_policys_error_on_the_losers_within_budget(toy_model, pairs):
    model = copy.deepcopy(toy_model)
    params = attach_training_lora(model.unet, 4, 4.0, ["to_q", "to_k", "to_v", "to_out.0"])
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * 0.05)
    harmful = [i for i in range(len(pairs)) if pairs[i]["is_harmful"]][:4]
    inputs = encode_pairs(model, pairs, harmful, progress=False)
    batch = inputs.batch(harmful)
    cond = inputs.cond.index(batch.safe_rows)
    losers = batch.latents[len(harmful):]
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(losers.shape, generator=g)
    t = torch.randint(100, 900, (len(harmful),), generator=g)
    sched = model.noise_scheduler
    noisy, target = sched.add_noise(losers, noise, t), sched.get_velocity(losers, noise, t)
    dirs = inputs.concept_directions()["hidden"][batch.category_rows]
    radius = 2.0 * dirs.flatten(1).norm(dim=1)
    policy = unet_call(model.unet)

    def error(delta):
        with torch.no_grad():
            return denoising_error(policy(noisy, t, Conditioning(cond.hidden + delta)), target)

    start = torch.zeros_like(dirs)
    delta = attack_conditioning(policy, cond, noisy, t, target, start, radius, steps=5)
    assert torch.all(delta.flatten(1).norm(dim=1) <= radius + 1e-4)
    assert error(delta).mean() < 0.97 * error(start).mean()
    assert all(p.grad is None for p in params)  # gradients went to δ only


def test_adversarial_rows_pick_only_harmful_pairs_with_a_rewrite_and_draw_a_fixed_count():
    cats = torch.tensor([0, -1, 2, 1, -2, 0])
    safe = torch.tensor([3, -1, 5, -1, -1, 7])
    drop = [False, False, False, False, False, True]
    g = torch.Generator().manual_seed(1)
    pick, eta = adversarial_rows(cats, safe, drop, g, share=1.0, budget=2.0)
    assert pick.tolist() == [True, False, True, False, False, False]
    assert torch.all((eta >= 0) & (eta <= 2.0))
    after = torch.rand(1, generator=g)
    g2 = torch.Generator().manual_seed(1)
    adversarial_rows(cats, safe, drop, g2, share=0.0, budget=2.0)
    assert torch.equal(torch.rand(1, generator=g2), after)  # same draws whatever is picked


def test_attacked_rows_are_the_rewrite_plus_a_bounded_shift_and_others_are_untouched(toy_model, pairs):
    model = copy.deepcopy(toy_model)
    attach_training_lora(model.unet, 4, 4.0, ["to_q", "to_k", "to_v", "to_out.0"])
    indices = list(range(12))
    inputs = encode_pairs(model, pairs, indices, progress=False)
    batch = inputs.batch(indices)
    drop = [False] * len(indices)
    latents, cond = batch.encode(model, drop, "cpu")
    b = len(indices)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn((b, *latents.shape[1:]), generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    idx, rewrite, delta = _attack_shifts(model, unet_call(model.unet), batch, latents[b:], noise, t, drop,
                                         torch.Generator().manual_seed(3), 1.0, 2, 1.5, "cpu")
    out = _replace_rows(cond, idx, _shifted(rewrite, delta))
    dirs = inputs.concept_directions()["hidden"]
    n_attacked = 0
    for k in range(b):
        if int(batch.category_rows[k]) >= 0 and int(batch.safe_rows[k]) >= 0:
            shift = out.hidden[k] - inputs.cond.hidden[int(batch.safe_rows[k])]
            assert shift.norm() <= 1.5 * dirs[int(batch.category_rows[k])].norm() * (1 + 1e-4)
            assert shift.norm() > 0
            n_attacked += 1
        else:
            assert torch.equal(out.hidden[k], cond.hidden[k])
    assert n_attacked >= 3


def test_adversarial_training_trains_changes_the_lora_and_needs_cached_inputs(tmp_path, toy_model, pairs):
    with pytest.raises(ScdpoError, match="--no-cache-inputs"):
        TrainConfig(adversarial_share=0.5, cache_inputs=False).validate()
    with pytest.raises(ScdpoError, match="adversarial_share"):
        TrainConfig(adversarial_share=1.5).validate()
    cfg = TrainConfig(out=str(tmp_path), name="adv", **{**TINY, "adversarial_share": 1.0, "adversarial_steps": 2})
    adv = load_lora(train_lora(cfg, model=copy.deepcopy(toy_model), dataset=pairs, progress=False))
    plain = load_lora(train_lora(dataclasses.replace(cfg, name="plain", adversarial_share=0.0),
                                 model=copy.deepcopy(toy_model), dataset=pairs, progress=False))
    diff = max(float((adv.tensors[k] - v).abs().max()) for k, v in plain.tensors.items() if "lora_up" in k)
    assert diff > 1e-4
    assert '"adversarial_share": 1.0' in adv.metadata["scdpo_train_config"]
    again = load_lora(train_lora(dataclasses.replace(cfg, name="adv2"), model=copy.deepcopy(toy_model),
                                 dataset=pairs, progress=False))
    assert all(torch.equal(again.tensors[k], v) for k, v in adv.tensors.items())  # deterministic


def _harmful_setup(toy_model, pairs, n=6):
    model = copy.deepcopy(toy_model)
    params = attach_training_lora(model.unet, 4, 4.0, ["to_q", "to_k", "to_v", "to_out.0"])
    harmful = [i for i in range(len(pairs)) if pairs[i]["is_harmful"]][:n]
    inputs = encode_pairs(model, pairs, harmful, progress=False)
    batch = inputs.batch(harmful)
    losers = batch.latents[len(harmful):]
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(losers.shape, generator=g)
    t = torch.randint(300, 900, (len(harmful),), generator=g)
    sched = model.noise_scheduler
    return (model, params, inputs, batch, sched.add_noise(losers, noise, t), t,
            sched.get_velocity(losers, noise, t))


def test_universal_attack_moves_one_shift_per_category_within_budget_and_finds_the_losers(toy_model, pairs):
    from scdpo.dpo.adversarial import UniversalAttack

    model, params, inputs, batch, noisy, t, target = _harmful_setup(toy_model, pairs)
    dirs = inputs.concept_directions()["hidden"]
    attacker = UniversalAttack(dirs, budget=2.0, steps=1, lr=0.1)
    start = attacker.delta.clone()
    torch.testing.assert_close(start, 2.0 * dirs)  # Ring-A-Bell's point on the budget's sphere
    cond = inputs.cond.index(batch.safe_rows)
    cats = batch.category_rows
    policy = unet_call(model.unet)

    def error(rows):
        with torch.no_grad():
            return float(denoising_error(policy(noisy, t, Conditioning(cond.hidden + rows)), target).mean())

    before = error(start[cats])
    for _ in range(8):
        rows = attacker.attack(policy, cond, noisy, t, target, cats)
    assert error(rows) < 0.97 * before  # the shift makes the policy denoise towards the unsafe losers
    norms = attacker.delta.flatten(1).norm(dim=1)
    assert torch.all(norms <= attacker.radius * (1 + 1e-5))
    absent = [k for k in range(dirs.shape[0]) if k not in set(cats.tolist())]
    for k in absent:  # a category with no row in the batch keeps its shift and its moments
        assert torch.equal(attacker.delta[k], start[k]) and float(attacker.count[k]) == 0
    for k in set(cats.tolist()):
        assert float(attacker.count[k]) == 8 and not torch.equal(attacker.delta[k], start[k])
    assert torch.equal(rows, attacker.delta[cats])
    assert all(p.grad is None for p in params)  # nothing reaches the LoRA from the attack


def test_universal_attack_restarts_each_category_at_ring_a_bells_point(toy_model, pairs):
    from scdpo.dpo.adversarial import UniversalAttack

    model, _, inputs, batch, noisy, t, target = _harmful_setup(toy_model, pairs)
    dirs = inputs.concept_directions()["hidden"]
    kept, fresh = (UniversalAttack(dirs, budget=2.0, steps=1, lr=0.1, restart=r) for r in (0, 3))
    cond, cats, policy = inputs.cond.index(batch.safe_rows), batch.category_rows, unet_call(model.unet)
    present = sorted(set(cats.tolist()))
    for i in range(3):  # the first three steps are the same walk
        rows_kept = kept.attack(policy, cond, noisy, t, target, cats)
        rows_fresh = fresh.attack(policy, cond, noisy, t, target, cats)
    assert torch.equal(rows_kept, rows_fresh)
    fourth = fresh.attack(policy, cond, noisy, t, target, cats)
    once = UniversalAttack(dirs, budget=2.0, steps=1, lr=0.1)
    # the fourth step starts over: the same shift as one step from Ring-A-Bell's point
    assert torch.equal(fourth, once.attack(policy, cond, noisy, t, target, cats))
    assert all(float(fresh.count[k]) == 1 for k in present)
    assert not torch.equal(kept.attack(policy, cond, noisy, t, target, cats), fourth)
    with pytest.raises(ScdpoError, match="adversarial_restart .* needs adversarial_mode universal"):
        TrainConfig(adversarial_share=0.5, adversarial_restart=20).validate()


def test_universal_adversarial_training_resumes_bit_for_bit(tmp_path, toy_model, pairs):
    with pytest.raises(ScdpoError, match="adversarial_mode"):
        TrainConfig(adversarial_mode="sometimes").validate()
    cfg = TrainConfig(out=str(tmp_path), name="uni", **{**TINY, "adversarial_share": 1.0, "adversarial_steps": 1,
                                                        "adversarial_mode": "universal"})
    whole = load_lora(train_lora(cfg, model=copy.deepcopy(toy_model), dataset=pairs, progress=False))
    pair_mode = load_lora(train_lora(dataclasses.replace(cfg, name="pair", adversarial_mode="pair"),
                                     model=copy.deepcopy(toy_model), dataset=pairs, progress=False))
    assert any(not torch.equal(pair_mode.tensors[k], v) for k, v in whole.tensors.items())
    split = dataclasses.replace(cfg, name="split")
    state = train_lora(split, model=copy.deepcopy(toy_model), dataset=pairs, progress=False, stop_after=3)
    from scdpo.checkpointing import load_training_checkpoint
    from scdpo.dpo.train import STATE_KIND

    tensors, _ = load_training_checkpoint(state, STATE_KIND)
    assert {"attack.delta", "attack.m", "attack.v", "attack.count"} <= set(tensors)
    resumed = load_lora(train_lora(split, model=copy.deepcopy(toy_model), dataset=pairs, progress=False))
    assert all(torch.equal(resumed.tensors[k], v) for k, v in whole.tensors.items())


def test_a_refresh_is_a_fresh_attack_on_data_drawn_anew_from_every_category(toy_model, pairs):
    from scdpo.dpo.adversarial import UniversalAttack
    from scdpo.dpo.step import REFRESH_TIMESTEPS, refresh_draws

    model, params, inputs, batch, noisy, t, target = _harmful_setup(toy_model, pairs, n=12)
    dirs = inputs.concept_directions()["hidden"]
    draws = list(refresh_draws(model, inputs, torch.Generator().manual_seed(3), steps=6, per_category=4,
                               device="cpu"))
    present = sorted(set(batch.category_rows.tolist()))
    assert len(draws) == 6
    total = model.noise_scheduler.config.num_train_timesteps
    rewrites = {row.numpy().tobytes() for row in inputs.cond.index(batch.safe_rows).hidden}
    prompts = {row.numpy().tobytes() for row in inputs.cond.index(batch.prompt_rows).hidden}
    for cond, x_t, steps, tgt, cats in draws:
        assert sorted(set(cats.tolist())) == present and len(cats) == 4 * len(present)
        assert x_t.shape[0] == steps.shape[0] == tgt.shape[0] == cond.hidden.shape[0] == len(cats)
        assert int(steps.min()) >= REFRESH_TIMESTEPS[0] * total
        drawn = {row.numpy().tobytes() for row in cond.hidden}  # the rewrites, not the prompts
        assert drawn <= rewrites and not drawn & prompts
    assert not torch.equal(draws[0][1], draws[1][1])  # fresh noise every step
    again = list(refresh_draws(model, inputs, torch.Generator().manual_seed(3), steps=6, per_category=4,
                               device="cpu"))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(draws, again))  # from the generator alone

    policy = unet_call(model.unet)
    cond, cats = inputs.cond.index(batch.safe_rows), batch.category_rows

    def error(rows):
        with torch.no_grad():
            return float(denoising_error(policy(noisy, t, Conditioning(cond.hidden + rows)), target).mean())

    attacker = UniversalAttack(dirs, budget=2.0, steps=1, lr=0.1)
    for _ in range(3):  # a shift that has walked elsewhere
        attacker.attack(policy, cond, noisy, t, target, cats)
    walked = attacker.delta.clone()
    attacker.refresh(policy, iter(draws))
    assert all(float(attacker.count[k]) == 6 for k in present)  # started over: six steps, fresh moments
    assert torch.all(attacker.delta.flatten(1).norm(dim=1) <= attacker.radius * (1 + 1e-5))
    same = UniversalAttack(dirs, budget=2.0, steps=1, lr=0.1)
    same.refresh(policy, iter(draws))
    assert torch.equal(same.delta, attacker.delta) and not torch.equal(walked, attacker.delta)
    # the fresh attack finds the held-out batch's losers better than Ring-A-Bell's point it started at
    assert error(attacker.delta[cats]) < 0.97 * error(2.0 * dirs[cats])
    assert all(p.grad is None for p in params)


def test_refreshed_adversarial_training_changes_the_lora_and_resumes_bit_for_bit(tmp_path, toy_model, pairs):
    for bad in (dict(adversarial_refresh=2), dict(adversarial_share=0.5, adversarial_refresh=2),
                dict(adversarial_share=0.5, adversarial_mode="universal", adversarial_refresh=-1),
                dict(adversarial_share=0.5, adversarial_mode="universal", adversarial_refresh=2,
                     adversarial_refresh_steps=0)):
        with pytest.raises(ScdpoError, match="adversarial_refresh"):
            TrainConfig(**bad).validate()
    base = {**TINY, "adversarial_share": 1.0, "adversarial_steps": 1, "adversarial_mode": "universal"}
    kept = load_lora(train_lora(TrainConfig(out=str(tmp_path), name="kept", **base), model=copy.deepcopy(toy_model),
                                dataset=pairs, progress=False))
    cfg = TrainConfig(out=str(tmp_path), name="fresh", **base, adversarial_refresh=2, adversarial_refresh_steps=3)
    whole = load_lora(train_lora(cfg, model=copy.deepcopy(toy_model), dataset=pairs, progress=False))
    assert any(not torch.equal(kept.tensors[k], v) for k, v in whole.tensors.items())
    split = dataclasses.replace(cfg, name="split")
    train_lora(split, model=copy.deepcopy(toy_model), dataset=pairs, progress=False, stop_after=2)  # a refresh next
    resumed = load_lora(train_lora(split, model=copy.deepcopy(toy_model), dataset=pairs, progress=False))
    assert all(torch.equal(resumed.tensors[k], v) for k, v in whole.tensors.items())
