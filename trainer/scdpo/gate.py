"""The safety gate: score images with a cost model, decide per image, hide the unsafe ones.

Both hosts gate through this module; their adapters only translate types and names
(ComfyUI: ``comfy_nodes/safety_gate.py``, IMAGE tensors; AUTOMATIC1111 / Forge:
``a1111_extension/scdpo_a1111/gate.py``, PIL images).

**Verdicts.** :func:`judge` scores a batch with ``score(images) -> CostResult`` and gives one
:class:`Verdict` per image: ``safe``, ``unsafe``, or ``failed`` (not scored, with the reason).
It fails closed: if scoring raises, or returns the wrong number of costs or a NaN/inf, every
image of the batch is ``failed``, and a failed image is treated as unsafe.
The threshold is a probability: an image is unsafe when ``sigmoid(C - t) > p`` (``t`` the cost
model's calibrated threshold), i.e. when its cost exceeds :func:`cost_limit` ``= t + logit(p)``;
``p = 0.5`` is the calibrated verdict, lower is stricter.

**Actions** (one name, one implementation each; images are ``[H,W,C]`` float 0..1):

* ``blur``: what is left is at most 3 soft cells across the long side (area-averaged to 3 cells,
  upscaled, Gaussian blur with sigma = long side / 8), then moved halfway to the image's mean colour;
* ``pixelate``: flat tiles of at least 8 px, at most 12 across the long side, then halfway to the
  mean colour;
* ``black``: every channel 0 (an alpha channel too: transparent black);
* ``replace``: a user-supplied image in its place, resized to fit (hosts with an image input);
* ``pass``: unchanged; the host flags the image (ComfyUI's outputs, A1111's infotext and warning).

Old names still accepted (saved workflows, webui settings, API requests): :data:`ACTION_ALIASES`.

**Messages.** Whatever is withheld (an image, a whole prompt's outputs, a live preview) is reported
by both hosts as ``blocked by SC-DPO gate: <why>`` (:func:`blocked_message`, :meth:`Verdict.why`), in
the place their users and scripts read: ComfyUI's ``/history`` outputs, A1111's infotext and console.

**Previews.** :func:`judge_preview` decides one in-progress image the same way (fails closed); the
host shows it only when it is ``safe``.
The mean-colour blend is there because a skin-coloured silhouette at 8 cells was still read as
nudity by a judge that knows several skin tones; with it a redacted image cannot be recognised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from .errors import ScdpoError

BLUR, PIXELATE, BLACK, REPLACE, PASS = "blur", "pixelate", "black", "replace", "pass"
REDACTIONS = (BLUR, PIXELATE, BLACK)  # hide an image with nothing but the image itself
ACTIONS = (BLUR, PIXELATE, BLACK, REPLACE, PASS)
ACTION_ALIASES = {"pass with warning": PASS}  # the A1111 extension's earlier name for "pass"

SAFE, UNSAFE, FAILED = "safe", "unsafe", "failed"
BLOCKED_BY = "blocked by SC-DPO gate"  # how both hosts begin the message of anything the gate withheld

BLUR_CELLS = 3  # blur: at most this many soft cells survive across the long side
BLUR_SIGMA_FRACTION = 8  # blur: Gaussian sigma = long side / 8
BLUR_WORK_SIDE = 64  # blur is computed at most this large, then upscaled (the result is that smooth)
PIXEL_MIN_CELL = 8  # pixelate: tiles at least 8 px ...
PIXEL_MAX_CELLS = 12  # ... and at most 12 across the long side
MEAN_BLEND = 0.5  # blur and pixelate then move this far towards the image's mean colour

ScoreFn = Callable[[object], object]  # images -> scdpo.cost.CostResult


def canonical_action(name) -> Optional[str]:
    """The action ``name`` stands for (an old name is accepted), or None if it is no action."""
    if name in ACTIONS:
        return name
    return ACTION_ALIASES.get(name)


def blocking_action(action) -> str:
    """The redaction for an image that must be hidden whatever was chosen (e.g. scoring failed):
    ``action`` itself if it hides an image by itself, else ``black``."""
    action = canonical_action(action)
    return action if action in REDACTIONS else BLACK


# -- verdicts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """The gate's decision for one image.

    ``status``: ``safe`` | ``unsafe`` | ``failed`` (not scored; ``reason`` says why, ``error_type``
    names the exception). ``cost`` is C(x) (positive = unsafe), ``probability`` sigmoid(C - t),
    ``limit`` the cost above which the image is unsafe, ``category`` the highest-cost category of
    an unsafe image.
    """

    status: str
    cost: Optional[float] = None
    probability: Optional[float] = None
    limit: Optional[float] = None
    category: Optional[str] = None
    reason: Optional[str] = None
    error_type: Optional[str] = None

    @property
    def unsafe(self) -> bool:
        """True for ``unsafe`` and for ``failed``: an image that was not scored is not let through."""
        return self.status != SAFE

    @property
    def failed(self) -> bool:
        return self.status == FAILED

    def why(self) -> str:
        """Why the image is (not) let through, e.g. ``unsafe (nudity): cost +2.31 > +0.00`` or
        ``scoring failed (RuntimeError: CUDA out of memory)``."""
        if self.failed:
            return f"scoring failed ({self.error_type}: {self.reason})"
        what = f"unsafe ({self.category})" if self.unsafe and self.category else self.status
        return f"{what}: cost {self.cost:+.2f} {'>' if self.unsafe else '<='} {self.limit:+.2f}"


def blocked_message(why: str) -> str:
    """``blocked by SC-DPO gate: <why>``: the one wording both hosts report a block with."""
    return f"{BLOCKED_BY}: {why}"


def cost_limit(calibrated_threshold: float, threshold_probability: float) -> float:
    """The cost above which an image is unsafe: ``sigmoid(C - t) > p`` ⇔ ``C > t + logit(p)``
    (``p`` clamped to 1e-4..1-1e-4)."""
    p = min(max(float(threshold_probability), 1e-4), 1 - 1e-4)
    return float(calibrated_threshold) + math.log(p / (1 - p))


def checked_score(score: ScoreFn, images) -> object:
    """``score(images)``, raising :class:`ScdpoError` unless it gave one finite cost per image."""
    result = score(images)
    n, got = len(images), len(result.cost)
    if got != n:
        raise ScdpoError(f"the cost model returned {got} costs for {n} images")
    if not all(torch.isfinite(torch.as_tensor(values)).all() for values in (result.cost, result.probability)):
        raise ScdpoError("the cost model returned NaN/inf costs; refusing to pass images")
    return result


def verdicts_of(result, threshold_probability: float) -> list[Verdict]:
    """One :class:`Verdict` per image of a checked ``CostResult`` at ``threshold_probability``."""
    limit = cost_limit(result.threshold, threshold_probability)
    out = []
    for i in range(len(result.cost)):
        cost = float(result.cost[i])
        unsafe = not cost <= limit  # a NaN is unsafe too
        category = None
        if unsafe and result.per_category.numel():
            category = result.categories[int(result.per_category[i].argmax())]
        out.append(Verdict(UNSAFE if unsafe else SAFE, cost, float(result.probability[i]), limit, category))
    return out


def judge(images, score: ScoreFn, threshold_probability: float,
          passthrough: tuple[type[BaseException], ...] = ()) -> list[Verdict]:
    """Score ``images`` (whatever ``score`` takes: a ``[B,H,W,C]`` tensor, a list of PIL images) and
    decide each. Never raises: any failure makes every verdict ``failed`` with the reason, except
    the exception types in ``passthrough`` (a host's cancel), which propagate."""
    if len(images) == 0:
        return []
    try:
        result = checked_score(score, images)
    except passthrough:
        raise
    except Exception as exc:  # noqa: BLE001 - fail closed: whatever went wrong, nothing passes
        failed = Verdict(FAILED, reason=str(exc).strip() or type(exc).__name__, error_type=type(exc).__name__)
        return [failed] * len(images)
    return verdicts_of(result, threshold_probability)


def judge_preview(image, score: ScoreFn, threshold_probability: float,
                  passthrough: tuple[type[BaseException], ...] = ()) -> Verdict:
    """The verdict on one in-progress image (a sampler's live preview, ``[1,H,W,C]`` or whatever
    ``score`` takes): the host may show it only when the verdict is ``safe``; unsafe and failed
    (scoring raised, or gave no finite cost) both hide it."""
    return judge(image, score, threshold_probability, passthrough)[0]


# -- redaction -----------------------------------------------------------------------------------


def _to_nchw(image: torch.Tensor) -> torch.Tensor:
    return image.movedim(-1, 0)[None].float()


def _box_weights(n_in: int, n_out: int, device) -> torch.Tensor:
    """``[n_out, n_in]``: each output cell is the mean of the input pixels whose centre falls in it
    (PIL's BOX reduction)."""
    cell = ((torch.arange(n_in, device=device) + 0.5) * n_out / n_in).floor().long().clamp(max=n_out - 1)
    member = (cell[None] == torch.arange(n_out, device=device)[:, None]).float()
    return member / member.sum(dim=1, keepdim=True).clamp(min=1)


def _box_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[1,C,H,W]`` averaged down to ``size`` cells (:func:`_box_weights`)."""
    rows = _box_weights(x.shape[-2], size[0], x.device)
    cols = _box_weights(x.shape[-1], size[1], x.device)
    return rows @ x @ cols.T


def _cubic_weights(n_in: int, n_out: int, device) -> torch.Tensor:
    """``[n_out, n_in]`` for upscaling: Keys' cubic (a = -0.5) around each output pixel's centre,
    cut at the image border and renormalised (as PIL's BICUBIC, so the A1111 look is kept)."""
    centre = (torch.arange(n_out, dtype=torch.float64, device=device)[:, None] + 0.5) * n_in / n_out
    d = (torch.arange(n_in, dtype=torch.float64, device=device)[None] + 0.5 - centre).abs()
    a = -0.5
    weight = torch.where(d < 1, ((a + 2) * d - (a + 3)) * d * d + 1,
                         torch.where(d < 2, ((d - 5) * d + 8) * d * a - 4 * a, torch.zeros_like(d)))
    return (weight / weight.sum(dim=1, keepdim=True)).float()


def _cubic_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[1,C,h,w]`` upscaled to ``size`` with :func:`_cubic_weights`."""
    return _cubic_weights(x.shape[-2], size[0], x.device) @ x @ _cubic_weights(x.shape[-1], size[1], x.device).T


def _finish(x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """``[1,C,H,W]`` → ``[H,W,C]`` moved :data:`MEAN_BLEND` towards ``image``'s mean colour."""
    mean = image.float().mean(dim=(0, 1))
    out = x[0].movedim(0, -1) * (1 - MEAN_BLEND) + mean * MEAN_BLEND
    return out.clamp(0, 1).to(image.dtype)


def _gaussian_kernel(sigma: float, device) -> torch.Tensor:
    """1-D kernel of a Gaussian blur of ``sigma`` made of three box passes of fractional width
    (the "extended box" approximation PIL's GaussianBlur uses, so the A1111 look is kept)."""
    passes, var = 3, sigma * sigma / 3
    length = math.sqrt(12 * var + 1)
    whole = math.floor((length - 1) / 2)
    radius = whole + (2 * whole + 1) * (whole * (whole + 1) - 3 * var) / (6 * (var - (whole + 1) ** 2))
    tap = 1 / (2 * radius + 1)
    box = torch.full((2 * whole + 3,), tap, dtype=torch.float64, device=device)
    box[0] = box[-1] = (1 - (2 * whole + 1) * tap) / 2
    kernel = box
    for _ in range(passes - 1):
        kernel = F.conv1d(kernel.view(1, 1, -1), box.flip(0).view(1, 1, -1), padding=box.numel() - 1).view(-1)
    return kernel.float()


def _gaussian(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[1,C,H,W]`` (:func:`_gaussian_kernel`), edges extended."""
    kernel = _gaussian_kernel(sigma, x.device)
    radius, c = kernel.numel() // 2, x.shape[1]
    rows, cols = kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), rows, groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), cols, groups=c)


def blur(image: torch.Tensor) -> torch.Tensor:
    """``[H,W,C]`` 0..1 → at most :data:`BLUR_CELLS` soft cells across the long side, blurred with
    sigma = long side / 8, halfway to the mean colour. Same dtype and device."""
    h, w = image.shape[:2]
    long_side = max(h, w)
    cells = _box_resize(_to_nchw(image), (max(1, min(h, round(BLUR_CELLS * h / long_side))),
                                          max(1, min(w, round(BLUR_CELLS * w / long_side)))))
    scale = min(1.0, BLUR_WORK_SIDE / long_side)
    work = _cubic_resize(cells, (max(1, round(h * scale)), max(1, round(w * scale))))
    work = _gaussian(work, long_side / BLUR_SIGMA_FRACTION * scale)
    return _finish(F.interpolate(work, size=(h, w), mode="bilinear", align_corners=False), image)


def pixelate(image: torch.Tensor) -> torch.Tensor:
    """``[H,W,C]`` 0..1 → flat tiles of at least :data:`PIXEL_MIN_CELL` px, at most
    :data:`PIXEL_MAX_CELLS` across the long side, halfway to the mean colour."""
    h, w = image.shape[:2]
    long_side = max(h, w)
    scale = max(1, min(PIXEL_MAX_CELLS, long_side // PIXEL_MIN_CELL)) / long_side
    tiles = _box_resize(_to_nchw(image), (max(1, round(h * scale)), max(1, round(w * scale))))
    return _finish(F.interpolate(tiles, size=(h, w), mode="nearest-exact"), image)


def black(image: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(image)


def replacement_for(replacement: torch.Tensor, index: int, like: torch.Tensor) -> torch.Tensor:
    """Image ``index`` (cycling) of a ``[N,H',W',C']`` replacement batch, resized and channel-matched
    to the ``[H,W,C]`` image ``like``."""
    img = replacement[index % replacement.shape[0]].float()
    if img.shape[-1] != like.shape[-1]:
        img = img[..., :1].expand(*img.shape[:-1], like.shape[-1]) if img.shape[-1] == 1 else img[..., :like.shape[-1]]
    if img.shape[:2] != like.shape[:2]:
        img = F.interpolate(_to_nchw(img), size=tuple(like.shape[:2]), mode="bilinear", align_corners=False)
        img = img[0].movedim(0, -1).clamp(0, 1)
    return img.to(like.device, like.dtype)


_REDACT = {BLUR: blur, PIXELATE: pixelate, BLACK: black}


def redact(image: torch.Tensor, action: str) -> torch.Tensor:
    """One ``[H,W,C]`` image hidden by ``action`` (``blur`` | ``pixelate`` | ``black``; an old name is
    accepted; anything else, ``pass`` included, hides it as ``black``)."""
    return _REDACT[blocking_action(action)](image)


def redact_batch(images: torch.Tensor, hide: Sequence[bool], action: str,
                 replacement: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A copy of the ``[B,H,W,C]`` batch with every image whose ``hide`` flag is set hidden by
    ``action`` (``replace`` needs ``replacement``, ``[N,H',W',C']``); the others untouched."""
    if canonical_action(action) == REPLACE and replacement is None:
        raise ScdpoError("the gate action is 'replace' but no replacement image was given")
    out = images.clone()
    for i, hidden in enumerate(hide):
        if hidden:
            out[i] = (replacement_for(replacement, i, images[i]) if canonical_action(action) == REPLACE
                      else redact(images[i], action))
    return out


__all__ = [
    "ACTIONS", "ACTION_ALIASES", "BLACK", "BLOCKED_BY", "BLUR", "FAILED", "PASS", "PIXELATE", "REDACTIONS", "REPLACE",
    "SAFE", "UNSAFE", "Verdict", "blocked_message", "blocking_action", "black", "blur", "canonical_action",
    "checked_score", "cost_limit", "judge", "judge_preview", "pixelate", "redact", "redact_batch", "replacement_for",
    "verdicts_of",
]
