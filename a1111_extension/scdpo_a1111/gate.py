"""The output gate: score PIL images with a scdpo cost model and hide the unsafe ones.

Host-neutral (no ``modules.*`` import), so it is tested without a webui. Every failure — no cost
model configured, a file that does not load, an exception or NaN while scoring — blocks the
images it concerns (fails closed); nothing here raises to the caller.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from PIL import Image, ImageFilter

ACTIONS = ("blur", "pixelate", "black", "pass with warning")
PASS_WITH_WARNING = "pass with warning"
# Attribute set on every PIL image this gate has judged (the webui itself sets image.already_saved_as
# the same way), so the save hooks do not score an image twice.
VERDICT_ATTR = "scdpo_gate_verdict"


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
        """One infotext value, e.g. ``blocked (blur), cost 2.31 > 0.00, nudity``."""
        if self.error:
            return f"blocked ({self.action}), scoring failed: {self.error}"
        detail = f"cost {self.cost:.2f} {'>' if self.unsafe else '<='} {self.limit:.2f}"
        if self.category:
            detail += f", {self.category}"
        if self.blocked:
            return f"blocked ({self.action}), {detail}"
        if self.unsafe:
            return f"UNSAFE, passed with warning, {detail}"
        return f"passed, {detail}"


def cost_limit(calibrated_threshold: float, threshold_probability: float) -> float:
    """The cost above which an image is unsafe: ``sigmoid(C - t) > p`` ⇔ ``C > t + logit(p)``.
    ``p = 0.5`` is the cost model's calibrated threshold ``t``; smaller ``p`` is stricter."""
    p = min(max(float(threshold_probability), 1e-4), 1 - 1e-4)
    return float(calibrated_threshold) + math.log(p / (1 - p))


def hide(image: Image.Image, action: str) -> Image.Image:
    """The image with its content hidden. ``blur`` and ``pixelate`` are coarse enough that no detail
    survives at any size (≤ 3 cells / ≤ 12 cells of at least 8 pixels across the long side); anything unknown → black. At 8
    cells a blurred figure kept its skin-coloured silhouette, which a judge that knows several skin
    tones still reads as nudity; both also move halfway to the image's mean colour."""
    w, h = image.size
    mode = image.mode if image.mode in ("RGB", "RGBA", "L") else "RGB"
    rgb = image.convert(mode)
    if action == "blur":
        long_side = max(w, h)
        small = rgb.resize((max(1, round(3 * w / long_side)), max(1, round(3 * h / long_side))), Image.BOX)
        blurred = small.resize((w, h), Image.BICUBIC).filter(ImageFilter.GaussianBlur(radius=max(1.0, long_side / 8)))
        # halfway to the image's mean colour: what is left of a shape loses its colour too
        return Image.blend(blurred, Image.new(mode, (w, h), rgb.resize((1, 1), Image.BOX).getpixel((0, 0))), 0.5)
    if action == "pixelate":
        cells = max(1, min(12, max(w, h) // 8))
        scale = cells / max(w, h)
        small = rgb.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BOX)
        return Image.blend(small.resize((w, h), Image.NEAREST),
                           Image.new(mode, (w, h), rgb.resize((1, 1), Image.BOX).getpixel((0, 0))), 0.5)
    return Image.new(mode, (w, h), 0)


def blocking_action(action: str) -> str:
    """The action used when an image must be blocked whatever the user chose (scoring failed)."""
    return action if action in ACTIONS and action != PASS_WITH_WARNING else "black"


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
                               "(a .safetensors from `scdpo train-cost`, or `nudenet`)")
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
    try:
        result = score([img.convert("RGB") for img in images])
        costs = [float(c) for c in result.cost.reshape(-1).tolist()]
        if len(costs) != len(images):
            raise RuntimeError(f"the cost model returned {len(costs)} costs for {len(images)} images")
        limit = cost_limit(result.threshold, threshold_probability)
        verdicts = []
        for i, cost in enumerate(costs):
            unsafe = not cost <= limit  # NaN counts as unsafe
            category = None
            if unsafe and len(result.categories):
                category = result.categories[int(result.per_category[i].argmax())]
            blocked = unsafe and action != PASS_WITH_WARNING
            verdicts.append(GateVerdict(unsafe, blocked, blocking_action(action) if blocked else action,
                                        cost, limit, category))
        return verdicts
    except Exception as exc:  # fail closed
        message = str(exc).strip() or type(exc).__name__
        return [GateVerdict(True, True, blocking_action(action), error=message[:300]) for _ in images]


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
