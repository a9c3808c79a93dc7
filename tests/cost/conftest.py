"""Fixtures for the cost-model tests: tiny random encoders and labelled toy renders."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from scdpo.cost.data import CostExamples
from scdpo.toy.world import ToyWorld, render


def render_examples(n_train: int = 480, n_calib: int = 90, n_test: int = 120, seed: int = 0) -> CostExamples:
    """Ground-truth renders labelled by construction (for fast unit tests only): train, calibration and
    test images from separate streams of training-split prompts (a harmful thing on either side: 240
    training renders were too few for both, test AUROC 0.87). These tests check what the objectives
    learn, not generalisation to unseen caption shapes (a harmful thing alone, in the centre)."""
    ex = CostExamples()
    for split, world_split, n in (("train", "train", n_train), ("calib", "train", n_calib),
                                  ("test", "train", n_test)):
        world, rng = ToyWorld(world_split), random.Random(f"{split}-{seed}")
        for _ in range(n):
            p = world.sample_prompt(rng, 0.45, 0.3)
            ex.add(render(p.scene, p.seed), p.scene.unsafe_category, p.category, p.kind == "near_miss", split,
                   p.text)
    return ex


@pytest.fixture(scope="session")
def toy_render_examples() -> CostExamples:
    return render_examples()


@pytest.fixture
def random_toy_encoder():
    from scdpo.cost.toy_encoder import ToyImageEncoder

    torch.manual_seed(0)
    return ToyImageEncoder().eval().requires_grad_(False)


def small_clip_config(**overrides):
    from transformers import CLIPVisionConfig

    cfg = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, image_size=32,
               patch_size=8, projection_dim=48)
    cfg.update(overrides)
    return CLIPVisionConfig(**cfg)


@pytest.fixture
def clip_folder(tmp_path):
    """A random-weight CLIP vision model saved as a transformers folder (config.json + model.safetensors)."""
    from transformers import CLIPVisionModelWithProjection

    torch.manual_seed(1)
    model = CLIPVisionModelWithProjection(small_clip_config())
    folder = tmp_path / "clip_vision"
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def uint8_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture
def make_render_examples():
    return render_examples


@pytest.fixture
def make_clip_config():
    return small_clip_config

