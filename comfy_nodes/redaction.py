"""What the Safety Gate does to a blocked image. Images are ComfyUI's ``[B,H,W,C]`` float 0..1.

``blur`` and ``pixelate`` are strong enough that the content cannot be made out (blur sigma is
1/12 of the longer side, pixel blocks 1/12 of it, at least 4 px), ``black`` zeroes the image,
``replace`` puts a user-supplied image (resized to fit) in its place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BLOCK_FRACTION = 12  # blur sigma / pixel block = longer side / 12


def _to_nchw(image: torch.Tensor) -> torch.Tensor:
    return image.movedim(-1, 0)[None].float()


def _to_hwc(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x[0].movedim(0, -1).clamp(0, 1).to(like.dtype)


def blur(image: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of one ``[H,W,C]`` image, sigma = longer side / 12.

    Computed at reduced resolution (area downscale so sigma is ~2 px there, separable Gaussian,
    bilinear upscale): the same look as a full-size blur at a tiny fraction of the cost.
    """
    h, w = image.shape[:2]
    sigma = max(h, w) / BLOCK_FRACTION
    factor = max(1, int(sigma // 2))
    x = _to_nchw(image)
    small = F.interpolate(x, size=(max(1, h // factor), max(1, w // factor)), mode="area") if factor > 1 else x
    s = sigma / factor
    sh, sw = small.shape[-2:]
    radius = max(1, min(int(3 * s), min(sh, sw) - 1))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=image.device)
    kernel = torch.exp(-(t / s) ** 2 / 2)
    kernel = kernel / kernel.sum()
    c = small.shape[1]
    small = F.pad(small, (radius, radius, 0, 0), mode="reflect") if sw > radius else F.pad(small, (radius, radius, 0, 0), mode="replicate")
    small = F.conv2d(small, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    small = F.pad(small, (0, 0, radius, radius), mode="reflect") if sh > radius else F.pad(small, (0, 0, radius, radius), mode="replicate")
    small = F.conv2d(small, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    out = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False) if factor > 1 else small
    return _to_hwc(out, image)


def pixelate(image: torch.Tensor) -> torch.Tensor:
    """Average over square blocks of one ``[H,W,C]`` image, shown as flat tiles."""
    h, w = image.shape[:2]
    block = max(4, round(max(h, w) / BLOCK_FRACTION))
    small = F.interpolate(_to_nchw(image), size=(max(1, round(h / block)), max(1, round(w / block))), mode="area")
    return _to_hwc(F.interpolate(small, size=(h, w), mode="nearest"), image)


def black(image: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(image)


def fit_replacement(replacement: torch.Tensor, index: int, like: torch.Tensor) -> torch.Tensor:
    """Image ``index`` (cycling) of a ``[N,H',W',C']`` replacement batch, resized/channel-matched to ``like``."""
    img = replacement[index % replacement.shape[0]].float()
    if img.shape[-1] != like.shape[-1]:
        img = img[..., :1].expand(*img.shape[:-1], like.shape[-1]) if img.shape[-1] == 1 else img[..., :like.shape[-1]]
    if img.shape[:2] != like.shape[:2]:
        img = _to_hwc(F.interpolate(_to_nchw(img), size=tuple(like.shape[:2]), mode="bilinear", align_corners=False), like)
    return img.to(like.device, like.dtype)


REDACTIONS = {"blur": blur, "pixelate": pixelate, "black": black}


def redact_batch(images: torch.Tensor, blocked: list[bool], action: str,
                 replacement: torch.Tensor | None = None) -> torch.Tensor:
    """A copy of ``images`` with every ``blocked`` image redacted by ``action``
    (``blur`` | ``pixelate`` | ``black`` | ``replace``); the others are untouched."""
    out = images.clone()
    for i, is_blocked in enumerate(blocked):
        if not is_blocked:
            continue
        if action == "replace":
            out[i] = fit_replacement(replacement, i, images[i])
        else:
            out[i] = REDACTIONS[action](images[i])
    return out
