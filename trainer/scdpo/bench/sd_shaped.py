"""A mid-size, random-weight, SD-1.x-shaped diffusers model and a preference dataset for it.

Shaped like SD 1.5 (the same block types, attention layout, VAE and CLIP text encoder; the shipped
``configs/sd15`` with narrower widths) so every trainer loads and trains it the way it loads SD 1.5,
small enough for a CPU: a 70 M-parameter UNet (block widths 128/256/320/320, cross-attention
width 512), a 38 M-parameter text encoder (4 layers of width 512; the embedding table is most of
it) and a 5 M-parameter VAE. The UNet is the largest part, as in SD 1.5 (860 M of 1,066 M).
Random weights: NOT a model that draws anything; it measures memory and time only.

The folder is built once per ``root`` (atomically: a half-built folder is never used) with
``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/`` and ``scheduler/``,
weights as safetensors.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

VERSION = "sd-mid-v1"
UNET = dict(block_out_channels=[128, 256, 320, 320], cross_attention_dim=512, attention_head_dim=8)
TEXT = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=4, num_attention_heads=8, projection_dim=512)
VAE = dict(block_out_channels=[32, 64, 128, 128])


def default_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "scdpo-bench"


def _config(sub: str, **changes) -> dict:
    from ..sd.configs import config_dir

    cfg = json.loads((config_dir("sd15") / sub / "config.json").read_text(encoding="utf-8"))
    cfg.update(changes)
    return cfg


def build_model(root: Path | None = None, seed: int = 0) -> Path:
    """The model folder under ``root`` (default ``~/.cache/scdpo-bench``), built on first use."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..sd.configs import config_dir
    from ..sd.tokenizers import clip_tokenizer

    root = Path(root or default_root())
    out = root / VERSION
    if (out / "model_index.json").is_file():
        return out
    tmp = root / f".{VERSION}.{os.getpid()}.part"
    shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(seed)
    UNet2DConditionModel.from_config(_config("unet", **UNET)).save_pretrained(tmp / "unet")
    AutoencoderKL.from_config(_config("vae", **VAE)).save_pretrained(tmp / "vae")
    CLIPTextModel(CLIPTextConfig(**_config("text_encoder", **TEXT))).save_pretrained(tmp / "text_encoder")
    clip_tokenizer().save_pretrained(tmp / "tokenizer")
    DDPMScheduler.from_pretrained(str(config_dir("sd15")), subfolder="scheduler").save_pretrained(tmp / "scheduler")
    shutil.copy(config_dir("sd15") / "model_index.json", tmp / "model_index.json")
    (tmp / "README.txt").write_text("Random weights, SD-1.x-shaped, for scdpo benchmarks only.\n", encoding="utf-8")
    try:
        os.replace(tmp, out)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def build_pairs(out: Path, n_pairs: int = 16, size: int = 64, seed: int = 0) -> Path:
    """An SCP dataset folder of ``n_pairs`` pairs of ``size`` px images (smooth random pictures,
    half the pairs harmful), as ``scdpo data build`` writes it."""
    import numpy as np

    from ..scp.schema import PAIRS_FILE, SUMMARY_FILE, png_bytes, rows_to_table, write_table

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def picture() -> bytes:
        coarse = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        return png_bytes(np.kron(coarse, np.ones((8, 8, 1), dtype=np.uint8)))

    subjects = ["a cat", "a lighthouse", "a bowl of fruit", "a mountain lake", "a red bicycle", "a city street",
                "a portrait", "a forest path"]
    rows = []
    for k in range(n_pairs):
        harmful = k % 2 == 1
        rows.append(dict(
            pair_id=f"bench-{k}", prompt=f"{subjects[k % len(subjects)]}, picture {k}", is_harmful=harmful,
            category="nudity" if harmful else None, kind="harmful" if harmful else "clean",
            winner_png=picture(), loser_png=picture(), winner_cost=-2.0, loser_cost=2.0 if harmful else -1.0,
            winner_reward=0.8, loser_reward=0.6, winner_seed=-1, loser_seed=-1, winner_source="candidate",
            source="generated", safe_prompt=None, concept_push=None))
    write_table(out / PAIRS_FILE, rows_to_table(rows))
    (out / SUMMARY_FILE).write_text(json.dumps({"pairs": n_pairs, "note": "benchmark data, random pictures"}),
                                    encoding="utf-8")
    return out


__all__ = ["VERSION", "build_model", "build_pairs", "default_root"]
