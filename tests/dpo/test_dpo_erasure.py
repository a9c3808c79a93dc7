"""The erasure target and the preservation term (docs/method.md §3): what each computes, on which pairs,
and that training with them moves the LoRA the way they say."""

import copy
import dataclasses

import pytest
import torch

from scdpo.dpo import ToyOraclePairs, TrainConfig, train_lora
from scdpo.dpo.inputs import encode_pairs
from scdpo.dpo.inputs import NEAR_MISS_PAIR, shift_columns
from scdpo.dpo.step import (attach_training_lora, disabled_adapter_reference, dpo_batch_loss, erasure_error,
                            preservation_error, shifted_erasure_error, shifted_preservation_error, unet_call)
from scdpo.errors import ScdpoError
from scdpo.lora import apply_lora, load_lora
from scdpo.pipeline import Conditioning

TINY = dict(steps=4, batch_size=4, rank=4, alpha=4.0, lr=1e-3, warmup_steps=1, checkpoint_every=0, log_every=1,
            beta=500.0, lam=0.5, gamma=1.0)


@pytest.fixture(scope="module")
def pairs():
    return ToyOraclePairs(24, seed=7)


def _setup(toy_model, pairs, scale=0.0):
    """A model with a training LoRA (``scale`` > 0: random non-zero weights), a batch of every pair of
    ``pairs`` and one noisy draw of it."""
    model = copy.deepcopy(toy_model)
    params = attach_training_lora(model.unet, 4, 4.0, ["to_q", "to_k", "to_v", "to_out.0"])
    if scale:
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn_like(p) * scale)
    indices = list(range(len(pairs)))
    inputs = encode_pairs(model, pairs, indices, progress=False)
    batch = inputs.batch(indices)
    b = len(indices)
    latents, cond = batch.encode(model, [False] * b, "cpu")
    g = torch.Generator().manual_seed(0)
    noise = torch.randn((b, *latents.shape[1:]), generator=g)
    t = torch.randint(200, 900, (b,), generator=g)
    noisy = model.noise_scheduler.add_noise(latents, torch.cat([noise, noise]), torch.cat([t, t]))
    return model, params, inputs, batch, noisy, cond, t


def test_erasure_targets_the_references_prediction_for_the_safe_rewrite_on_harmful_pairs_only(toy_model, pairs):
    model, _, inputs, batch, noisy, cond, t = _setup(toy_model, pairs, scale=0.05)
    b = len(batch)
    policy, reference = unet_call(model.unet), disabled_adapter_reference(model.unet)
    with torch.no_grad():
        pred_l = policy(noisy[b:], t, cond)
        ref_l = reference(noisy[b:], t, cond)
        safe = reference(noisy[b:], t, inputs.cond.index(batch.safe_rows.clamp(min=0)))
    harmful = (batch.category_rows >= 0) & (batch.safe_rows >= 0)
    assert 3 <= int(harmful.sum()) < b  # both kinds of pair are in the batch

    plain = erasure_error(model, reference, batch, noisy[b:], t, pred_l, ref_l, 0.0, "cpu")
    expected = (pred_l - safe).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(plain[harmful], expected[harmful])
    assert torch.all(plain[~harmful] == 0)
    assert torch.all(plain[harmful] > 0)

    guided = erasure_error(model, reference, batch, noisy[b:], t, pred_l, ref_l, 1.0, "cpu")
    target = safe - (ref_l - safe)  # ESD's negative guidance, one step further from the concept
    torch.testing.assert_close(guided[harmful], (pred_l - target).pow(2).flatten(1).mean(1)[harmful])
    assert torch.all(guided[~harmful] == 0)


def test_preservation_is_zero_for_a_fresh_lora_and_ignores_harmful_pairs(toy_model, pairs):
    model, _, _, batch, noisy, cond, t = _setup(toy_model, pairs)
    b = len(batch)
    policy, reference = unet_call(model.unet), disabled_adapter_reference(model.unet)
    with torch.no_grad():
        fresh = preservation_error(batch, policy(noisy[:b], t, cond), reference(noisy[:b], t, cond))
    assert torch.all(fresh == 0)  # a fresh LoRA (B = 0) is the reference
    moved = reference(noisy[:b], t, cond) + 0.1
    err = preservation_error(batch, moved, reference(noisy[:b], t, cond))
    keep = batch.category_rows < 0
    torch.testing.assert_close(err[keep], torch.full((int(keep.sum()),), 0.01))
    assert torch.all(err[~keep] == 0)


def test_batch_loss_adds_each_term_with_its_weight(toy_model, pairs):
    model, _, _, batch, _, _, _ = _setup(toy_model, pairs, scale=0.05)
    policy, reference = unet_call(model.unet), disabled_adapter_reference(model.unet)

    def loss(**kw):
        with torch.no_grad():
            return float(dpo_batch_loss(model, policy, reference, batch, torch.Generator().manual_seed(4),
                                        beta=500.0, lam=0.5, gamma=1.0, **kw)[0])

    plain = loss()
    erase = loss(erase_weight=0.5)
    erase2 = loss(erase_weight=1.0)
    assert erase > plain
    assert erase2 - plain == pytest.approx(2 * (erase - plain), rel=1e-4)  # linear in its weight
    assert loss(preserve_weight=1.0) > plain


def test_training_with_the_erasure_target_moves_the_lora_towards_it(tmp_path, toy_model, pairs):
    cfg = TrainConfig(out=str(tmp_path), name="plain", **{**TINY, "steps": 12, "lr": 3e-3})
    plain_path = train_lora(cfg, model=copy.deepcopy(toy_model), dataset=pairs, progress=False)
    erase_path = train_lora(dataclasses.replace(cfg, name="erase", erase_weight=2.0), model=copy.deepcopy(toy_model),
                            dataset=pairs, progress=False)
    erase_lora = load_lora(erase_path)
    assert '"erase_weight": 2.0' in erase_lora.metadata["scdpo_train_config"]
    import json

    summary = json.loads(erase_lora.metadata["scdpo_training_summary"])
    assert summary["erasure_error_ema"] > 0 and summary["preservation_error_ema"] == 0  # logged; ρ is off
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "logs" / "erase"))
    acc.Reload()
    values = [e.value for e in acc.Scalars("train/erasure_error")]
    # a batch without a harmful pair logs 0; the others log the term's error
    assert len(values) == 12 and sum(v > 0 for v in values) >= 6 and min(values) >= 0

    def erasure_on_the_batch(path):
        model, _, _, batch, noisy, cond, t = _setup(toy_model, pairs)
        b = len(batch)
        apply_lora(model, load_lora(path), adapter_name="check")
        policy = unet_call(model.unet)
        # the reference of the check is the base model: every adapter off
        reference = disabled_adapter_reference(model.unet)
        with torch.no_grad():
            pred = policy(noisy[b:], t, cond)
            err = erasure_error(model, reference, batch, noisy[b:], t, pred, reference(noisy[b:], t, cond), 0.0, "cpu")
        return float(err[(batch.category_rows >= 0) & (batch.safe_rows >= 0)].mean())

    assert erasure_on_the_batch(erase_path) < 0.9 * erasure_on_the_batch(plain_path)


def test_options_are_checked_and_the_adversarial_erasure_objective_trains(tmp_path, toy_model, pairs):
    with pytest.raises(ScdpoError, match="erase_weight"):
        TrainConfig(erase_weight=-1).validate()
    with pytest.raises(ScdpoError, match="erase_weight needs the encoded inputs"):
        TrainConfig(erase_weight=0.5, cache_inputs=False).validate()
    with pytest.raises(ScdpoError, match="adversarial_objective"):
        TrainConfig(adversarial_objective="both").validate()
    with pytest.raises(ScdpoError, match="set erase_weight > 0"):
        TrainConfig(adversarial_share=0.5, adversarial_objective="erasure").validate()
    assert TrainConfig(lam=0, gamma=0, erase_weight=0.5).method == "sc-dpo"
    assert TrainConfig(lam=0, gamma=0, preserve_weight=1.0).method == "sc-dpo"
    assert TrainConfig(lam=0, gamma=0).method == "diffusion-dpo"

    base = dict(TINY, adversarial_share=1.0, adversarial_steps=1, adversarial_mode="universal", erase_weight=1.0)
    cfg = TrainConfig(out=str(tmp_path), name="pref", **base)
    pref = load_lora(train_lora(cfg, model=copy.deepcopy(toy_model), dataset=pairs, progress=False))
    era = load_lora(train_lora(dataclasses.replace(cfg, name="era", adversarial_objective="erasure"),
                               model=copy.deepcopy(toy_model), dataset=pairs, progress=False))
    ups = [k for k in era.tensors if "lora_up" in k]
    assert max(float(era.tensors[k].abs().max()) for k in ups) > 1e-4  # it trained
    assert any(not torch.equal(era.tensors[k], pref.tensors[k]) for k in ups)  # and differently


def test_conditioning_rows_are_untouched_by_the_erasure_objective(toy_model, pairs):
    """Under ``erasure`` the attacked pairs keep their prompt for the preference term."""
    from scdpo.dpo.adversarial import UniversalAttack

    model, _, inputs, batch, _, _, _ = _setup(toy_model, pairs, scale=0.05)
    policy, reference = unet_call(model.unet), disabled_adapter_reference(model.unet)
    seen = []

    def spying_policy(noisy, t, cond: Conditioning):
        seen.append(cond.hidden.detach().clone())
        return policy(noisy, t, cond)

    attacker = UniversalAttack(inputs.concept_directions()["hidden"], budget=2.0, steps=1, lr=0.1)
    kw = dict(beta=500.0, lam=0.5, gamma=1.0, adversarial_share=1.0, universal_attack=attacker, erase_weight=1.0)
    dpo_batch_loss(model, spying_policy, reference, batch, torch.Generator().manual_seed(4),
                   adversarial_objective="erasure", **kw)
    b = len(batch)
    _, plain_cond = batch.encode(model, [False] * b, "cpu")
    main = [h for h in seen if h.shape[0] == 2 * b]
    assert len(main) == 1 and torch.equal(main[0][:b], plain_cond.hidden)  # the preference term: prompts
    extra = [h for h in seen if h.shape[0] == int(((batch.category_rows >= 0) & (batch.safe_rows >= 0)).sum())]
    assert extra  # the attacked rows went through the policy once more, under the attack


def _moved_by(moved: torch.Tensor, original: torch.Tensor, most: int) -> list[int]:
    """The sideways moves k, 1 <= |k| <= most, that turn ``original`` into ``moved``."""
    return [k for k in range(-most, most + 1) if k and torch.equal(shift_columns(original, k), moved)]


def test_shifted_terms_ask_for_the_same_target_moved_with_the_state(toy_model, pairs):
    _, _, _, batch, noisy, cond, t = _setup(toy_model, pairs)
    b = len(batch)
    seen = []

    def identity(x, tt, c: Conditioning):  # predicts its input: the error is the distance to the moved target
        seen.append((x.clone(), tt.clone(), c.hidden.clone()))
        return x

    losers, winners = noisy[b:], noisy[:b]
    harmful = batch.with_rewrite
    rows = harmful.nonzero().squeeze(1)
    # target = safe − g·(ref − safe): with safe = x + 0.5 and ref = x + 1 that is x + 0.5 (g 0) or x (g 1)
    plain = shifted_erasure_error(identity, batch, losers, t, cond, losers + 0.5, losers + 1.0, 0.0,
                                  torch.Generator().manual_seed(1), 0.5)
    assert torch.allclose(plain[harmful], torch.full_like(plain[harmful], 0.25)) and torch.all(plain[~harmful] == 0)
    x, tt, hidden = seen[0]
    assert x.shape[0] == len(rows)  # one more forward of just those rows, with their timesteps and prompts
    assert torch.equal(tt, t[rows]) and torch.equal(hidden, cond.hidden[rows])
    most = round(0.5 * losers.shape[-1])
    moves = [_moved_by(x[j], losers[i], most) for j, i in enumerate(rows.tolist())]
    assert all(moves) and len({m[0] for m in moves}) > 1  # every row moved, not all by the same k
    guided = shifted_erasure_error(identity, batch, losers, t, cond, losers + 0.5, losers + 1.0, 1.0,
                                   torch.Generator().manual_seed(1), 0.5)
    assert float(guided.abs().max()) < 1e-10

    asked = []

    def reference(x, tt, c):  # the preservation target is the reference at the moved state itself
        asked.append(x.clone())
        return x - 0.2

    kept = shifted_preservation_error(identity, reference, batch, winners, t, cond,
                                      torch.Generator().manual_seed(1), 0.5)
    harmless = batch.category_rows < 0
    assert torch.allclose(kept[harmless], torch.full_like(kept[harmless], 0.04)) and torch.all(kept[~harmless] == 0)
    assert seen[-1][0].shape[0] == int(harmless.sum()) and torch.equal(asked[0], seen[-1][0])
    assert all(_moved_by(asked[0][j], winners[i], most) for j, i in enumerate(harmless.nonzero().flatten().tolist()))

    # look-alikes only: the same moves (the same draws), asked of the look-alike pairs alone
    only = shifted_preservation_error(identity, reference, batch, winners, t, cond,
                                      torch.Generator().manual_seed(1), 0.5, look_alikes_only=True)
    look_alikes = batch.category_rows == NEAR_MISS_PAIR
    assert 1 <= int(look_alikes.sum()) < int(harmless.sum())  # the batch has both kinds of harmless pair
    assert torch.equal(only[look_alikes], kept[look_alikes]) and torch.all(only[~look_alikes] == 0)
    assert seen[-1][0].shape[0] == int(look_alikes.sum())


def test_shifted_terms_add_to_the_batch_loss_and_are_checked(tmp_path, toy_model, pairs):
    model, _, _, batch, _, _, _ = _setup(toy_model, pairs, scale=0.05)
    policy, reference = unet_call(model.unet), disabled_adapter_reference(model.unet)

    def loss(**kw):
        with torch.no_grad():
            return float(dpo_batch_loss(model, policy, reference, batch, torch.Generator().manual_seed(4),
                                        beta=500.0, lam=0.5, gamma=1.0, erase_weight=0.5, preserve_weight=1.0,
                                        **kw)[0])

    # the moves are drawn after every other draw of the step: the rest of the loss is the same
    assert loss(erase_shift=0.5) > loss()
    assert loss(erase_shift=0.5, preserve_shift=0.5) > loss(erase_shift=0.5)
    with torch.no_grad():  # the log pools the moved askings in with the terms'
        logged = [dpo_batch_loss(model, policy, reference, batch, torch.Generator().manual_seed(4), beta=500.0,
                                 lam=0.5, gamma=1.0, erase_weight=0.5, preserve_weight=1.0, **kw)[1]
                  for kw in ({}, {"erase_shift": 0.5, "preserve_shift": 0.5})]
    assert logged[1].erasure_error != logged[0].erasure_error > 0
    assert logged[1].preservation_error != logged[0].preservation_error > 0

    with pytest.raises(ScdpoError, match="erase_shift .* needs erase_weight"):
        TrainConfig(erase_shift=0.5).validate()
    with pytest.raises(ScdpoError, match="preserve_shift .* needs preserve_weight"):
        TrainConfig(preserve_shift=0.5).validate()
    with pytest.raises(ScdpoError, match="preserve_shift_pairs must be one of all, look-alikes"):
        TrainConfig(preserve_weight=1.0, preserve_shift=0.5, preserve_shift_pairs="clean").validate()
    assert loss(preserve_shift=0.5) > loss(preserve_shift=0.5, preserve_shift_pairs="look-alikes") > loss()
    with pytest.raises(ScdpoError, match="erase_shift must be in"):
        TrainConfig(erase_weight=1.0, erase_shift=0.75).validate()
    cfg = TrainConfig(out=str(tmp_path), name="moved", erase_weight=1.0, erase_shift=0.5, preserve_weight=1.0,
                      preserve_shift=0.5, **TINY)
    lora = load_lora(train_lora(cfg, model=copy.deepcopy(toy_model), dataset=pairs, progress=False))
    assert '"erase_shift": 0.5' in lora.metadata["scdpo_train_config"]
    assert max(float(v.abs().max()) for k, v in lora.tensors.items() if "lora_up" in k) > 1e-4
