"""Test harness: the extension loaded into the fake webui of ``fake_webui/`` the way the webui loads it.

:func:`fake_webui` puts the fake ``modules`` package (and a minimal ``gradio``) on ``sys.path``,
executes the extension's ``scripts/*.py`` file through the fake script loader, builds the txt2img
``ScriptRunner`` (so each script's ui() controls become its argument slice, as in the webui) and
registers a recording ``lora`` extra network standing in for the webui's Lora loader. Everything
is removed again afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path
from types import SimpleNamespace

from PIL import Image

HERE = Path(__file__).resolve().parent
FAKE_ROOT = HERE / "fake_webui"
REPO = HERE.parents[1]
EXTENSION_SCRIPT = REPO / "a1111_extension" / "scripts" / "scdpo_safety.py"
ROOT_SCRIPT = REPO / "scripts" / "scdpo_safety.py"
TITLE = "SC-DPO Safety"
_OWNED = ("modules", "gradio", "scdpo_a1111")


def _owned(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in _OWNED)


@contextlib.contextmanager
def fake_webui(lora_dir: Path, script_files=(EXTENSION_SCRIPT,), settings: dict | None = None, model=None):
    """Yield a namespace with the fake modules, ``runner`` (txt2img), ``lora`` (recording network),
    ``txt2img(**request)`` (the API path) and ``script`` (the extension's script instance)."""
    saved_path = list(sys.path)
    saved_modules = {k: v for k, v in sys.modules.items() if _owned(k)}
    for k in saved_modules:
        del sys.modules[k]
    sys.path.insert(0, str(FAKE_ROOT))
    try:
        from modules import errors, extra_networks, images, processing, script_callbacks, scripts, shared
        from modules.api import api

        errors.reported.clear()
        images.saved.clear()
        shared.cmd_opts.lora_dir = str(lora_dir)
        lora_dir.mkdir(parents=True, exist_ok=True)
        lora = RecordingLora(extra_networks)
        extra_networks.register_extra_network(lora)
        processing.model = model
        scripts.load_scripts([str(f) for f in script_files])
        for key, value in (settings or {}).items():
            setattr(shared.opts, key, value)
        runner = scripts.ScriptRunner()
        runner.initialize_scripts(False)
        web = SimpleNamespace(errors=errors, extra_networks=extra_networks, images=images, processing=processing,
                              script_callbacks=script_callbacks, scripts=scripts, shared=shared, api=api,
                              runner=runner, lora=lora, script=runner.script(TITLE))
        web.txt2img = lambda **request: api.text2imgapi(request, runner)
        yield web
    finally:
        try:
            from modules import script_callbacks

            script_callbacks.script_unloaded_callback()
        except Exception:
            pass
        sys.path[:] = saved_path
        for k in [k for k in sys.modules if _owned(k)]:
            del sys.modules[k]
        sys.modules.update(saved_modules)


class RecordingLora:
    """Stands in for the webui's ``ExtraNetworkLora``: records, per activation, the pass (base or
    hires), the batch and the (name, unet multiplier) list it would load — parsed as the webui does
    (``<lora:name:te:unet>``, unet defaults to te, te to 1)."""

    def __init__(self, extra_networks):
        self.name = "lora"
        self.activations: list = []

    def activate(self, p, params_list):
        loaded = []
        for params in params_list:
            te = float(params.positional[1]) if len(params.positional) > 1 else 1.0
            unet = float(params.positional[2]) if len(params.positional) > 2 else te
            loaded.append((params.positional[0], float(params.named.get("unet", unet))))
        self.activations.append(("hires" if getattr(p, "is_hr_pass", False) else "base", p.iteration, loaded))

    def deactivate(self, p):
        pass


def to_pil(images) -> list[Image.Image]:
    """``[B,H,W,C]`` uint8 / float 0..1 arrays → PIL RGB images."""
    import numpy as np

    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


def replay_model(images_by_seed: dict, previews: bool = True):
    """A model stand-in returning a fixed image per seed; it pushes each as a live preview first."""

    def model(p, prompts, seeds, hires):
        from modules import shared

        out = [images_by_seed[s].copy() for s in seeds]
        if previews:
            for img in out:
                shared.state.assign_current_image(img)
        return out

    return model


def toy_renders(n_harmful: int, n_near_miss: int, n_clean: int, seed: int = 7):
    """Held-out toy prompts and their renders: ``(prompts, PIL images, oracle-unsafe flags)``."""
    from scdpo.toy.judge import judge_images
    from scdpo.toy.world import eval_suite, render

    prompts = (eval_suite("harmful", n_harmful, seed=seed) + eval_suite("near_miss", n_near_miss, seed=seed)
               + eval_suite("clean", n_clean, seed=seed))
    import numpy as np

    arr = np.stack([render(p.scene, p.seed) for p in prompts])
    unsafe = [v.is_unsafe for v in judge_images(arr)]
    return prompts, to_pil(arr), unsafe


def oracle_unsafe(images) -> list[bool]:
    import numpy as np

    from scdpo.toy.judge import judge_images

    return [v.is_unsafe for v in judge_images(np.stack([np.asarray(im.convert("RGB")) for im in images]))]


@functools.lru_cache(maxsize=None)
def toy_cost_model() -> str:
    """A toy cost model trained once per test session on renders of train-split prompts (oracle labels)
    over the shipped toy encoder; evaluation uses held-out prompts, so it never sees the test images.

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
    path = Path(tempfile.mkdtemp(prefix="scdpo_a1111_test_")) / "toy_cost_trained_here.safetensors"
    model.save(path)
    print(f"(shipped toy cost model absent: trained one for the tests at {path})")
    return str(path)


def sd_lora_file(path: Path, base_version: str = "sd_v1") -> Path:
    """A small kohya LoRA file (one SD1.5 attention module) for the webui's Lora folder."""
    import torch

    from scdpo.lora import save_lora

    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    tensors = {f"{name}.lora_down.weight": torch.zeros(4, 320), f"{name}.lora_up.weight": torch.zeros(320, 4)}
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_lora(path, tensors, {"ss_base_model_version": base_version})


def gate_pair() -> dict:
    """``{1: unsafe image, 2: safe image}`` for the plumbing tests: toy renders on which the oracle and
    the cost model agree (and clearly: 2 units from the calibrated threshold), so these tests check
    where images go, not how good the cost model is (test_a1111_gate measures that)."""
    import sys

    sys.path.insert(0, str(REPO / "a1111_extension"))
    try:
        from scdpo_a1111.gate import ScorerCache
    finally:
        sys.path.remove(str(REPO / "a1111_extension"))
    _, images, unsafe = toy_renders(30, 0, 30)
    result = ScorerCache().score(images, toy_cost_model())
    margin = [float(c) - result.threshold for c in result.cost]
    bad = next(im for im, u, m in zip(images, unsafe, margin) if u and m > 2)
    good = next(im for im, u, m in zip(images, unsafe, margin) if not u and m < -2)
    return {1: bad, 2: good}
