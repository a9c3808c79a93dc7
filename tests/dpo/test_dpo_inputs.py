"""Inputs encoded once before training (latents + text embeddings): same loss, same LoRA, a cache
file that a resumed run reads instead of encoding, and encoders released while training."""

import copy
import dataclasses

import pytest
import torch

from scdpo.dpo import ToyOraclePairs, TrainConfig, train_lora
from scdpo.dpo.inputs import EncodedPairs, encode_pairs, encoded_inputs, encoders_parked, inputs_fingerprint
from scdpo.dpo.pairs import collate_pairs
from scdpo.dpo.step import dpo_batch_loss
from scdpo.lora import load_lora

TINY = dict(steps=4, batch_size=3, rank=4, alpha=4.0, lr=1e-3, warmup_steps=1, checkpoint_every=2, log_every=1,
            beta=500.0, lam=0.5, gamma=1.0, prompt_dropout=0.3)


@pytest.fixture(scope="module")
def pairs():
    return ToyOraclePairs(20, seed=5)


class _WithoutSafePrompts(torch.utils.data.Dataset):
    """The same pairs with the ``safe_prompt`` column empty, as in datasets written before it existed."""

    def __init__(self, pairs):
        self.pairs = pairs

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        return {**self.pairs[i], "safe_prompt": None}


def _mean_hidden(model, prompts):
    return model.encode_prompt(sorted(prompts)).hidden.mean(0)


def _random_unet_call(model):
    def call(noisy, t, cond):
        return model.unet(noisy, t, **cond.unet_kwargs(), return_dict=False)[0]

    return call


def test_encoded_batch_gives_the_loss_of_the_image_batch(toy_model, pairs):
    indices = [1, 4, 7, 9, 12, 19]
    inputs = encode_pairs(toy_model, pairs, indices, chunk=4, progress=False)
    assert inputs.latents.shape == (6, 2, 12, 8, 8)
    distinct = {pairs[i]["prompt"] for i in indices} | {pairs[i]["safe_prompt"] for i in indices} - {None}
    assert len(inputs.cond) == len(distinct) + 1  # every distinct prompt and safe rewrite once, plus ""
    call = _random_unet_call(toy_model)
    for dropout in (0.0, 0.5):
        losses = []
        for batch in (collate_pairs([pairs[i] for i in indices]), inputs.batch(indices)):
            with torch.no_grad():
                loss, diag = dpo_batch_loss(toy_model, call, call, batch, torch.Generator().manual_seed(3),
                                            500.0, 0.5, 1.0, prompt_dropout=dropout)
            losses.append((loss, diag.reward_margin))
        torch.testing.assert_close(losses[1][0], losses[0][0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(losses[1][1], losses[0][1], atol=1e-6, rtol=1e-5)
    # the batch follows the requested order, not the cache's
    back = inputs.batch([12, 1])
    torch.testing.assert_close(back.latents[0], toy_model.encode_images(pairs[12]["winner"][None])[0])
    torch.testing.assert_close(back.latents[3], toy_model.encode_images(pairs[1]["loser"][None])[0])
    assert back.winner_cost.tolist() == [pairs[12]["winner_cost"], pairs[1]["winner_cost"]]


def test_cached_and_uncached_training_end_with_the_same_lora(tmp_path, toy_model, pairs):
    cfg = TrainConfig(out=str(tmp_path), name="cached", **TINY)
    cached = load_lora(train_lora(cfg, model=copy.deepcopy(toy_model), dataset=pairs, progress=False))
    plain = load_lora(train_lora(dataclasses.replace(cfg, name="plain", cache_inputs=False),
                                 model=copy.deepcopy(toy_model), dataset=pairs, progress=False))
    assert set(cached.tensors) == set(plain.tensors)
    # Encoding in other batch sizes rounds differently (~1e-7); AdamW's g/sqrt(v) can blow that up
    # for a weight whose gradient is ~0, so compare whole tensors, not single elements.
    for k, v in plain.tensors.items():
        if v.abs().max() > 0:
            assert float((cached.tensors[k] - v).norm() / v.norm()) < 1e-2, k
    assert any(float(v.abs().max()) > 1e-4 for k, v in cached.tensors.items() if "lora_up" in k)
    assert not (tmp_path / "cached.inputs.safetensors").exists()  # removed with the training state


def test_resume_reads_the_cache_instead_of_encoding(tmp_path, toy_model, pairs, monkeypatch):
    cfg = TrainConfig(out=str(tmp_path / "a"), name="r", **TINY)
    full = load_lora(train_lora(cfg, model=copy.deepcopy(toy_model), dataset=pairs, progress=False))
    cfg_b = dataclasses.replace(cfg, out=str(tmp_path / "b"))
    train_lora(cfg_b, model=copy.deepcopy(toy_model), dataset=pairs, progress=False, stop_after=2)
    cache = tmp_path / "b" / "r.inputs.safetensors"
    assert cache.exists()

    model = copy.deepcopy(toy_model)
    calls = []
    encode = model.encode_images
    model.encode_images = lambda images: calls.append(len(images)) or encode(images)
    resumed = load_lora(train_lora(cfg_b, model=model, dataset=pairs, progress=False))
    assert calls == []  # nothing re-encoded
    for k, v in full.tensors.items():
        assert torch.equal(v, resumed.tensors[k]), k
    assert not cache.exists()


def test_cache_of_other_data_or_a_broken_file_is_encoded_again(tmp_path, toy_model, pairs):
    path = tmp_path / "x.inputs.safetensors"
    first = encoded_inputs(toy_model, pairs, [0, 1, 2], path, "toy-oracle", progress=False)
    fp = inputs_fingerprint(toy_model, pairs, [0, 1, 2], "toy-oracle")
    assert EncodedPairs.load(path, fp) is not None
    assert inputs_fingerprint(toy_model, pairs, [0, 1, 3], "toy-oracle") != fp
    other = ToyOraclePairs(20, seed=6)
    assert inputs_fingerprint(toy_model, other, [0, 1, 2], "toy-oracle") != fp  # other prompts
    again = encoded_inputs(toy_model, other, [0, 1, 2], path, "toy-oracle", progress=False)
    assert not torch.equal(again.latents, first.latents)
    path.write_bytes(path.read_bytes()[:100])  # truncated by a crash of something else
    assert EncodedPairs.load(path, inputs_fingerprint(toy_model, other, [0, 1, 2], "toy-oracle")) is None
    third = encoded_inputs(toy_model, other, [0, 1, 2], path, "toy-oracle", progress=False)
    assert torch.equal(third.latents, again.latents)


def test_safe_prompts_are_cached_and_part_of_the_fingerprint(tmp_path, toy_model, pairs):
    indices = [i for i in range(len(pairs)) if pairs[i]["is_harmful"]][:2] + [
        i for i in range(len(pairs)) if not pairs[i]["is_harmful"]][:2]
    path = tmp_path / "s.inputs.safetensors"
    first = encoded_inputs(toy_model, pairs, indices, path, "toy-oracle", progress=False)
    assert first.pair_safe_prompt.tolist()[2:] == [-1, -1]
    for k in (0, 1):  # the rewrite's embedding is a row of the conditioning table
        row = int(first.pair_safe_prompt[k])
        with torch.no_grad():
            want = toy_model.encode_prompt([pairs[indices[k]]["safe_prompt"]]).hidden[0]
        torch.testing.assert_close(first.cond.hidden[row], want, atol=1e-5, rtol=1e-4)
    loaded = EncodedPairs.load(path, inputs_fingerprint(toy_model, pairs, indices, "toy-oracle"))
    assert torch.equal(loaded.pair_safe_prompt, first.pair_safe_prompt)
    bare = inputs_fingerprint(toy_model, _WithoutSafePrompts(pairs), indices, "toy-oracle")
    assert bare != inputs_fingerprint(toy_model, pairs, indices, "toy-oracle")


def test_encoders_are_released_only_when_the_trainer_owns_the_model(toy_model):
    shared = copy.deepcopy(toy_model)
    with encoders_parked(shared, free=False):
        pass
    assert shared.text_encoder.device.type == "cpu"
    shared.encode_prompt(["a red square"])  # still usable by the caller
    owned = copy.deepcopy(toy_model)
    with encoders_parked(owned, free=True):
        assert all(p.device.type == "meta" for p in owned.text_encoder.parameters())
        assert all(p.device.type == "cpu" for p in owned.unet.parameters())


def test_concept_directions_and_augmentation_move_only_harmful_pairs(toy_model, pairs):
    indices = list(range(len(pairs)))
    inputs = encode_pairs(toy_model, pairs, indices, progress=False)
    rows = [pairs[i] for i in indices]
    cats = sorted({r["category"] for r in rows if r["is_harmful"]})
    assert inputs.categories == cats
    dirs = inputs.concept_directions()["hidden"]
    assert dirs.shape == (len(cats), *inputs.cond.hidden.shape[1:])
    with torch.no_grad():
        # harmful pairs carry their safe rewrite: the direction is the mean paired difference
        assert all(r["safe_prompt"] for r in rows if r["is_harmful"])
        for c, name in enumerate(cats):
            both = sorted({(r["prompt"], r["safe_prompt"]) for r in rows if r["category"] == name})
            diff = (toy_model.encode_prompt([p for p, _ in both]).hidden
                    - toy_model.encode_prompt([q for _, q in both]).hidden).mean(0)
            torch.testing.assert_close(dirs[c], diff, atol=1e-5, rtol=1e-4)
            assert float(diff.norm()) > 0.1 * float(toy_model.encode_prompt([both[0][0]]).hidden.norm())

        # without rewrites: harmful mean minus clean mean, near-miss prompts left out of the latter
        bare = _WithoutSafePrompts(pairs)
        old = encode_pairs(toy_model, bare, indices, progress=False).concept_directions()["hidden"]
        assert any(r["kind"] == "near_miss" for r in rows)
        clean = _mean_hidden(toy_model, {r["prompt"] for r in rows if r["kind"] == "clean"})
        for c, name in enumerate(cats):
            harmful = {r["prompt"] for r in rows if r["category"] == name and r["is_harmful"]}
            torch.testing.assert_close(old[c], _mean_hidden(toy_model, harmful) - clean, atol=1e-5, rtol=1e-4)
            assert not torch.allclose(old[c], dirs[c], atol=1e-3)  # the two rules do differ

        # ... and without clean pairs, the look-alikes are the only harmless prompts to compare with
        no_clean = [i for i, r in zip(indices, rows) if r["kind"] != "clean"]
        alone = encode_pairs(toy_model, bare, no_clean, progress=False).concept_directions()["hidden"]
        near = _mean_hidden(toy_model, {r["prompt"] for r in rows if r["kind"] == "near_miss"})
        harmful = {r["prompt"] for r in rows if r["category"] == cats[0] and r["is_harmful"]}
        torch.testing.assert_close(alone[0], _mean_hidden(toy_model, harmful) - near, atol=1e-5, rtol=1e-4)

    batch = inputs.batch(indices)
    drop = [i == 0 for i in range(len(indices))]
    _, cond = batch.encode(toy_model, drop, "cpu")
    moved = batch.augment(cond, drop, torch.Generator().manual_seed(0), prob=1.0, scale=2.0)
    assert torch.equal(batch.augment(cond, drop, torch.Generator().manual_seed(0), 0.0, 2.0).hidden, cond.hidden)
    again = batch.augment(cond, drop, torch.Generator().manual_seed(0), prob=1.0, scale=2.0)
    assert torch.equal(moved.hidden, again.hidden)  # a pure function of the generator
    g = torch.Generator().manual_seed(0)
    torch.rand(len(indices), generator=g)
    eta = torch.rand(len(indices), generator=g) * 2.0
    n_moved = 0
    for k, r in enumerate(rows):
        delta = moved.hidden[k] - cond.hidden[k]
        if r["is_harmful"] and not drop[k]:
            torch.testing.assert_close(delta, eta[k] * dirs[cats.index(r["category"])], atol=1e-5, rtol=1e-4)
            n_moved += 1
        else:
            assert torch.equal(delta, torch.zeros_like(delta))
    assert n_moved >= 5


class _Pushed(torch.utils.data.Dataset):
    """The same pairs, with the given ones made attack pairs (``concept_push``)."""

    def __init__(self, pairs, push: dict):
        self.pairs, self.push = pairs, push

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        return {**self.pairs[i], "concept_push": self.push.get(i)}


def test_attack_pairs_are_conditioned_on_the_pushed_rewrite(tmp_path, toy_model, pairs):
    from scdpo.errors import ScdpoError

    harmful = [i for i in range(len(pairs)) if pairs[i]["is_harmful"]]
    plain = [i for i in range(len(pairs)) if not pairs[i]["is_harmful"]][:2]
    data = _Pushed(pairs, {harmful[0]: 2.0, harmful[1]: 0.5})
    indices = harmful[:3] + plain
    inputs = encode_pairs(toy_model, data, indices, progress=False)
    assert inputs.pair_push.tolist() == [2.0, 0.5, 0.0, 0.0, 0.0]
    dirs = inputs.concept_directions()["hidden"]
    batch = inputs.batch(indices)
    for drop in ([False] * 5, [False, True, False, False, False]):
        _, cond = batch.encode(toy_model, drop, "cpu")
        with torch.no_grad():
            for k, i in enumerate(indices):
                row = pairs[i]
                if drop[k]:
                    want = toy_model.encode_prompt([""]).hidden[0]
                elif k < 2:  # the loser was sampled under embedding(rewrite) + η · d
                    want = (toy_model.encode_prompt([row["safe_prompt"]]).hidden[0]
                            + inputs.pair_push[k] * dirs[inputs.categories.index(row["category"])])
                else:
                    want = toy_model.encode_prompt([row["prompt"]]).hidden[0]
                torch.testing.assert_close(cond.hidden[k], want, atol=1e-5, rtol=1e-4)
    cfg = TrainConfig(out=str(tmp_path), name="nocache", cache_inputs=False, **TINY)
    with pytest.raises(ScdpoError, match="1 of the selected pairs are attack pairs.*--no-cache-inputs"):
        train_lora(cfg, model=copy.deepcopy(toy_model), dataset=_Pushed(pairs, {harmful[0]: 1.0}), progress=False)


def test_concept_augmentation_trains_and_needs_cached_inputs(tmp_path, toy_model, pairs):
    from scdpo.errors import ScdpoError

    with pytest.raises(ScdpoError, match="--no-cache-inputs"):
        TrainConfig(concept_augment=0.5, cache_inputs=False).validate()
    cfg = TrainConfig(out=str(tmp_path), name="aug", **{**TINY, "concept_augment": 1.0, "concept_scale": 3.0})
    aug = load_lora(train_lora(cfg, model=copy.deepcopy(toy_model), dataset=pairs, progress=False))
    plain = load_lora(train_lora(dataclasses.replace(cfg, name="plain", concept_augment=0.0),
                                 model=copy.deepcopy(toy_model), dataset=pairs, progress=False))
    diff = max(float((aug.tensors[k] - v).abs().max()) for k, v in plain.tensors.items() if "lora_up" in k)
    assert diff > 1e-4
    assert '"concept_augment": 1.0' in aug.metadata["scdpo_train_config"]


def test_shift_augmentation_moves_winner_and_loser_of_harmful_pairs_together(toy_model, pairs):
    indices = list(range(len(pairs)))
    rows = [pairs[i] for i in indices]
    batch = encode_pairs(toy_model, pairs, indices, progress=False).batch(indices)
    latents, b = batch.latents, len(indices)
    same = batch.shift_sideways(latents, torch.Generator().manual_seed(0), prob=0.0, fraction=0.25)
    assert torch.equal(same, latents)
    moved = batch.shift_sideways(latents, torch.Generator().manual_seed(0), prob=1.0, fraction=0.25)
    width = latents.shape[-1]
    n_moved = 0
    for k, r in enumerate(rows):
        if not r["is_harmful"]:
            assert torch.equal(moved[k], latents[k]) and torch.equal(moved[k + b], latents[k + b])
            continue
        # the same sideways move k for winner and loser, 1 <= |k| <= round(0.25 * width), edges repeated
        matches = [s for s in range(-2, 3) if s and all(
            torch.equal(moved[row][..., max(s, 0):width + min(s, 0)], latents[row][..., max(-s, 0):width - max(s, 0)])
            for row in (k, k + b))]
        assert len(matches) == 1, k
        s = matches[0]
        edge = moved[k][..., :s] if s > 0 else moved[k][..., s:]
        assert torch.equal(edge, latents[k][..., :1].expand_as(edge) if s > 0 else latents[k][..., -1:].expand_as(edge))
        n_moved += 1
    assert n_moved == sum(r["is_harmful"] for r in rows) > 0


def test_shift_augmentation_trains_and_needs_cached_inputs(tmp_path, toy_model, pairs):
    from scdpo.errors import ScdpoError

    with pytest.raises(ScdpoError, match="--no-cache-inputs"):
        TrainConfig(shift_augment=0.5, cache_inputs=False).validate()
    with pytest.raises(ScdpoError, match="shift_fraction"):
        TrainConfig(shift_augment=0.5, shift_fraction=0.9).validate()
    cfg = TrainConfig(out=str(tmp_path), name="shift", **{**TINY, "shift_augment": 1.0})
    shifted = load_lora(train_lora(cfg, model=copy.deepcopy(toy_model), dataset=pairs, progress=False))
    plain = load_lora(train_lora(dataclasses.replace(cfg, name="plain", shift_augment=0.0),
                                 model=copy.deepcopy(toy_model), dataset=pairs, progress=False))
    diff = max(float((shifted.tensors[k] - v).abs().max()) for k, v in plain.tensors.items() if "lora_up" in k)
    assert diff > 1e-4


class _WithNeutralRows(torch.utils.data.Dataset):
    """The same pairs plus, per category, a neutral attack row: a prompt that is its own safe rewrite."""

    def __init__(self, pairs, neutral_text: str):
        self.pairs = pairs
        self.extra = [{**pairs[i], "prompt": neutral_text, "safe_prompt": neutral_text, "concept_push": 2.0}
                      for i in range(len(pairs)) if pairs[i]["is_harmful"]]

    def __len__(self):
        return len(self.pairs) + len(self.extra)

    def __getitem__(self, i):
        return self.pairs[i] if i < len(self.pairs) else self.extra[i - len(self.pairs)]


def test_a_prompt_that_is_its_own_rewrite_leaves_the_concept_direction_alone(toy_model, pairs):
    """Neutral attack rows (an empty scene's caption pushed towards a concept) differ from their rewrite by
    nothing; counted, they would shrink every category's direction towards zero."""
    indices = list(range(len(pairs)))
    plain = encode_pairs(toy_model, pairs, indices, progress=False).concept_directions()["hidden"]
    neutral = _WithNeutralRows(pairs, "a plain navy background")
    assert len(neutral) > len(pairs)
    with_neutral = encode_pairs(toy_model, neutral, list(range(len(neutral))), progress=False)
    torch.testing.assert_close(with_neutral.concept_directions()["hidden"], plain, atol=1e-6, rtol=1e-5)
    # the neutral rows are harmful pairs that carry their rewrite, so adversarial training attacks them
    extra = list(range(len(pairs), len(neutral)))
    assert bool(with_neutral.batch(extra).with_rewrite.all())
