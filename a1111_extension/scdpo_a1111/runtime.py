"""Process-wide state of the extension inside a webui: where it lives, whether ``scdpo`` was found,
the loaded cost model, and the request of the job being sampled (for live previews)."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Optional

from . import gate, loras
from .options import SafetyRequest, enforce_on, option, resolve_request

EXTENSION_DIR = Path(__file__).resolve().parent.parent
TRAINER_ENV = "SCDPO_TRAINER_DIR"

scorers = gate.ScorerCache()
scdpo_problem: Optional[str] = None  # why scdpo cannot be used (gate then blocks everything)
_active: dict = {"request": None, "job": None}


def find_scdpo(extension_dir: Path = EXTENSION_DIR) -> Optional[str]:
    """Make ``import scdpo`` work; returns a message saying why it cannot, or None.

    Looked for in this order: already importable (e.g. ``pip install --no-deps -e REPO`` into the
    webui's Python), ``$SCDPO_TRAINER_DIR``, ``<repo>/trainer`` beside this extension (Install from
    URL, or a symlink/junction of ``a1111_extension/``).
    """
    global scdpo_problem
    if importlib.util.find_spec("scdpo") is None:
        candidates = [os.environ.get(TRAINER_ENV, ""), extension_dir.parent / "trainer",
                      Path(os.path.realpath(extension_dir)).parent / "trainer"]
        for folder in candidates:
            if folder and (Path(folder) / "scdpo" / "__init__.py").is_file():
                sys.path.append(str(folder))  # appended: an installed scdpo would win
                importlib.invalidate_caches()
                break
    try:
        importlib.import_module("scdpo.cost")
        scdpo_problem = None
    except Exception as exc:
        detail = str(exc) if isinstance(exc, ImportError) else f"{type(exc).__name__}: {exc}"
        scdpo_problem = (f"the scdpo package could not be imported ({detail}); install the "
                         f"extension from the repository URL, or set {TRAINER_ENV}=<repo>/trainer, or "
                         "`pip install --no-deps -e <repo>` in the webui's Python")
    return scdpo_problem


def shared_module():
    from modules import shared

    return shared


def webui_device():
    """The webui's torch device (``modules.devices.device``), CPU if it has none."""
    try:
        from modules import devices

        return getattr(devices, "device", None) or "cpu"
    except Exception:
        return "cpu"


def score_fn(opts):
    """``images -> CostResult`` with the configured cost model; raises if it cannot score."""

    def score(images):
        if scdpo_problem:
            raise RuntimeError(scdpo_problem)
        return scorers.score(images, option(opts, "scdpo_cost_model"), option(opts, "scdpo_backbone"), webui_device())

    return score


def gate_one(image, request: SafetyRequest, opts):
    """``(image to keep, verdict)`` for one PIL image under ``request``."""
    return gate.gate_images([image], score_fn(opts), request.threshold, request.action)[0]


def lora_dir() -> Optional[str]:
    try:
        return getattr(shared_module().cmd_opts, "lora_dir", None)
    except Exception:
        return None


def own_loras(opts) -> dict:
    return loras.own_loras(option(opts, "scdpo_lora_dir"), EXTENSION_DIR)


def loaded_base_version() -> Optional[str]:
    """``ss_base_model_version`` of the webui's loaded model (``sd_v1`` | ``sdxl_base_v1-0`` | another
    name for models no safety LoRA fits), None while none is loaded. Reads ``modules.sd_models``'
    model slot directly: ``shared.sd_model`` would load a model when there is none."""
    sd_models = sys.modules.get("modules.sd_models")
    model = getattr(getattr(sd_models, "model_data", None), "sd_model", None)
    if model is None:
        return None
    if getattr(model, "is_sdxl", False):
        return "sdxl_base_v1-0"
    if getattr(model, "is_sd1", False):
        return "sd_v1"
    return "sd_v2" if getattr(model, "is_sd2", False) else "another model family"


def lora_choices() -> list[str]:
    opts = getattr(shared_module(), "opts", None)
    return loras.lora_choices(lora_dir(), own_loras(opts), loaded_base_version())


def lora_refusal(name: str, opts) -> Optional[str]:
    """Why the safety LoRA ``name`` must not be applied to the loaded model, or None."""
    return loras.refusal(name, lora_dir(), own_loras(opts), loaded_base_version())


def set_active(request: Optional[SafetyRequest]) -> None:
    state = getattr(shared_module(), "state", None)
    _active["request"], _active["job"] = request, getattr(state, "job_timestamp", None)


def current_request(opts) -> Optional[SafetyRequest]:
    """The request of the job being processed now, or the enforced one; None when the gate is off."""
    state = getattr(shared_module(), "state", None)
    request = _active["request"]
    if request is not None and _active["job"] == getattr(state, "job_timestamp", None) and request.enabled:
        return request
    return resolve_request((), opts) if enforce_on(opts) else None
