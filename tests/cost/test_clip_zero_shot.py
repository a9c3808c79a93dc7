"""The CLIP zero-shot cost scorer: loading a full CLIP offline (transformers folder, hub cache, open_clip
file), its costs, the combined NudeNet + CLIP scorer, weak labels for `scdpo cost train`, and the
one-line refusals of every other kind of file."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from clip_world import (BLUE_PROMPT, RED_PROMPT, build_aligned_clip, red_and_blue, to_open_clip,
                        write_open_clip_config)
from scdpo.cost import load_clip_vision, load_cost_model
from scdpo.cost.clip_model import load_clip_model
from scdpo.cost.clip_setup import missing_clip_help
from scdpo.cost.data import weak_label_manifest
from scdpo.cost.scorer import CombinedScorer, make_result
from scdpo.cost.training import auroc
from scdpo.cost.zero_shot import CONCEPT_PROMPTS, ZeroShotClipScorer
from scdpo.errors import IncompatibleModelError, ScdpoError, WeightsFormatError
from scdpo.fileio import load_safetensors, save_safetensors_atomic

UNSAFE = [t for u, _ in CONCEPT_PROMPTS.values() for t in u]
SAFE = [t for _, s in CONCEPT_PROMPTS.values() for t in s]


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    """Every unsafe concept prompt (and "a red square") embeds onto the red image, every safe one (and
    "a blue circle") onto the blue image."""
    return build_aligned_clip(tmp_path_factory.mktemp("clip") / "aligned", [RED_PROMPT] + UNSAFE, [BLUE_PROMPT] + SAFE)


@pytest.fixture(scope="module")
def clip(aligned):
    return load_clip_model(aligned.folder)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    red, blue = red_and_blue(n, seed)
    return torch.from_numpy(np.concatenate([red, blue])).float() / 255


def test_cost_is_the_log_odds_of_the_prompt_sets_and_flips_when_they_swap(aligned, clip):
    cos_red_blue = float(aligned.e_red @ aligned.e_blue)
    expected = aligned.logit_scale * (1 - cos_red_blue)  # red image: τ·(cos(red, U) − cos(red, S))
    scorer = ZeroShotClipScorer(clip, {"gore": ((RED_PROMPT,), (BLUE_PROMPT,))})
    result = scorer.score(_images(1))
    assert result.categories == ["gore"] and result.threshold == 0.0
    assert result.per_category[:, 0].tolist() == pytest.approx([expected, -expected], abs=1e-3)
    assert result.unsafe.tolist() == [True, False]
    swapped = ZeroShotClipScorer(clip, {"gore": ((BLUE_PROMPT,), (RED_PROMPT,))}).score(_images(1))
    torch.testing.assert_close(swapped.per_category, -result.per_category, atol=1e-4, rtol=0)
    assert swapped.unsafe.tolist() == [False, True]


def test_default_concepts_cover_the_prompt_set_categories_through_load_cost_model(aligned):
    scorer = load_cost_model(f"clip-zero-shot:{aligned.folder}")
    assert scorer.categories == ["gore", "weapon", "nudity"] and scorer.name == "clip-zero-shot:aligned"
    result = scorer.score(_images(4, seed=1))
    assert result.unsafe.tolist() == [True] * 4 + [False] * 4  # noisy red variants unsafe, blue safe
    assert (result.cost[:4] > 5).all() and (result.cost[4:] < -5).all()
    same = load_cost_model("clip-zero-shot", backbone=str(aligned.folder))  # the path from --backbone
    torch.testing.assert_close(same.score(_images(4, seed=1)).cost, result.cost)
    with pytest.raises(ScdpoError, match="drop --backbone"):
        load_cost_model(f"clip-zero-shot:{aligned.folder}", backbone="/elsewhere")


def test_calibration_fits_scale_and_bias_per_category(clip):
    scorer = ZeroShotClipScorer(clip, {"gore": ((RED_PROMPT,), (BLUE_PROMPT,))})
    images = _images(6, seed=2)
    raw = scorer.raw_logits(images)[:, 0]
    fitted = scorer.calibrate(images, ["gore"] * 6 + [None] * 6)
    a, b = fitted["gore"]
    assert a > 0  # the labelled order agrees with the raw logits
    torch.testing.assert_close(scorer.score(images).per_category[:, 0], a * raw + b, atol=1e-4, rtol=0)
    assert scorer.score(images).unsafe.tolist() == [True] * 6 + [False] * 6


def test_open_clip_file_and_hub_cache_give_the_transformers_folders_numbers(aligned, clip, tmp_path):
    tensors, _ = load_safetensors(aligned.folder / "model.safetensors")
    oc_dir = tmp_path / "oc"
    oc_dir.mkdir()
    save_safetensors_atomic(to_open_clip(tensors), oc_dir / "tiny-open-clip.safetensors")
    write_open_clip_config(oc_dir / "open_clip_config.json")  # head counts: not in the weights
    from_oc = load_clip_model(oc_dir / "tiny-open-clip.safetensors")
    images, texts = _images(2), [RED_PROMPT, BLUE_PROMPT, "a photo of a cat"]
    torch.testing.assert_close(from_oc.image_embeddings(images), clip.image_embeddings(images), atol=1e-5, rtol=0)
    torch.testing.assert_close(from_oc.text_embeddings(texts), clip.text_embeddings(texts), atol=1e-5, rtol=0)
    assert from_oc.logit_scale == pytest.approx(clip.logit_scale)
    # the vision tower of either is the same cost-model backbone
    assert load_clip_vision(oc_dir / "tiny-open-clip.safetensors").backbone_id == \
        load_clip_vision(aligned.folder).backbone_id == clip.vision.backbone_id

    repo = tmp_path / "hub" / "models--openai--clip-vit-large-patch14"  # huggingface_hub's cache layout
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name, blob in (("config.json", "c0ffee"), ("model.safetensors", "beef")):
        (repo / "blobs" / blob).write_bytes((aligned.folder / name).read_bytes())
        os.symlink(f"../../blobs/{blob}", repo / "snapshots" / commit / name)
    for path in (repo, repo / "snapshots" / commit):
        torch.testing.assert_close(load_clip_model(path).text_embeddings(texts), clip.text_embeddings(texts))


class _StubNudity:
    categories, threshold, name, device = ["nudity"], 1.5, "stub NudeNet", torch.device("cpu")

    def score(self, images, batch_size=16, progress=None):
        return make_result(torch.full((len(images), 1), 2.0), self.categories, self.threshold)

    def to(self, device=None, dtype=None):
        return self


def test_nudenet_plus_zero_shot_takes_nudity_from_nudenet(aligned, monkeypatch):
    import scdpo.cost.nudenet_backend as backend

    monkeypatch.setattr(backend, "NudeNetScorer", _StubNudity)
    combined = load_cost_model(f"nudenet+clip-zero-shot:{aligned.folder}")
    assert isinstance(combined, CombinedScorer)
    assert combined.categories == ["nudity", "gore", "weapon"] and combined.threshold == 0.0
    images = _images(1)  # one red, one blue
    result = combined.score(images)
    zero_shot = load_cost_model(f"clip-zero-shot:{aligned.folder}").score(images)
    assert result.per_category[:, 0].tolist() == pytest.approx([0.5, 0.5])  # NudeNet's 2.0 − its threshold 1.5
    torch.testing.assert_close(result.per_category[:, 1:], zero_shot.per_category[:, :2])
    # red: gore and weapon prompts both embed onto it, so their scores tie (float noise picks one) and
    # either beats the stub's nudity; blue: only the stub's nudity is above 0
    assert float(zero_shot.per_category[0, 0]) == pytest.approx(float(zero_shot.per_category[0, 1]), abs=1e-3)
    red, blue = combined.weak_labels(images)
    assert red in ("gore", "weapon") and blue == "nudity"


def test_weak_labels_of_candidates_train_a_cost_head(aligned, clip, tmp_path):
    from scdpo.cli import main
    from scdpo.cost.model import read_cost_checkpoint

    red, blue = red_and_blue(12, seed=3)
    candidates = list(red) + list(blue)  # uint8 arrays, as a recipe's sampler returns them
    scorer = ZeroShotClipScorer(clip, {"gore": ((RED_PROMPT,), (BLUE_PROMPT,))})
    summary = weak_label_manifest(candidates, scorer, tmp_path / "weak", groups=[f"prompt {i % 12}" for i in range(24)])
    assert summary["labels"] == {"gore": 12, "safe": 12} and summary["uncertain"] == 0
    lines = summary["manifest"].read_text().splitlines()
    assert lines[0] == "path,label,group" and lines[1] == "images/00000.png,gore,prompt 0"
    assert np.array_equal(np.asarray(Image.open(tmp_path / "weak" / "images" / "00013.png")), blue[1])
    assert weak_label_manifest(candidates, scorer, tmp_path / "none", min_margin=1e3)["uncertain"] == 24

    out = tmp_path / "cost.safetensors"
    rc = main(["cost", "train", "--images", str(summary["manifest"]), "--backbone", str(aligned.folder),
               "--out", str(out), "--head-steps", "60", "--cache-dir", str(tmp_path / "cache"), "--target-fpr", "0"])
    assert rc == 0
    _, meta = read_cost_checkpoint(out)
    assert meta["categories"] == ["gore"] and meta["backbone_kind"] == "clip"
    costs = load_cost_model(out, backbone=aligned.folder).score(_images(8, seed=4)).cost
    assert auroc(costs, torch.tensor([1] * 8 + [0] * 8)) == 1.0

    folder = tmp_path / "unlabelled"  # the same through `--weak-label` on a folder of images
    folder.mkdir()
    for i, img in enumerate(candidates):
        Image.fromarray(img).save(folder / f"{i:02d}.png")
    rc = main(["cost", "train", "--images", str(folder), "--weak-label", "clip-zero-shot",
               "--backbone", str(aligned.folder), "--out", str(out), "--head-steps", "30",
               "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    _, meta = read_cost_checkpoint(out)
    assert meta["training"]["data"]["labels"] == "clip-zero-shot:aligned"
    assert set(meta["categories"]) <= {"gore", "weapon", "nudity"}


@pytest.fixture(scope="module")
def wrong_files(aligned, tmp_path_factory):
    root = tmp_path_factory.mktemp("wrong")
    tensors, _ = load_safetensors(aligned.folder / "model.safetensors")
    vision = {k: v for k, v in tensors.items() if k.startswith(("vision_model.", "visual_projection."))}
    save_safetensors_atomic(vision, root / "clip_vision_g.safetensors")
    save_safetensors_atomic({k: v for k, v in tensors.items() if k.startswith("text_model.")},
                            root / "clip_l.safetensors")
    save_safetensors_atomic({"model.diffusion_model.out.0.weight": torch.zeros(2),
                             "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(2)},
                            root / "sd15.safetensors")
    save_safetensors_atomic({"lora_unet_down_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(2, 2)},
                            root / "lora.safetensors")
    (root / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    (root / "pickle.safetensors").write_bytes(b"\x80\x04\x95junk" + bytes(64))
    return root


def test_a_vision_only_file_is_refused_with_one_clear_line(wrong_files, capsys):
    from scdpo.cli import main

    path = wrong_files / "clip_vision_g.safetensors"
    expected = (f"{path} holds only CLIP's vision tower (a models/clip_vision/ file) and no text tower, so it "
                "cannot compare images with prompts; pass a full CLIP model instead: a transformers folder "
                "(config.json + model.safetensors) such as openai/clip-vit-large-patch14, or an open_clip "
                ".safetensors file")
    with pytest.raises(IncompatibleModelError) as info:
        load_cost_model(f"clip-zero-shot:{path}")
    assert str(info.value) == expected
    assert load_clip_vision(path).embed_dim == 16  # still a good cost-model backbone
    image = wrong_files / "img.png"
    Image.fromarray(red_and_blue(1)[0][0]).save(image)
    assert main(["cost", "score", str(image), "--cost-model", f"clip-zero-shot:{path}"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {expected}\n"


@pytest.mark.parametrize("name, error, says", [
    ("clip_l.safetensors", IncompatibleModelError, "only a CLIP text encoder"),
    ("sd15.safetensors", IncompatibleModelError, "it is a Stable Diffusion checkpoint"),
    ("lora.safetensors", IncompatibleModelError, "it is a LoRA"),
    ("corrupt.safetensors", WeightsFormatError, "not valid JSON"),
    ("pickle.safetensors", WeightsFormatError, "pickled PyTorch checkpoint, which is never loaded"),
    ("missing.safetensors", ScdpoError, "not found"),
])
def test_every_other_kind_of_file_gets_one_line(wrong_files, name, error, says):
    with pytest.raises(error) as info:
        load_clip_model(wrong_files / name)
    message = str(info.value)
    assert says in message and "\n" not in message and str(wrong_files / name) in message


def test_the_no_clip_help_says_what_to_put_where():
    text = missing_clip_help(comfyui="/srv/ComfyUI", nudenet=False)
    assert "/srv/ComfyUI/models/clip_vision/clip-vit-large-patch14/config.json and model.safetensors" in text
    assert "stable-diffusion-webui/models/scdpo/clip-vit-large-patch14/" in text
    assert "models--openai--clip-vit-large-patch14" in text
    assert '- nudity: NudeNet would cover it: pip install "scdpo-safe-diffusion[nudenet]"' in text
    assert "- gore: not covered without CLIP" in text and "- weapon: not covered without CLIP" in text
    assert "- nudity: covered by NudeNet (installed)" in missing_clip_help(nudenet=True)
