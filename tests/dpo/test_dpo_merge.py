"""SafetyDPO: experts per category, and the exact average / activation-based merges."""

import copy

import pytest
import torch

from scdpo.dpo import ToyOraclePairs, TrainConfig
from scdpo.dpo.experts import collect_calibration_inputs, merge_loras, train_safetydpo_experts
from scdpo.errors import IncompatibleModelError
from scdpo.lora import apply_lora, kohya_names_for_unet, load_lora, save_lora
from scdpo.toy.model import ToyTextToImage


@pytest.fixture(scope="module")
def toy_model():
    return ToyTextToImage.from_scratch(0)


def _expert(unet, names, rank, alpha, seed, category, version="toy_v1"):
    """A kohya LoRA with random factors on ``names`` (shapes from the UNet)."""
    from scdpo.lora.naming import kohya_module_table

    table = kohya_module_table(unet)
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for n in names:
        mod = table[n][1]
        tensors[f"{n}.lora_down.weight"] = torch.randn(rank, mod.in_features, generator=g) * 0.1
        tensors[f"{n}.lora_up.weight"] = torch.randn(mod.out_features, rank, generator=g) * 0.1
        tensors[f"{n}.alpha"] = torch.tensor(alpha)
    return tensors, {"ss_base_model_version": version, "scdpo_category": category, "scdpo_beta": "500"}


def _delta(lora, name):
    down = lora.tensors[f"{name}.lora_down.weight"].float()
    up = lora.tensors[f"{name}.lora_up.weight"].float()
    return lora.alphas[name] / down.shape[0] * up @ down


@pytest.fixture()
def experts(tmp_path, toy_model):
    names = sorted(kohya_names_for_unet(toy_model.unet))
    a = save_lora(tmp_path / "gore.safetensors", *_expert(toy_model.unet, names, 2, 1.0, 1, "gore"))
    # the weapon expert lacks the last module: it counts as a zero delta there
    b = save_lora(tmp_path / "weapon.safetensors", *_expert(toy_model.unet, names[:-1], 3, 6.0, 2, "weapon"))
    return names, load_lora(a), load_lora(b)


def test_average_merge_is_the_mean_weight_delta(tmp_path, experts, toy_model):
    names, a, b = experts
    merged = merge_loras([a.path, b.path], "average", out=tmp_path / "avg.safetensors")
    assert merged.metadata["scdpo_method"] == "safetydpo-average" and merged.base_model_version == "toy_v1"
    assert merged.rank == 5 and merged.alpha == 5.0  # ranks stacked, host scale alpha/rank = 1
    for n in names[:-1]:
        torch.testing.assert_close(_delta(merged, n), (_delta(a, n) + _delta(b, n)) / 2, atol=1e-6, rtol=1e-5)
    last = names[-1]
    torch.testing.assert_close(_delta(merged, last), _delta(a, last) / 2, atol=1e-6, rtol=1e-5)
    apply_lora(copy.deepcopy(toy_model.unet), merged, base_model_version="toy_v1")  # every key fits the UNet


def test_activation_merge_without_calibration_keeps_the_larger_row(tmp_path, experts):
    names, a, b = experts
    merged = merge_loras([a.path, b.path], "activation")
    assert merged.metadata["scdpo_method"] == "safetydpo" and merged.metadata["scdpo_merge_calibrated"] == "False"
    picked_b = 0
    for n in names[:-1]:
        da, db = _delta(a, n), _delta(b, n)
        want = torch.where((db.norm(dim=1) > da.norm(dim=1))[:, None], db, da)
        picked_b += int((db.norm(dim=1) > da.norm(dim=1)).sum())
        torch.testing.assert_close(_delta(merged, n), want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(_delta(merged, names[-1]), _delta(a, names[-1]), atol=1e-6, rtol=1e-5)
    assert picked_b > 0  # both experts contribute rows


def test_activation_merge_with_calibration_uses_each_category_inputs(experts):
    names, a, b = experts
    g = torch.Generator().manual_seed(9)
    n0 = names[0]
    d_in = a.tensors[f"{n0}.lora_down.weight"].shape[1]
    calib = {"gore": {n0: torch.randn(50, d_in, generator=g)}, "weapon": {n0: torch.randn(40, d_in, generator=g) * 3}}
    merged = merge_loras([a, b], "activation", calibration=calib)
    da, db = _delta(a, n0), _delta(b, n0)
    act_a = (calib["gore"][n0] @ da.T).abs().mean(0)
    act_b = (calib["weapon"][n0] @ db.T).abs().mean(0)
    want = torch.where((act_b > act_a)[:, None], db, da)
    torch.testing.assert_close(_delta(merged, n0), want, atol=1e-6, rtol=1e-5)
    assert merged.metadata["scdpo_merge_calibrated"] == "True"
    with pytest.raises(ValueError, match="no calibration inputs"):
        merge_loras([a, b], "activation", calibration={"gore": {}})


def test_merge_refuses_mixed_base_models(tmp_path, experts, toy_model):
    names, a, _ = experts
    other = save_lora(tmp_path / "sd.safetensors", *_expert(toy_model.unet, names[:2], 2, 2.0, 3, "gore", "sd_v1"))
    with pytest.raises(IncompatibleModelError, match="different base models"):
        merge_loras([a.path, other], "average")


def test_calibration_inputs_are_recorded_per_category(toy_model):
    pairs = ToyOraclePairs(40, seed=1)
    names = sorted(kohya_names_for_unet(toy_model.unet))[:3]
    calib = collect_calibration_inputs(toy_model, pairs, ["gore", "weapon"], names, pairs_per_category=3)
    assert set(calib) == {"gore", "weapon"}
    for cat in calib:
        for n in names:
            x = calib[cat][n]
            assert x.ndim == 2 and 0 < x.shape[0] <= 1024 and torch.isfinite(x).all()
    assert not torch.equal(calib["gore"][names[0]], calib["weapon"][names[0]])


def test_experts_train_on_their_category_with_plain_dpo(tmp_path, toy_model):
    pairs = ToyOraclePairs(30, seed=2)
    cfg = TrainConfig(out=str(tmp_path), name="sd", steps=1, batch_size=2, rank=2, alpha=2.0, checkpoint_every=0,
                      lam=0.7, gamma=2.0)
    paths = train_safetydpo_experts(cfg, ["gore", "nudity"], model=copy.deepcopy(toy_model), dataset=pairs,
                                    progress=False)
    assert set(paths) == {"gore", "nudity"}
    for cat, path in paths.items():
        meta = load_lora(path).metadata
        assert path.name == f"sd_expert_{cat}.safetensors"
        assert meta["scdpo_method"] == "safetydpo-expert" and meta["scdpo_category"] == cat
        assert float(meta["scdpo_lambda"]) == 0.0 and float(meta["scdpo_gamma"]) == 0.0
    n_gore = sum(1 for r in pairs.rows if r["category"] == "gore")
    from scdpo.dpo import summary_of

    assert summary_of(paths["gore"])["pairs"] == n_gore
