"""The cost model's public API: checkpoint round trip, backbone checks, scoring inputs, CLIP, NudeNet."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from scdpo.cost import (
    CostScorer,
    SafetyCostModel,
    load_backbone,
    load_clip_vision,
    load_cost_model,
    load_safety_cost_model,
)
from scdpo.cost.backbones import infer_clip_vision_config
from scdpo.cost.model import read_cost_checkpoint
from scdpo.cost.training import CostTrainConfig, auroc, calibrate_threshold, train_cost_model
from scdpo.errors import IncompatibleModelError, InputFileError, WeightsFormatError
from scdpo.fileio import load_safetensors, save_safetensors_atomic


def _tiny_model(encoder, threshold=0.25):
    torch.manual_seed(3)
    return SafetyCostModel(encoder, ["gore", "nudity", "weapon"], feature_dim=16, threshold=threshold)


def test_checkpoint_round_trip_gives_identical_costs_and_metadata(tmp_path, random_toy_encoder):
    model = _tiny_model(random_toy_encoder)
    path = tmp_path / "cost.safetensors"
    model.save(path, training={"data": {"n": 7}}, target_fpr=0.05)
    tensors, meta = read_cost_checkpoint(path)
    assert meta["categories"] == ["gore", "nudity", "weapon"]
    assert meta["threshold"] == pytest.approx(0.25)
    assert meta["embed_dim"] == 128 and meta["backbone_kind"] == "toy"
    assert meta["training"] == {"data": {"n": 7}} and meta["format_version"] == 1
    assert tensors["backbone.probe"].shape == (4, 128)

    images = torch.rand(5, 32, 32, 3)
    loaded = load_safety_cost_model(path)
    before = CostScorer(model).score(images)
    after = CostScorer(loaded).score(images)
    torch.testing.assert_close(before.per_category, after.per_category)
    assert after.threshold == pytest.approx(0.25)


def test_cost_result_fields_are_consistent(random_toy_encoder):
    scorer = CostScorer(_tiny_model(random_toy_encoder, threshold=0.0))
    res = scorer.score(torch.rand(6, 32, 32, 3), batch_size=4)
    assert res.per_category.shape == (6, 3) and res.cost.shape == (6,)
    torch.testing.assert_close(res.cost, res.per_category.max(-1).values)
    assert torch.equal(res.unsafe, res.cost > res.threshold)
    assert torch.equal(res.probability > 0.5, res.unsafe)
    torch.testing.assert_close(res.probability, torch.sigmoid(res.cost - res.threshold))


def test_pil_list_numpy_and_tensor_inputs_score_the_same(random_toy_encoder):
    scorer = CostScorer(_tiny_model(random_toy_encoder))
    arr = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    as_tensor = torch.from_numpy(arr).float() / 255
    from_tensor = scorer.score(as_tensor).cost
    from_pil = scorer.score([Image.fromarray(a) for a in arr]).cost
    from_numpy = scorer.score(list(arr)).cost
    torch.testing.assert_close(from_tensor, from_pil)
    torch.testing.assert_close(from_tensor, from_numpy)
    # Other sizes and RGBA are accepted (resized / alpha dropped).
    big = Image.fromarray(np.zeros((64, 48, 4), np.uint8), "RGBA")
    assert scorer.score([big]).cost.shape == (1,)


def test_progress_callback_reports_every_batch(random_toy_encoder):
    calls = []
    CostScorer(_tiny_model(random_toy_encoder)).score(torch.rand(5, 32, 32, 3), batch_size=2,
                                                      progress=lambda d, t: calls.append((d, t)))
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_other_toy_encoder_weights_are_refused(tmp_path, random_toy_encoder):
    from scdpo.cost.toy_encoder import ToyImageEncoder, save_toy_encoder

    path = tmp_path / "cost.safetensors"
    _tiny_model(random_toy_encoder).save(path)
    torch.manual_seed(99)
    other = ToyImageEncoder()
    with pytest.raises(IncompatibleModelError, match="other weights"):
        load_safety_cost_model(path, backbone=other)
    enc_file = tmp_path / "enc.safetensors"
    save_toy_encoder(enc_file, random_toy_encoder)
    assert isinstance(load_safety_cost_model(path, backbone=enc_file), SafetyCostModel)  # the right one loads


def test_clip_backbone_mismatch_names_both_backbones(tmp_path, clip_folder, random_toy_encoder):
    path = tmp_path / "cost.safetensors"
    _tiny_model(random_toy_encoder).save(path)
    with pytest.raises(IncompatibleModelError, match=r"toy-encoder.*clip-vision"):
        load_safety_cost_model(path, backbone=clip_folder)


def test_clip_cost_model_needs_its_backbone(tmp_path, clip_folder):
    enc = load_clip_vision(clip_folder)
    path = tmp_path / "clip_cost.safetensors"
    SafetyCostModel(enc, ["nudity"], feature_dim=8).save(path)
    tensors, _ = load_safetensors(path)
    assert not any(k.startswith("encoder.") for k in tensors)  # CLIP weights are never copied in
    with pytest.raises(IncompatibleModelError, match="--backbone"):
        load_cost_model(path)
    scorer = load_cost_model(path, backbone=clip_folder)
    assert scorer.categories == ["nudity"]


def test_clip_single_file_and_folder_give_the_same_embeddings(tmp_path, clip_folder):
    from_folder = load_clip_vision(clip_folder)
    tensors, _ = load_safetensors(clip_folder / "model.safetensors")
    single = tmp_path / "clip_vision_small.safetensors"
    save_safetensors_atomic(tensors, single)  # no config: inferred from shapes
    from_file = load_backbone(single)
    assert from_file.backbone_id == from_folder.backbone_id
    imgs = torch.rand(3, 40, 50, 3)
    torch.testing.assert_close(from_folder.encode(imgs), from_file.encode(imgs))
    cfg = infer_clip_vision_config(tensors)
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["image_size"], cfg["projection_dim"]) == (128, 2, 32, 48)


def test_clip_loader_errors_are_clear(tmp_path):
    with pytest.raises(InputFileError, match="not found"):
        load_clip_vision(tmp_path / "nope")
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04junk")
    with pytest.raises(InputFileError, match="pickled"):
        load_clip_vision(folder)
    not_clip = tmp_path / "unet.safetensors"
    save_safetensors_atomic({"down.weight": torch.zeros(2, 2)}, not_clip)
    with pytest.raises(IncompatibleModelError, match="no CLIP vision weights"):
        load_clip_vision(not_clip)


def test_clip_head_trains_on_a_few_dozen_images_and_scores_a_folder(tmp_path, clip_folder):
    """Offline: random CLIP vision from disk → train a head on 48 images → `scdpo score` a folder."""
    from scdpo.cli import main

    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for i in range(24):  # "unsafe" = saturated red squares, "safe" = dark blue noise
        img = rng.integers(0, 60, (40, 40, 3), dtype=np.uint8)
        (root / "safe").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "safe" / f"{i}.png")
        red = img.copy()
        red[8:32, 8:32] = (230, 20, 20)
        (root / "unsafe" / "redness").mkdir(parents=True, exist_ok=True)
        Image.fromarray(red).save(root / "unsafe" / "redness" / f"{i}.png")
    out = tmp_path / "clip_cost.safetensors"
    rc = main(["cost", "train", "--images", str(root), "--backbone", str(clip_folder), "--out", str(out),
               "--head-steps", "150", "--cache-dir", str(tmp_path / "cache"), "--target-fpr", "0.0", "--json"])
    assert rc == 0 and out.exists()
    _, meta = read_cost_checkpoint(out)
    assert meta["categories"] == ["redness"] and meta["backbone_kind"] == "clip"
    assert meta["training"]["data"]["labels"] == "folders"
    scores = tmp_path / "scores.json"
    rc = main(["cost", "score", str(root / "unsafe"), str(root / "safe"), "--cost-model", str(out), "--backbone",
               str(clip_folder), "--out", str(scores)])
    assert rc == 0
    rows = json.loads(scores.read_text())["images"]
    assert len(rows) == 48
    red = np.array([r["cost"] for r in rows if "unsafe" in r["path"]])
    safe = np.array([r["cost"] for r in rows if "/safe/" in r["path"]])
    assert auroc(torch.tensor(np.r_[red, safe]), torch.tensor([1] * 24 + [0] * 24)) > 0.9


def test_training_on_renders_separates_motifs_from_near_misses(toy_render_examples):
    cfg = CostTrainConfig(steps=200, target_fpr=0.02)
    shipped_encoder = load_backbone(None)  # weights/toy_encoder.safetensors
    model, report = train_cost_model(toy_render_examples, shipped_encoder, cfg, progress=False)
    assert report["categories"] == ["gore", "nudity", "weapon"]
    assert report["test"]["auroc"] > 0.95
    assert report["calibration"]["fpr"] <= 0.03  # calibrated at 2 % on the calibration split
    assert report["objectives"] == ["contrastive", "ranking", "anchoring"]


def test_calibrated_threshold_meets_the_target_rate():
    costs = torch.linspace(-3, 3, 200)
    for fpr in (0.0, 0.01, 0.05, 0.3):
        t = calibrate_threshold(costs, fpr)
        assert int((costs > t).sum()) == int(fpr * 200)  # exactly floor(fpr·n) false positives
    assert auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == pytest.approx(0.75)
    assert auroc(torch.tensor([1.0, 1.0]), torch.tensor([0, 1])) == pytest.approx(0.5)


def test_corrupt_and_foreign_checkpoints_raise_typed_errors(tmp_path, random_toy_encoder):
    good = tmp_path / "good.safetensors"
    _tiny_model(random_toy_encoder).save(good)
    data = good.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsFormatError):
        load_cost_model(tmp_path / "trunc.safetensors")
    lora = tmp_path / "lora.safetensors"
    save_safetensors_atomic({"x": torch.zeros(1)}, lora, {"ss_network_module": "networks.lora"})
    with pytest.raises(WeightsFormatError, match="not a safety cost model"):
        load_cost_model(lora)
    with pytest.raises(InputFileError, match="not found"):
        load_cost_model(tmp_path / "missing.safetensors")


def test_nudenet_scores_are_costs_and_preprocessing_matches_nudenet():
    pytest.importorskip("nudenet")
    import nudenet.nudenet as impl

    from scdpo.cost.nudenet_backend import NudeNetScorer, preprocess_rgb

    rgb = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    ours = preprocess_rgb(rgb)
    theirs = impl._read_image(np.ascontiguousarray(rgb[..., ::-1]), 320)[0]  # NudeNet reads BGR arrays
    np.testing.assert_allclose(ours, theirs, atol=1 / 255 + 1e-6)

    scorer = load_cost_model("nudenet")
    assert isinstance(scorer, NudeNetScorer) and scorer.categories == ["nudity"]
    res = scorer.score(torch.rand(2, 64, 64, 3))
    assert res.per_category.shape == (2, 1)
    assert (res.cost < scorer.threshold).all()  # random noise shows no exposed body parts
    assert scorer.weak_labels(torch.rand(1, 32, 32, 3)) == [None]


def test_training_is_deterministic_whatever_ran_before(make_render_examples):
    examples = make_render_examples(60, 30, 30, seed=5)
    encoder = load_backbone(None)
    cfg = CostTrainConfig(steps=30)
    _, first = train_cost_model(examples, encoder, cfg, progress=False)
    torch.rand(1000)  # consume the global RNG
    _, second = train_cost_model(examples, encoder, cfg, progress=False)
    assert first["threshold"] == second["threshold"]
    assert first["test"] == pytest.approx(second["test"], nan_ok=True)
