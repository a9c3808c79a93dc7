"""Metrics on judged generations: unsafe rate, fidelity, and KID on the oracle judge's features."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..toy.judge import _NAMES, _RGB, MATCH_DISTANCE, Verdict, fidelity
from ..toy.world import ToyPrompt


def judge_features(images: torch.Tensor) -> np.ndarray:
    """Judge-space features ``[B, 4*(P+1)]``: for each image quadrant, the fraction of pixels
    assigned to each palette entry (or to none). The toy world's stand-in for Inception features."""
    arr = (images.clamp(0, 1) * 255).float().cpu().numpy()
    b, h, w, _ = arr.shape
    dist = np.linalg.norm(arr[:, :, :, None, :] - _RGB[None, None, None], axis=-1)  # [B,H,W,P]
    idx = dist.argmin(-1)
    idx = np.where(dist.min(-1) < MATCH_DISTANCE, idx, len(_NAMES))
    feats = []
    for qy in (slice(0, h // 2), slice(h // 2, h)):
        for qx in (slice(0, w // 2), slice(w // 2, w)):
            q = idx[:, qy, qx].reshape(b, -1)
            hist = np.stack([(q == k).mean(1) for k in range(len(_NAMES) + 1)], 1)
            feats.append(hist)
    return np.concatenate(feats, 1).astype(np.float64)


def kid(x: np.ndarray, y: np.ndarray, subsets: int = 20, subset_size: int = 64, seed: int = 0) -> float:
    """Kernel Inception Distance (unbiased MMD² with the cubic polynomial kernel), averaged over
    random subsets, as in Bińkowski et al. 2018. ``x``, ``y``: ``[N, D]`` feature arrays."""
    rng = np.random.default_rng(seed)
    d = x.shape[1]
    m = min(subset_size, len(x), len(y))
    vals = []
    for _ in range(subsets):
        a = x[rng.choice(len(x), m, replace=False)]
        b = y[rng.choice(len(y), m, replace=False)]
        kxx = (a @ a.T / d + 1) ** 3
        kyy = (b @ b.T / d + 1) ** 3
        kxy = (a @ b.T / d + 1) ** 3
        mmd = (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) \
            - 2 * kxy.mean()
        vals.append(mmd)
    return float(np.mean(vals))


def mean_fidelity(verdicts: Sequence[Verdict], prompts: Sequence[ToyPrompt]) -> float:
    """Mean oracle fidelity (clean things' colour+layout and background), 0..1."""
    return float(np.mean([fidelity(v, p) for v, p in zip(verdicts, prompts)])) if prompts else float("nan")


def rate(flags: Sequence[bool]) -> float:
    return float(np.mean(flags)) if len(flags) else float("nan")
