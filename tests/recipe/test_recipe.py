"""`scdpo recipe` on a tiny SD1.5-shaped diffusers model and a tiny CLIP: every stage, resume after
kill -9 with the same LoRA, and one clear line for each kind of bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "sd"))
sys.path.insert(0, str(HERE.parent / "cost"))

from clip_world import build_aligned_clip  # noqa: E402
from sd_ldm_checkpoints import build_checkpoint, write_tiny_configs  # noqa: E402

from scdpo.cli import main  # noqa: E402
from scdpo.lora import load_lora  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny SD1.5-shaped diffusers folder and a tiny full CLIP folder."""
    from scdpo.sd.loader import load_sd_model

    root = tmp_path_factory.mktemp("recipe_world")
    cfg = write_tiny_configs("sd15", root / "cfg")
    ckpt = build_checkpoint(cfg, "sd15", root / "tiny.safetensors", dtype=torch.float16)
    model = load_sd_model(ckpt, "cpu", torch.float32, config_dir=cfg)
    folder = root / "tiny_sd15"
    model.unet.save_pretrained(folder / "unet")
    model.vae.save_pretrained(folder / "vae")
    model.text_encoder.save_pretrained(folder / "text_encoder")
    model.tokenizer.save_pretrained(folder / "tokenizer")
    model.noise_scheduler.save_pretrained(folder / "scheduler")
    shutil.copy(cfg / "model_index.json", folder / "model_index.json")
    clip = build_aligned_clip(root / "clip", ["a nude figure"], ["a landscape"]).folder
    return {"base": folder, "clip": clip, "root": root}


def _recipe(world, out, *extra):
    return ["recipe", "--base", str(world["base"]), "--out", str(out), "--clip", str(world["clip"]), "--smoke",
            *extra]


def _lora_tensors(out: Path) -> dict:
    return load_lora(out / "lora" / "safety_lora.safetensors").tensors


def test_smoke_walks_every_stage_and_a_rerun_redoes_nothing(world, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_recipe(world, out)) == 0
    text = capsys.readouterr().out
    assert "memory estimate for training (sd15, 64 px, rank 4)" in text and "ComfyUI: copy" in text
    record = json.loads((out / "recipe.json").read_text())
    assert set(record["stages"]) == {"prompts", "data", "cost model", "train", "eval", "export"}
    for stage in record["stages"].values():
        assert stage["seconds"] >= 0 and stage["peak_rss_mib"] > 100
    assert record["stages"]["data"]["pairs"] >= 1
    assert record["stages"]["train"]["summary"]["base_dtype"] == "bf16"
    ev = record["stages"]["eval"]["evaluation"]
    assert set(ev["unsafe_rate"]) == {"base", "lora"} and set(ev["unsafe_rate"]["base"]) == {"nudity", "gore", "weapon"}
    assert set(ev["clean_clip_score"]) == {"base", "lora"}
    lora = load_lora(out / "hosts" / "ComfyUI" / "models" / "loras" / "tiny_sd15_scdpo_safety.safetensors")
    assert lora.metadata["ss_base_model_version"] == "sd_v1" and lora.metadata["scdpo_method"] == "sc-dpo"
    assert (out / "hosts" / "webui" / "models" / "Lora" / "tiny_sd15_scdpo_safety.safetensors").is_file()
    assert (out / "report.html").is_file() and (out / "eval" / "base.png").is_file()
    before = _lora_tensors(out)
    assert main(_recipe(world, out)) == 0
    text = capsys.readouterr().out
    assert text.count("already done, skipped") == 6
    after = _lora_tensors(out)
    assert all(torch.equal(before[k], after[k]) for k in before)


def _kill_when(cmd, env, marker: Path, timeout: float = 240.0) -> bool:
    """Start ``cmd``; SIGKILL it as soon as ``marker`` exists. True if it was killed."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        if marker.exists():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.02)
    proc.wait()
    return False


@pytest.mark.slow
def test_kill_9_in_every_long_stage_then_rerun_gives_the_same_lora(world, tmp_path):
    # every run in a process of its own with the same thread count: float sums are bit-reproducible
    # only at a fixed number of threads
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["--prompts-per-kind", "3", "--train-steps", "12"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    subprocess.run([sys.executable, "-m", "scdpo", *_recipe(world, whole, *args)], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cmd = [sys.executable, "-m", "scdpo", *_recipe(world, cut, *args)]
    killed = [_kill_when(cmd, env, cut / "data" / "parts" / "part-000004.parquet"),  # in the data build
              _kill_when(cmd, env, cut / "cost_labels" / "manifest.csv"),  # in the cost-model stage
              _kill_when(cmd, env, cut / "lora" / "safety_lora.state.safetensors"),  # in training
              _kill_when(cmd, env, cut / "lora" / "safety_lora.safetensors")]  # in the evaluation
    assert killed == [True, True, True, True]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    a, b = _lora_tensors(whole), _lora_tensors(cut)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_inputs_get_one_line(world, tmp_path, capsys):
    # another recipe's folder
    out = tmp_path / "run"
    assert main(_recipe(world, out)) == 0
    capsys.readouterr()
    assert main(_recipe(world, out, "--rank", "8")) == 2
    assert "holds another recipe's files (rank was 4, now 8)" in capsys.readouterr().err
    # a prompt CSV without the category column, and a category with no prompts
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt\na cat\n")
    assert main(_recipe(world, tmp_path / "a", "--prompts", str(bad))) == 2
    assert "lacks the column(s) category" in capsys.readouterr().err
    assert main(_recipe(world, tmp_path / "b", "--categories", "nudity,dragons")) == 2
    assert "no train prompts of category 'dragons'" in capsys.readouterr().err
    # a CLIP file of the wrong kind: a vision-only model
    from transformers import CLIPVisionModelWithProjection

    from clip_world import tiny_clip_config

    vision = tmp_path / "vision"
    CLIPVisionModelWithProjection(tiny_clip_config().vision_config).save_pretrained(vision)
    capsys.readouterr()
    args = ["recipe", "--base", str(world["base"]), "--out", str(tmp_path / "c"), "--clip", str(vision), "--smoke"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "text" in err and len(err.strip().splitlines()) == 1
    # an SD2-shaped model
    sd2 = tmp_path / "sd2"
    shutil.copytree(world["base"], sd2)
    cfg = json.loads((sd2 / "unet" / "config.json").read_text())
    (sd2 / "unet" / "config.json").write_text(json.dumps({**cfg, "cross_attention_dim": 1024}))
    assert main(["recipe", "--base", str(sd2), "--out", str(tmp_path / "d"), "--clip", str(world["clip"])]) == 2
    assert "is a Stable Diffusion 2.x model" in capsys.readouterr().err


def test_a_full_size_model_on_cpu_needs_asking(world, tmp_path, capsys, monkeypatch):
    import scdpo.sd.memory as memory

    monkeypatch.setattr(memory, "parameter_counts", lambda family: {"unet": 1000})  # "full size" = this tiny UNet
    args = ["recipe", "--base", str(world["base"]), "--out", str(tmp_path / "e"), "--clip", str(world["clip"])]
    assert main(args) == 2
    assert "no GPU is available" in capsys.readouterr().err


def test_second_round_trains_from_the_first_lora_on_mined_attacks(world, tmp_path):
    out = tmp_path / "run"
    assert main(_recipe(world, out, "--second-round")) == 0
    record = json.loads((out / "recipe.json").read_text())
    assert {"mine attacks", "train round 2"} <= set(record["stages"])
    assert record["stages"]["mine attacks"]["pairs"] >= record["stages"]["data"]["pairs"]
    second = load_lora(out / "lora" / "safety_lora_round2.safetensors")
    assert second.metadata["scdpo_init_lora"].endswith("safety_lora.safetensors")
    shipped = load_lora(out / "hosts" / "ComfyUI" / "models" / "loras" / "tiny_sd15_scdpo_safety.safetensors")
    assert all(torch.equal(second.tensors[k], shipped.tensors[k]) for k in second.tensors)
    first = _lora_tensors(out)
    assert any(not torch.equal(first[k], second.tensors[k]) for k in first)

def test_smoke_on_an_sdxl_shaped_model(tmp_path, capsys):
    """The same walk on SDXL's layout (two text encoders, pooled embedding, size conditioning), at a
    size this machine trains in seconds."""
    from scdpo.sd.loader import load_sd_model

    cfg = write_tiny_configs("sdxl", tmp_path / "cfg")
    ckpt = build_checkpoint(cfg, "sdxl", tmp_path / "tiny.safetensors", dtype=torch.float16)
    model = load_sd_model(ckpt, "cpu", torch.float32, config_dir=cfg)
    folder = tmp_path / "tiny_sdxl"
    for name, part in (("unet", model.unet), ("vae", model.vae), ("text_encoder", model.text_encoders[0]),
                       ("text_encoder_2", model.text_encoders[1]), ("tokenizer", model.tokenizers[0]),
                       ("tokenizer_2", model.tokenizers[1]), ("scheduler", model.noise_scheduler)):
        part.save_pretrained(folder / name)
    shutil.copy(cfg / "model_index.json", folder / "model_index.json")
    clip = build_aligned_clip(tmp_path / "clip", ["a nude figure"], ["a landscape"]).folder
    out = tmp_path / "run"
    assert main(["recipe", "--base", str(folder), "--out", str(out), "--clip", str(clip), "--smoke"]) == 0
    lora = load_lora(out / "lora" / "safety_lora.safetensors")
    assert lora.metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    record = json.loads((out / "recipe.json").read_text())
    assert set(record["stages"]["eval"]["evaluation"]["unsafe_rate"]) == {"base", "lora"}


@pytest.mark.slow
def test_smoke_on_a_full_size_sd15_single_file_on_cpu(tmp_path, capsys):
    """`scdpo recipe --smoke` on a random-weight full-size SD1.5 single file, as a user's checkpoint, in
    under 10 minutes on this CPU; the LoRA covers all 128 attention projections the hosts map."""
    from scdpo.sd.configs import config_dir
    from sd_ldm_checkpoints import cached_checkpoint

    ckpt = cached_checkpoint("sd15_random_fp16", config_dir("sd15"), "sd15")
    clip = build_aligned_clip(tmp_path / "clip", ["a nude figure"], ["a landscape"]).folder
    out = tmp_path / "run"
    started = time.time()
    assert main(["recipe", "--base", str(ckpt), "--out", str(out), "--clip", str(clip), "--smoke"]) == 0
    seconds = time.time() - started
    lora = load_lora(out / "lora" / "safety_lora.safetensors")
    assert lora.metadata["ss_base_model_version"] == "sd_v1" and len(lora.module_names) == 128
    record = json.loads((out / "recipe.json").read_text())
    print(f"full-size SD1.5 recipe smoke on CPU: {seconds:.0f} s;",
          {k: v["seconds"] for k, v in record["stages"].items()})
    assert seconds < 600
