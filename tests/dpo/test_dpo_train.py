"""The trainer on the toy world: outputs, reference = adapter disabled, exact resume, LoRA reload."""

import copy
import dataclasses
import json

import pytest
import torch
from diffusers.loaders import StableDiffusionLoraLoaderMixin

from scdpo.dpo import ToyOraclePairs, TrainConfig, load_train_config, select_pairs, summary_of, train_lora
from scdpo.dpo.pairs import PairOrder, collate_pairs
from scdpo.dpo.step import (TRAIN_ADAPTER, adapters_disabled, attach_training_lora, disabled_adapter_reference,
                            dpo_batch_loss, unet_call)
from scdpo.errors import DatasetError, ScdpoError
from scdpo.lora import apply_lora, load_lora

TINY = dict(steps=4, batch_size=2, rank=4, alpha=4.0, lr=1e-3, warmup_steps=1, checkpoint_every=2, log_every=1,
            beta=500.0, lam=0.5, gamma=1.0)


@pytest.fixture(scope="module")
def pairs():
    return ToyOraclePairs(24, seed=3)


def _inputs(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 12, 8, 8, generator=g), torch.tensor([3, 250, 600, 999][:n])


def test_reference_is_base_unet_with_adapter_disabled(toy_model):
    model = copy.deepcopy(toy_model)
    base = copy.deepcopy(model.unet).eval()
    params = attach_training_lora(model.unet, 4, 4.0, ["to_q", "to_k", "to_v", "to_out.0"], seed=0)
    with torch.no_grad():
        for p in params:
            p.add_(0.05)  # a non-zero LoRA changes the policy
    x, t = _inputs()
    with torch.no_grad():
        cond = model.encode_prompt(["a red square on a black background"] * 4)
    model.unet.eval()
    ref = disabled_adapter_reference(model.unet)(x, t, cond)
    torch.testing.assert_close(ref, unet_call(base)(x, t, cond), atol=0, rtol=0)
    policy = unet_call(model.unet)(x, t, cond)
    assert (policy - ref).abs().max() > 1e-3
    assert all(p.requires_grad for p in params)  # switching the adapter off and on keeps it trainable
    with adapters_disabled(model.unet):
        pass
    torch.testing.assert_close(unet_call(model.unet)(x, t, cond), policy, atol=0, rtol=0)


def test_winner_and_loser_share_noise_and_timestep(toy_model, pairs):
    """One batched forward of 2B samples; rows i and B+i get the same ε and t."""
    model = copy.deepcopy(toy_model)
    seen = {}

    def spy(noisy, t, cond):
        seen["t"], seen["noisy"], seen["n"] = t.clone(), noisy.clone(), len(cond)
        return torch.zeros_like(noisy)

    batch = collate_pairs([pairs[i] for i in range(3)])
    dpo_batch_loss(model, spy, spy, batch, torch.Generator().manual_seed(0), beta=100.0, lam=0.0, gamma=0.0)
    assert seen["n"] == 6 and torch.equal(seen["t"][:3], seen["t"][3:])
    sched = model.noise_scheduler
    lat = model.encode_images(torch.cat([batch.winners, batch.losers]))
    a = sched.alphas_cumprod[seen["t"]].sqrt().view(-1, 1, 1, 1)
    s = (1 - sched.alphas_cumprod[seen["t"]]).sqrt().view(-1, 1, 1, 1)
    eps = (seen["noisy"] - a * lat) / s
    torch.testing.assert_close(eps[:3], eps[3:], atol=1e-4, rtol=1e-4)


def test_train_writes_kohya_lora_config_and_logs(tmp_path, toy_model, pairs):
    model = copy.deepcopy(toy_model)
    cfg = TrainConfig(out=str(tmp_path), name="sc", **TINY)
    path = train_lora(cfg, model=model, dataset=pairs, progress=False)
    assert path == tmp_path / "sc.safetensors"
    lora = load_lora(path)
    meta = lora.metadata
    assert meta["ss_base_model_version"] == "toy_v1" and meta["ss_network_module"] == "networks.lora"
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "4"
    assert meta["scdpo_method"] == "sc-dpo" and float(meta["scdpo_beta"]) == 500.0
    assert float(meta["scdpo_lambda"]) == 0.5 and float(meta["scdpo_gamma"]) == 1.0
    assert "toy-oracle" in meta["scdpo_cost_model"]
    summary = summary_of(path)
    assert summary["steps"] == 4 and summary["pairs"] == 24 and 0 <= summary["implicit_accuracy_ema"] <= 1
    assert len(lora.module_names) == 56  # every attention projection of the toy UNet
    ups = [v for k, v in lora.tensors.items() if k.endswith("lora_up.weight")]
    assert max(float(u.abs().max()) for u in ups) > 0  # trained away from B = 0
    # resolved config beside the output, readable back; no training state left behind
    assert load_train_config(tmp_path / "sc.config.toml") == cfg
    assert not (tmp_path / "sc.state.safetensors").exists()
    events = list((tmp_path / "logs" / "sc").glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/implicit_accuracy", "train/reward_margin", "train/safety_margin",
            "train/focus_weight_max", "train/lr"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    # the caller's model is left as it was: no adapter, frozen
    assert not getattr(model.unet, "peft_config", None)
    assert not any(p.requires_grad for p in model.unet.parameters())


def test_lambda_zero_gamma_zero_is_diffusion_dpo_run(tmp_path, toy_model, pairs):
    cfg = TrainConfig(out=str(tmp_path), name="dd", **{**TINY, "lam": 0.0, "gamma": 0.0, "steps": 2})
    meta = load_lora(train_lora(cfg, model=copy.deepcopy(toy_model), dataset=pairs, progress=False)).metadata
    assert meta["scdpo_method"] == "diffusion-dpo"
    s = summary_of(tmp_path / "dd.safetensors")
    assert s["safety_margin_ema"] == 0.0 and s["focus_weight_min_ema"] == 1.0 == s["focus_weight_max_ema"]


def test_resume_from_checkpoint_gives_identical_lora(tmp_path, toy_model, pairs):
    cfg = TrainConfig(out=str(tmp_path / "a"), name="r", **{**TINY, "steps": 4, "grad_accum": 2})
    full = load_lora(train_lora(cfg, model=copy.deepcopy(toy_model), dataset=pairs, progress=False))
    cfg_b = dataclasses.replace(cfg, out=str(tmp_path / "b"))
    state = train_lora(cfg_b, model=copy.deepcopy(toy_model), dataset=pairs, progress=False, stop_after=3)
    assert state.name == "r.state.safetensors" and state.exists()
    assert not (tmp_path / "b" / "r.safetensors").exists()
    resumed = load_lora(train_lora(cfg_b, model=copy.deepcopy(toy_model), dataset=pairs, progress=False))
    assert set(full.tensors) == set(resumed.tensors)
    for k, v in full.tensors.items():
        assert torch.equal(v, resumed.tensors[k]), k
    assert summary_of(tmp_path / "a" / "r.safetensors")["loss_ema"] == summary_of(tmp_path / "b" / "r.safetensors")["loss_ema"]


def test_resume_refuses_changed_options(tmp_path, toy_model, pairs):
    cfg = TrainConfig(out=str(tmp_path), name="r", **TINY)
    train_lora(cfg, model=copy.deepcopy(toy_model), dataset=pairs, progress=False, stop_after=1)
    with pytest.raises(ScdpoError, match="beta"):
        train_lora(dataclasses.replace(cfg, beta=999.0), model=copy.deepcopy(toy_model), dataset=pairs, progress=False)
    # --no-resume starts over and finishes
    path = train_lora(dataclasses.replace(cfg, beta=999.0, resume=False, steps=1), model=copy.deepcopy(toy_model),
                      dataset=pairs, progress=False)
    assert path.exists()


def test_exported_lora_reloads_with_identical_outputs(tmp_path, toy_model, pairs):
    trained = copy.deepcopy(toy_model)
    path = train_lora(TrainConfig(out=str(tmp_path), name="x", **{**TINY, "train_proj": True, "train_ff": True}),
                      model=trained, dataset=pairs, progress=False, keep_adapter=True)
    assert TRAIN_ADAPTER in trained.unet.peft_config
    x, t = _inputs()
    with torch.no_grad():
        hidden = trained.encode_prompt(["a blue ring on a gray background"] * 4).hidden
        want = trained.unet(x, t, encoder_hidden_states=hidden).sample
        # through our loader (what the ComfyUI / A1111 adapters call)
        ours = copy.deepcopy(toy_model).unet
        apply_lora(ours, load_lora(path), base_model_version="toy_v1")
        got_ours = ours(x, t, encoder_hidden_states=hidden).sample
        # through diffusers' own kohya loader (a diffusers pipeline's load_lora_weights path)
        state_dict, alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(str(path))
        theirs = copy.deepcopy(toy_model).unet
        theirs.load_lora_adapter(state_dict, network_alphas=alphas, prefix="unet", adapter_name="safety")
        got_theirs = theirs(x, t, encoder_hidden_states=hidden).sample
        base = toy_model.unet(x, t, encoder_hidden_states=hidden).sample
    assert (want - base).abs().max() > 1e-4  # the LoRA does something
    torch.testing.assert_close(got_ours, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_theirs, want, atol=1e-5, rtol=1e-5)
    assert len(load_lora(path).module_names) == 56 + 14 + 14  # + proj_in/out and ff.net.0.proj/ff.net.2 of 7 blocks


def test_export_strength_travels_in_the_alpha_and_equals_the_host_weight(tmp_path, toy_model, pairs):
    with pytest.raises(ScdpoError, match="export_strength"):
        TrainConfig(export_strength=0.0).validate()
    cfg = TrainConfig(out=str(tmp_path / "a"), name="x", **TINY)
    plain = load_lora(train_lora(cfg, model=copy.deepcopy(toy_model), dataset=pairs, progress=False))
    # free to change on resume: the trajectory is the same, only the written alpha differs
    cfg_b = dataclasses.replace(cfg, out=str(tmp_path / "b"), export_strength=1.25)
    train_lora(dataclasses.replace(cfg_b, export_strength=1.0), model=copy.deepcopy(toy_model), dataset=pairs,
               progress=False, stop_after=2)
    path = train_lora(cfg_b, model=copy.deepcopy(toy_model), dataset=pairs, progress=False)
    strong = load_lora(path)
    assert set(strong.tensors) == set(plain.tensors)
    for k, v in plain.tensors.items():
        want = v * 1.25 if k.endswith(".alpha") else v
        assert torch.equal(strong.tensors[k], want), k
    assert strong.metadata["scdpo_export_strength"] == "1.25"
    x, t = _inputs()
    with torch.no_grad():
        hidden = toy_model.encode_prompt(["a red knife on a navy background"] * 4).hidden
        at_weight_1 = copy.deepcopy(toy_model).unet
        apply_lora(at_weight_1, strong, base_model_version="toy_v1")
        at_125 = copy.deepcopy(toy_model).unet
        apply_lora(at_125, plain, scale=1.25, base_model_version="toy_v1")
        at_1 = copy.deepcopy(toy_model).unet
        apply_lora(at_1, plain, base_model_version="toy_v1")
        got, want, weaker = (u(x, t, encoder_hidden_states=hidden).sample for u in (at_weight_1, at_125, at_1))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got - weaker).abs().max() > 1e-5


def test_category_filter_and_clean_pairs_switch(pairs):
    harmful = [i for i in range(len(pairs)) if pairs.rows[i]["is_harmful"]]
    gore = [i for i in harmful if pairs.rows[i]["category"] == "gore"]
    assert select_pairs(pairs) == list(range(len(pairs)))
    assert select_pairs(pairs, clean_pairs=False) == harmful
    assert select_pairs(pairs, ["gore"]) == gore and gore
    with pytest.raises(DatasetError, match="no harmful pairs of categories"):
        select_pairs(pairs, ["not-a-category"])


def test_pair_order_is_a_seeded_permutation_per_epoch():
    order = PairOrder([10, 11, 12, 13, 14], seed=7)
    epoch0 = [order.at(p) for p in range(5)]
    epoch1 = [order.at(p) for p in range(5, 10)]
    assert sorted(epoch0) == sorted(epoch1) == [10, 11, 12, 13, 14] and epoch0 != epoch1
    assert [PairOrder([10, 11, 12, 13, 14], seed=7).at(p) for p in range(10)] == epoch0 + epoch1
    # two processes never see the same pair in one micro-step
    assert set(order.batch(0, 0, 2, 2)).isdisjoint(order.batch(0, 1, 2, 2))


def test_toy_oracle_pairs_have_the_scp_item_schema(pairs):
    item = pairs[0]
    assert set(item) >= {"prompt", "winner", "loser", "winner_cost", "loser_cost", "is_harmful", "category"}
    assert item["winner"].shape == (16, 16, 3) and 0 <= float(item["winner"].min()) <= float(item["winner"].max()) <= 1
    for i in range(len(pairs)):
        it = pairs[i]
        if it["is_harmful"]:  # the winner is the safe rewrite, the loser shows the motif
            assert it["winner_cost"] < 0 < it["loser_cost"] and not torch.equal(it["winner"], it["loser"])
        else:
            assert it["winner_cost"] < 0 and it["loser_cost"] < 0
    kinds = {r["kind"] for r in pairs.rows}
    assert kinds == {"harmful", "clean", "near_miss"}
    assert json.dumps({k: v for k, v in item.items() if k not in ("winner", "loser")})


def test_gradient_checkpointing_gives_the_same_lora(tmp_path, toy_model, pairs):
    cfg = TrainConfig(out=str(tmp_path), name="plain", **{**TINY, "steps": 2})
    plain = load_lora(train_lora(cfg, model=copy.deepcopy(toy_model), dataset=pairs, progress=False))
    ckpt = load_lora(train_lora(dataclasses.replace(cfg, name="ckpt", gradient_checkpointing=True),
                                model=copy.deepcopy(toy_model), dataset=pairs, progress=False))
    for k, v in plain.tensors.items():
        torch.testing.assert_close(ckpt.tensors[k], v, atol=1e-6, rtol=1e-5)


def test_prompt_dropout_blanks_whole_pairs(toy_model, pairs):
    model = copy.deepcopy(toy_model)
    seen = []
    encode = model.encode_prompt
    model.encode_prompt = lambda prompts: seen.extend(prompts) or encode(prompts)
    batch = collate_pairs([pairs[i] for i in range(8)])
    zero = lambda noisy, t, cond: torch.zeros_like(noisy)  # noqa: E731
    dpo_batch_loss(model, zero, zero, batch, torch.Generator().manual_seed(0), 100.0, 0.0, 0.0, prompt_dropout=0.5)
    assert len(seen) == 8 and 0 < seen.count("") < 8  # one prompt per pair, shared by winner and loser
    assert all(s in ("", p) for s, p in zip(seen, batch.prompts))


def test_device_options_fail_clearly_on_cpu(tmp_path, toy_model, pairs):
    from scdpo.dpo.train import resolve_mixed_precision

    assert resolve_mixed_precision(TrainConfig(cpu=True)) == "no"
    with pytest.raises(ScdpoError, match="fp16 needs a CUDA GPU"):
        resolve_mixed_precision(TrainConfig(mixed_precision="fp16", cpu=True))
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(ScdpoError, match="adamw8bit needs bitsandbytes"):
            train_lora(TrainConfig(out=str(tmp_path), optimizer="adamw8bit", **{**TINY, "steps": 1}),
                       model=copy.deepcopy(toy_model), dataset=pairs, progress=False)


def test_second_round_starts_from_the_init_lora(tmp_path, toy_model, pairs):
    from scdpo.errors import IncompatibleModelError

    first = load_lora(train_lora(TrainConfig(out=str(tmp_path), name="first", **TINY), model=copy.deepcopy(toy_model),
                                 dataset=pairs, progress=False))
    assert any(float(v.abs().max()) > 1e-4 for k, v in first.tensors.items() if "lora_up" in k)
    # a learning rate of 1e-12 leaves the starting point in place: the init LoRA, not a fresh adapter
    still = dict(TINY, lr=1e-12, steps=1)
    cont = load_lora(train_lora(TrainConfig(out=str(tmp_path), name="cont", init_lora=str(tmp_path / "first.safetensors"),
                                            **still), model=copy.deepcopy(toy_model), dataset=pairs, progress=False))
    fresh = load_lora(train_lora(TrainConfig(out=str(tmp_path), name="fresh", **still), model=copy.deepcopy(toy_model),
                                 dataset=pairs, progress=False))
    assert set(cont.tensors) == set(first.tensors)
    for k, v in first.tensors.items():
        torch.testing.assert_close(cont.tensors[k], v, atol=1e-7, rtol=0)
    assert all(float(v.abs().max()) < 1e-9 for k, v in fresh.tensors.items() if "lora_up" in k)
    # a LoRA of another rank is refused with the flags to pass, and the model is left clean
    model = copy.deepcopy(toy_model)
    with pytest.raises(IncompatibleModelError, match="rank \\[4\\].*rank 8.*--rank, --alpha"):
        train_lora(TrainConfig(out=str(tmp_path), name="other", init_lora=str(tmp_path / "first.safetensors"),
                               **dict(TINY, rank=8, alpha=8.0)), model=model, dataset=pairs, progress=False)
    assert not (getattr(model.unet, "peft_config", None) or {})
