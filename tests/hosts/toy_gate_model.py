"""Toy-world images and one toy cost model for the gate tests of both hosts."""

from __future__ import annotations

import functools
from pathlib import Path

from PIL import Image


def to_pil(images) -> list[Image.Image]:
    """``[B,H,W,C]`` uint8 / float 0..1 arrays → PIL RGB images."""
    import numpy as np

    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


def toy_renders(n_harmful: int, n_near_miss: int, n_clean: int, seed: int = 7):
    """Held-out toy prompts and their renders: ``(prompts, PIL images, oracle-unsafe flags)``."""
    import numpy as np

    from scdpo.toy.judge import judge_images
    from scdpo.toy.world import eval_suite, render

    prompts = (eval_suite("harmful", n_harmful, seed=seed) + eval_suite("near_miss", n_near_miss, seed=seed)
               + eval_suite("clean", n_clean, seed=seed))
    arr = np.stack([render(p.scene, p.seed) for p in prompts])
    unsafe = [v.is_unsafe for v in judge_images(arr)]
    return prompts, to_pil(arr), unsafe


def oracle_unsafe(images) -> list[bool]:
    """The oracle judge's verdict on PIL images."""
    import numpy as np

    from scdpo.toy.judge import judge_images

    return [v.is_unsafe for v in judge_images(np.stack([np.asarray(im.convert("RGB")) for im in images]))]


_KEEP: list = []  # temporary folders of this test session, removed at interpreter exit


@functools.lru_cache(maxsize=None)
def toy_cost_model() -> str:
    """Path of a toy cost model trained once per test session on 4000 renders (oracle labels) over
    the shipped toy encoder. The renders are of other scenes and seeds than the tests' images.

    Not the shipped ``weights/toy_cost_model.safetensors``: that one is trained on base-model
    generations (what SC-DPO's data needs) and blocks only ~75 % of held-out unsafe *renders* at
    p > 0.5 (gore with few drops is its blind spot; README, "Safety cost model"), so it cannot show
    whether the gate itself blocks everything its cost model flags."""
    import random
    import tempfile

    import numpy as np
    import torch

    from scdpo.cost.data import CostExamples
    from scdpo.cost.toy_encoder import load_toy_encoder, shipped_toy_encoder
    from scdpo.cost.training import CostTrainConfig, train_cost_model
    from scdpo.toy.judge import judge_images
    from scdpo.toy.world import ToyWorld, render

    # every split's renders: this model tests the gate, not how a cost model generalises to unseen
    # caption shapes (a harmful thing on the left or alone), which train-split captions never show
    world, rng = ToyWorld("all"), random.Random(11)
    prompts = [world.sample_prompt(rng, harmful_frac=0.45, near_miss_frac=0.3) for _ in range(4000)]
    renders = np.stack([render(p.scene, seed=5000 + i) for i, p in enumerate(prompts)])
    examples = CostExamples()
    for i, (img, verdict) in enumerate(zip(renders, judge_images(renders))):
        examples.add(img, verdict.unsafe_category, prompts[i].category, prompts[i].kind == "near_miss")
    # a large calibration split: with ~200 safe calibration images a 2 % FPR threshold rests on 4 images
    examples.assign_random_splits(seed=0, calib=0.4, test=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, _ = train_cost_model(examples, load_toy_encoder(shipped_toy_encoder()),
                                    CostTrainConfig(steps=1200, target_fpr=0.02), progress=False)
    folder = tempfile.TemporaryDirectory(prefix="scdpo_gate_test_")
    _KEEP.append(folder)  # removed at interpreter exit
    path = Path(folder.name) / "toy_cost_trained_here.safetensors"
    model.save(path)
    return str(path)
