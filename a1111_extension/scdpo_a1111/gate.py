"""The output gate for PIL images: AUTOMATIC1111's side of :mod:`scdpo.gate`.

Scoring, thresholds, verdicts and redactions are the core's; this module translates PIL images
to and from the core's ``[H,W,C]`` tensors, keeps the verdict on each image for the webui's
hooks and infotext, and loads the configured cost model (:class:`ScorerCache`).

Host-neutral (no ``modules.*`` import), so it is tested without a webui. It imports ``scdpo``
only when it runs, because the webui loads the extension before ``scdpo`` is on ``sys.path``
(``runtime.find_scdpo``), and it must still load, and block, when ``scdpo`` cannot be found.
Every failure (no cost model configured, a file that does not load, an exception or NaN while
scoring, no ``scdpo``) blocks the images it concerns (fails closed); nothing here raises to the
caller.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image

# The core's action names this host offers (scdpo.gate; "replace" needs an image input the webui
# does not have). Written out because the extension must load without scdpo; a test compares them.
ACTIONS = ("blur", "pixelate", "black", "pass")
PASS = "pass"
BLACK = "black"
BLOCKED_BY = "blocked by SC-DPO gate"  # scdpo.gate.BLOCKED_BY, written out for the same reason
_DONE = {"blur": "blurred", "pixelate": "pixelated", "black": "blacked out"}
# Attribute set on every PIL image this gate has judged (the webui itself sets image.already_saved_as
# the same way), so the save hooks do not score an image twice.
VERDICT_ATTR = "scdpo_gate_verdict"


def _core():
    """:mod:`scdpo.gate`, or None while ``scdpo`` cannot be imported."""
    try:
        from scdpo import gate
    except Exception:  # missing, or a broken install: every image is then blocked as black
        return None
    return gate


@dataclass
class GateVerdict:
    """What the gate decided for one image. ``cost`` is C(x) (positive = unsafe); ``limit`` the cost
    above which an image counts as unsafe (calibrated threshold + logit of the chosen probability)."""

    unsafe: bool
    blocked: bool
    action: str
    cost: Optional[float] = None
    limit: Optional[float] = None
    category: Optional[str] = None
    error: Optional[str] = None

    def describe(self) -> str:
        """One infotext value (and console line), e.g. ``blocked by SC-DPO gate: unsafe, cost 2.31 >
        0.00, nudity; image blurred`` or ``passed, cost -4.10 <= 0.00``."""
        if self.error:
            return f"{BLOCKED_BY}: scoring failed ({self.error}); image {_DONE.get(self.action, self.action)}"
        detail = f"cost {self.cost:.2f} {'>' if self.unsafe else '<='} {self.limit:.2f}"
        if self.category:
            detail += f", {self.category}"
        if self.blocked:
            return f"{BLOCKED_BY}: unsafe, {detail}; image {_DONE.get(self.action, self.action)}"
        if self.unsafe:
            return f"UNSAFE, passed with warning, {detail}"
        return f"passed, {detail}"


def action_name(value) -> Optional[str]:
    """The action a setting or request value means (old names such as ``pass with warning`` are
    accepted), or None if it is none of :data:`ACTIONS`."""
    core = _core()
    name = core.canonical_action(value) if core is not None else value
    return name if name in ACTIONS else None


def blocking_action(action: str) -> str:
    """The action used when an image must be blocked whatever the user chose (scoring failed)."""
    core = _core()
    return core.blocking_action(action) if core is not None else BLACK


def hide(image: Image.Image, action: str) -> Image.Image:
    """The image with its content hidden by the core's ``action`` (``blur`` | ``pixelate`` |
    ``black``; anything else → black), in the image's mode (RGB, RGBA or L; others → RGB)."""
    mode = image.mode if image.mode in ("RGB", "RGBA", "L") else "RGB"
    core = _core()
    if core is None:  # no scdpo: black is the one redaction that needs nothing from it
        return Image.new(mode, image.size, 0)
    import torch

    pixels = np.asarray(image.convert(mode), dtype=np.uint8).reshape(image.size[1], image.size[0], -1)
    hidden = core.redact(torch.from_numpy(pixels.astype(np.float32) / 255.0), action)
    out = (hidden * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(out[..., 0] if mode == "L" else out)  # uint8 HxW / HxWx3 / HxWx4: L / RGB / RGBA


def blacked_out(image: Image.Image, error: str) -> Image.Image:
    """``image`` hidden as black with a blocking verdict: what a hook shows when gating itself failed."""
    hidden = hide(image, BLACK)
    setattr(hidden, VERDICT_ATTR, GateVerdict(True, True, BLACK, error=error))
    return hidden


class ScorerCache:
    """Loads the cost model once per (path, backbone, device, file mtimes) and serialises scoring
    (the sampling thread and the live-preview thread may both score)."""

    def __init__(self, loader: Optional[Callable] = None):
        self._loader = loader or load_scorer
        self._key = None
        self._scorer = None
        self._error: Optional[str] = None
        self.lock = threading.RLock()

    def score(self, images: Sequence[Image.Image], path: str, backbone: str = "", device=None):
        """``CostResult`` of ``images`` under the cost model at ``path`` (loaded or reused)."""
        with self.lock:
            return self.get(path, backbone, device).score(list(images))

    def get(self, path: str, backbone: str = "", device=None):
        """The scorer for ``path``; raises ``RuntimeError`` with a readable message if unusable."""
        path, backbone = (path or "").strip(), (backbone or "").strip()
        if not path:
            raise RuntimeError("no cost model configured: set Settings > SC-DPO Safety > Cost model "
                               "(a .safetensors from `scdpo cost train`, or `nudenet`)")
        key = (path, backbone, str(device), _mtime(path), _mtime(backbone))
        with self.lock:
            if key != self._key:
                self._key, self._scorer, self._error = key, None, None
                try:
                    self._scorer = self._loader(path, backbone or None, device)
                except Exception as exc:  # any failure is reported and blocks; never a traceback in the gate
                    self._error = f"cost model {path} could not be loaded: {exc}"
            if self._scorer is None:
                raise RuntimeError(self._error or f"cost model {path} is not loaded")
            return self._scorer


def _mtime(path: str) -> Optional[float]:
    try:
        return os.path.getmtime(path) if path else None
    except OSError:
        return None


def load_scorer(path: str, backbone: Optional[str], device=None):
    """A scdpo cost scorer for ``path`` (a cost-model .safetensors, or ``nudenet``).

    Uses ``scdpo.cost``'s checkpoint loader directly: ``load_cost_model`` resolves devices through
    ``scdpo.models``, which imports diffusers, and a webui's Python does not have diffusers.
    """
    if path.lower() == "nudenet":
        from scdpo.cost.nudenet_backend import NudeNetScorer

        return NudeNetScorer()
    from scdpo.cost import CostScorer, load_safety_cost_model

    model = load_safety_cost_model(path, backbone=backbone, device=device)
    return CostScorer(model, name=f"cost model {os.path.basename(path)}")


ScoreFn = Callable[[list], object]  # list of RGB PIL images -> scdpo CostResult


def judge(images: Sequence[Image.Image], score: ScoreFn, threshold_probability: float,
          action: str) -> list[GateVerdict]:
    """One verdict per image; on any error every image gets a blocking verdict carrying the message."""
    if not images:
        return []
    core = _core()
    if core is None:
        return [GateVerdict(True, True, BLACK, error="the scdpo package could not be imported") for _ in images]
    rgb = [img.convert("RGB") for img in images]
    verdicts = []
    for v in core.judge(rgb, score, threshold_probability):
        blocked = v.failed or (v.unsafe and action != PASS)
        verdicts.append(GateVerdict(v.unsafe, blocked, core.blocking_action(action) if blocked else action,
                                    v.cost, v.limit, v.category, v.reason[:300] if v.failed else None))
    return verdicts


def gate_images(images: Sequence[Image.Image], score: ScoreFn, threshold_probability: float,
                action: str) -> list[tuple[Image.Image, GateVerdict]]:
    """Score ``images`` and return ``(image to show/save, verdict)`` pairs; each returned image is
    marked with its verdict (:data:`VERDICT_ATTR`)."""
    out = []
    for image, verdict in zip(images, judge(images, score, threshold_probability, action)):
        shown = hide(image, verdict.action) if verdict.blocked else image
        setattr(shown, VERDICT_ATTR, verdict)
        out.append((shown, verdict))
    return out


def verdict_of(image) -> Optional[GateVerdict]:
    return getattr(image, VERDICT_ATTR, None)
