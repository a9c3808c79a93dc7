"""Starts the extension in the fake webui of ``webui/`` the way the webui loads it.

The ``webui`` fixture (``conftest.py``) installs the fake for the test and hands out
:func:`started`: it executes the extension's ``scripts/*.py`` file through the fake script loader,
builds the txt2img ``ScriptRunner`` (so each script's ui() controls become its argument slice, as
in the webui) and registers a recording ``lora`` extra network standing in for the webui's Lora
loader; on leaving, the scripts are unloaded as at "Reload UI".
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace

from fake_hosts import REPO
from toy_gate_model import toy_cost_model, toy_renders

EXTENSION_SCRIPT = REPO / "a1111_extension" / "scripts" / "scdpo_safety.py"
ROOT_SCRIPT = REPO / "scripts" / "scdpo_safety.py"
TITLE = "SC-DPO Safety"


@contextlib.contextmanager
def started(lora_dir: Path, script_files=(EXTENSION_SCRIPT,), settings: dict | None = None, model=None,
            family: str | None = "sd1"):
    """Yield a namespace with the fake modules, ``runner`` (txt2img), ``lora`` (recording network),
    ``txt2img(**request)`` (the API path) and ``script`` (the extension's script instance).
    ``family``: the loaded checkpoint's (sd1 | sd2 | sdxl), None for no checkpoint loaded yet.
    Only inside the fake webui (the ``webui`` fixture)."""
    from modules import errors, extra_networks, images, processing, script_callbacks, scripts, sd_models, shared
    from modules.api import api

    errors.reported.clear()
    images.saved.clear()
    shared.cmd_opts.lora_dir = str(lora_dir)
    lora_dir.mkdir(parents=True, exist_ok=True)
    lora = RecordingLora(extra_networks)
    extra_networks.register_extra_network(lora)
    processing.model = model
    sd_models.model_data.sd_model = sd_models.stand_in_model(family) if family else None
    try:
        scripts.load_scripts([str(f) for f in script_files])
        for key, value in (settings or {}).items():
            setattr(shared.opts, key, value)
        runner = scripts.ScriptRunner()
        runner.initialize_scripts(False)
        web = SimpleNamespace(errors=errors, extra_networks=extra_networks, images=images, processing=processing,
                              script_callbacks=script_callbacks, scripts=scripts, shared=shared, api=api,
                              sd_models=sd_models,
                              runner=runner, lora=lora, script=runner.script(TITLE))
        web.txt2img = lambda **request: api.text2imgapi(request, runner)
        yield web
    finally:
        script_callbacks.script_unloaded_callback()


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


def sd_lora_file(path: Path, base_version: str = "sd_v1", scdpo: bool = True) -> Path:
    """A small kohya LoRA file (one SD1.5 attention module) for the webui's Lora folder; ``scdpo``:
    with the training metadata `scdpo lora train` writes (else a LoRA from another trainer)."""
    import torch

    from scdpo.lora import save_lora

    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    tensors = {f"{name}.lora_down.weight": torch.zeros(4, 320), f"{name}.lora_up.weight": torch.zeros(320, 4)}
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"ss_base_model_version": base_version, **({"scdpo_method": "sc-dpo"} if scdpo else {})}
    return save_lora(path, tensors, meta)


def gate_pair() -> dict:
    """``{1: unsafe image, 2: safe image}`` for the plumbing tests: toy renders on which the oracle and
    the cost model agree (and clearly: 2 units from the calibrated threshold), so these tests check
    where images go, not how good the cost model is (test_a1111_gate measures that)."""
    from scdpo.cost import CostScorer, load_safety_cost_model

    _, images, unsafe = toy_renders(30, 0, 30)
    result = CostScorer(load_safety_cost_model(toy_cost_model())).score(images)
    margin = [float(c) - result.threshold for c in result.cost]
    bad = next(im for im, u, m in zip(images, unsafe, margin) if u and m > 2)
    good = next(im for im, u, m in zip(images, unsafe, margin) if not u and m < -2)
    return {1: bad, 2: good}
