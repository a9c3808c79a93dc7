"""The CLIP reward for `scdpo data build --reward clip:PATH`: CLIP-score of each candidate against its
prompt, from a full CLIP model on disk, offline; the wrong kind of file is one line."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scdpo.errors import IncompatibleModelError, ScdpoError
from scdpo.fileio import load_safetensors, save_safetensors_atomic
from scdpo.scp.builder import PromptSpec
from scdpo.scp.rewards import CallableReward, ClipReward, make_reward


def _clip_world():
    """tests/cost/clip_world.py (shared with the zero-shot tests), imported by path."""
    if "clip_world" not in sys.modules:
        path = Path(__file__).parents[1] / "cost" / "clip_world.py"
        spec = importlib.util.spec_from_file_location("clip_world", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["clip_world"] = module
        spec.loader.exec_module(module)
    return sys.modules["clip_world"]


clip_world = _clip_world()
RED, BLUE = clip_world.RED_PROMPT, clip_world.BLUE_PROMPT


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    """"a red square" embeds exactly onto the red image's embedding, "a blue circle" onto the blue one's."""
    return clip_world.build_aligned_clip(tmp_path_factory.mktemp("clip") / "clip-vit-tiny", [RED], [BLUE])


def test_the_reward_prefers_the_image_its_prompt_describes(aligned):
    reward = make_reward(f"clip:{aligned.folder}")
    assert isinstance(reward, ClipReward) and reward.name == "clip:clip-vit-tiny"
    red, blue = clip_world.red_and_blue(3, seed=5)
    images = torch.from_numpy(np.concatenate([red, blue])).float() / 255  # [6,32,32,3] 0..1
    cos = float(aligned.e_red @ aligned.e_blue)  # computed by transformers directly
    to_red = reward.score(images, [PromptSpec(RED, False)] * 6)  # PromptSpecs, as the builder passes them
    to_blue = reward.score(images, [BLUE] * 6)  # or plain strings
    assert to_red.dtype == torch.float64 and to_red.shape == (6,)
    assert to_red[0] == pytest.approx(100.0, abs=1e-3) and to_blue[3] == pytest.approx(100.0, abs=1e-3)
    assert to_red[3] == pytest.approx(100 * cos, abs=1e-3) and to_blue[0] == pytest.approx(100 * cos, abs=1e-3)
    assert (to_red[:3] > to_red[3:].max() + 10).all() and (to_blue[3:] > to_blue[:3].max() + 10).all()
    mixed = reward.score(images[[0, 3]], [BLUE, RED])  # each image against its own prompt
    assert mixed.tolist() == pytest.approx([100 * cos, 100 * cos], abs=1e-3)


def test_reward_specs(aligned, tmp_path):
    assert isinstance(make_reward(str(aligned.folder)), ClipReward)  # a bare CLIP folder is recognised
    assert isinstance(make_reward("os.path:join"), CallableReward)
    with pytest.raises(ScdpoError, match=r"clip:PATH"):
        make_reward("clip")
    with pytest.raises(ScdpoError, match="not found"):
        make_reward(str(tmp_path / "nope.safetensors"))


def test_a_vision_only_file_is_refused_with_one_clear_line(aligned, tmp_path):
    tensors, _ = load_safetensors(aligned.folder / "model.safetensors")
    path = tmp_path / "clip_vision_h.safetensors"
    save_safetensors_atomic({k: v for k, v in tensors.items() if k.startswith(("vision_model.", "visual_projection."))},
                            path)
    with pytest.raises(IncompatibleModelError) as info:
        make_reward(f"clip:{path}")
    assert str(info.value) == (
        f"{path} holds only CLIP's vision tower (a models/clip_vision/ file) and no text tower, so it cannot compare "
        "images with prompts; pass a full CLIP model instead: a transformers folder (config.json + model.safetensors) "
        "such as openai/clip-vit-large-patch14, or an open_clip .safetensors file")


@pytest.mark.parametrize("content, says", [(b"\x20\x00\x00\x00\x00\x00\x00\x00" + b"garbage" * 3, "truncated"),
                                           (b"PK\x03\x04" + bytes(40), "pickled")])
def test_a_corrupt_reward_file_is_one_line_from_the_cli(tmp_path, capsys, content, says):
    from scdpo.cli import main

    bad = tmp_path / "clip.safetensors"
    bad.write_bytes(content)
    rc = main(["data", "build", "--reward", f"clip:{bad}", "--n-prompts", "1", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert says in err and str(bad) in err
