"""Scoring images with a cost model: the one entry point the trainer and the host adapters use.

``load_cost_model(spec, backbone=None, device=None) -> CostScorer`` (spec: a checkpoint, ``toy``,
``nudenet``, ``clip-zero-shot:PATH`` or ``nudenet+clip-zero-shot:PATH``; the last three return scorers
with the same interface) and ``CostScorer.score(images) -> CostResult``. Every failure raises (a
:class:`~scdpo.errors.ScdpoError` for user-causable ones), so a gate built on it fails closed.

:class:`CostResult` fields, exactly:

* ``cost`` ``[B]`` float32 CPU: ``C(x)`` (positive = unsafe, 0 is the anchoring margin's centre);
* ``per_category`` ``[B,K]``: one cost per category (``cost`` is their max);
* ``categories``: the K names;
* ``threshold``: the calibrated decision threshold stored in the checkpoint;
* ``unsafe`` ``[B]`` bool: ``cost > threshold``;
* ``probability`` ``[B]``: ``sigmoid(cost - threshold)``: > 0.5 exactly when ``unsafe``. (With a
  threshold of 0 this is the ``sigmoid(C)`` of docs/method.md §1; shifting by the calibrated
  threshold keeps the probability and the verdict consistent.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from ..errors import InputFileError, ScdpoError

ProgressFn = Callable[[int, int], None]


@dataclass
class CostResult:
    cost: torch.Tensor
    per_category: torch.Tensor
    categories: list[str]
    probability: torch.Tensor
    unsafe: torch.Tensor
    threshold: float

    def __len__(self) -> int:
        return len(self.cost)

    def top_category(self, i: int) -> Optional[str]:
        """The category with the highest cost for image ``i`` if it is unsafe, else None."""
        if not bool(self.unsafe[i]):
            return None
        return self.categories[int(self.per_category[i].argmax())]

    def rows(self) -> list[dict]:
        """One JSON-ready dict per image."""
        out = []
        for i in range(len(self)):
            row = {"cost": float(self.cost[i]), "probability": float(self.probability[i]),
                   "unsafe": bool(self.unsafe[i]), "category": self.top_category(i)}
            row.update({f"cost_{c}": float(self.per_category[i, k]) for k, c in enumerate(self.categories)})
            out.append(row)
        return out


def make_result(per_category: torch.Tensor, categories: Sequence[str], threshold: float) -> CostResult:
    per_category = per_category.detach().float().cpu()
    cost = per_category.max(dim=-1).values if per_category.numel() else torch.zeros(len(per_category))
    return CostResult(cost=cost, per_category=per_category, categories=list(categories),
                      probability=torch.sigmoid(cost - threshold), unsafe=cost > threshold, threshold=float(threshold))


def images_to_list(images) -> Union[torch.Tensor, list[torch.Tensor]]:
    """``[B,H,W,C]`` float 0..1 tensor (returned as is, 3 channels kept), or a list of PIL images /
    ``[H,W,C]`` uint8 or float arrays → list of float ``[H,W,3]`` 0..1 tensors."""
    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[-1] not in (1, 3, 4):
            raise ScdpoError(f"images must be [B,H,W,C] with C in 1/3/4, got shape {tuple(images.shape)}")
        x = images.float()
        if x.shape[-1] == 1:
            x = x.expand(*x.shape[:-1], 3)
        return x[..., :3]
    out = []
    for img in images:
        if hasattr(img, "convert") and hasattr(img, "size"):  # PIL
            arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
        else:
            arr = np.asarray(img.detach().cpu() if isinstance(img, torch.Tensor) else img)
            arr = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)
            if arr.ndim == 2:
                arr = np.stack([arr] * 3, -1)
            if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
                raise ScdpoError(f"each image must be [H,W,3], got shape {arr.shape}")
            arr = arr[..., :3]
        out.append(torch.from_numpy(np.ascontiguousarray(arr)))
    return out


class CostScorer:
    """Batched, device-aware scoring with a :class:`~scdpo.cost.model.SafetyCostModel`."""

    def __init__(self, model, name: str = "cost model"):
        self.model = model
        self.name = name

    @property
    def categories(self) -> list[str]:
        return list(self.model.categories)

    @property
    def threshold(self) -> float:
        return float(self.model.threshold)

    @property
    def device(self) -> torch.device:
        return self.model.head.weight.device

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "CostScorer":
        """Move to ``device``; ``dtype`` applies to the frozen encoder only (the head stays float32)."""
        self.model.to(device=device)
        if dtype is not None:
            self.model.encoder.to(dtype=dtype)
        return self

    @torch.no_grad()
    def score(self, images, batch_size: int = 16, progress: Optional[ProgressFn] = None) -> CostResult:
        """Cost of each image: ``[B,H,W,C]`` float 0..1 tensor or a list of PIL images / arrays."""
        batch = images_to_list(images)
        n = len(batch)
        parts = []
        for start in range(0, n, batch_size):
            chunk = batch[start:start + batch_size]
            _, per_cat = self.model(chunk)
            parts.append(per_cat.float().cpu())
            if progress is not None:
                progress(min(start + batch_size, n), n)
        per_category = torch.cat(parts) if parts else torch.zeros(0, len(self.categories))
        if not torch.isfinite(per_category).all():
            raise ScdpoError(f"{self.name} produced NaN/inf costs (broken weights or inputs); refusing to pass images")
        return make_result(per_category, self.categories, self.threshold)


class CombinedScorer:
    """Several scorers as one (the :class:`CostScorer` interface): each category comes from the first
    part that has it, e.g. ``nudity`` from NudeNet and the other categories from a CLIP zero-shot
    scorer. A part's costs are shifted by its own threshold, so the combined threshold is 0 and each
    part's verdicts are kept: ``c_k − threshold_part``."""

    threshold = 0.0

    def __init__(self, parts: Sequence):
        if not parts:
            raise ScdpoError("a combined cost model needs at least one part")
        self.parts, self.take = list(parts), []
        self.categories: list[str] = []
        for part in self.parts:
            idx = [i for i, c in enumerate(part.categories) if c not in self.categories]
            self.take.append(idx)
            self.categories.extend(part.categories[i] for i in idx)
        self.name = " + ".join(getattr(p, "name", type(p).__name__) for p in self.parts)

    @property
    def device(self) -> torch.device:
        return self.parts[-1].device

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "CombinedScorer":
        for part in self.parts:
            part.to(device, dtype)
        return self

    def score(self, images, batch_size: int = 16, progress: Optional[ProgressFn] = None) -> CostResult:
        batch = images_to_list(images)
        cols = []
        for part, idx in zip(self.parts, self.take):
            if idx:
                result = part.score(batch, batch_size=batch_size)
                cols.append(result.per_category[:, idx] - result.threshold)
        if progress is not None:
            progress(len(batch), len(batch))
        return make_result(torch.cat(cols, dim=1), self.categories, self.threshold)

    def weak_labels(self, images, batch_size: int = 16) -> list[Optional[str]]:
        """The top category of each image called unsafe, else None (safe)."""
        result = self.score(images, batch_size=batch_size)
        return [result.top_category(i) for i in range(len(result))]


def load_cost_model(path: Union[str, Path] = "toy", backbone=None, device=None,
                    dtype: Optional[torch.dtype] = None):
    """A :class:`CostScorer` (or a scorer with its interface) for a cost-model spec.

    ``path``: a ``.safetensors`` cost model, ``"toy"`` (the shipped toy cost model), ``"nudenet"``,
    ``"clip-zero-shot:PATH"`` (zero-shot concept prompts on the full CLIP model at PATH, see
    :mod:`scdpo.cost.zero_shot`; ``"clip-zero-shot"`` alone takes PATH from ``backbone``), or
    ``"nudenet+SPEC"`` (nudity from NudeNet, the other categories from SPEC).
    ``backbone``: ``None`` (use the encoder inside the file; needed for CLIP-based models), a path
    to a CLIP vision file/folder or toy encoder, or an encoder module.
    """
    from ..models import resolve_device
    from .model import load_safety_cost_model

    dev = resolve_device(device) if device is not None else torch.device("cpu")
    spec = str(path)
    if spec.lower() == "nudenet":
        from .nudenet_backend import NudeNetScorer

        return NudeNetScorer()
    if spec.lower().startswith("nudenet+"):
        rest = load_cost_model(spec[len("nudenet+"):], backbone=backbone, device=device, dtype=dtype)
        return CombinedScorer([load_cost_model("nudenet"), rest])
    if spec.lower().split(":", 1)[0] == "clip-zero-shot":
        from .zero_shot import load_zero_shot_scorer

        clip_path = spec.split(":", 1)[1] if ":" in spec else ""
        if clip_path and backbone is not None and str(backbone) != clip_path:
            raise ScdpoError(f"{spec} names its CLIP model already; drop --backbone {backbone} (or pass "
                             "clip-zero-shot alone with --backbone)")
        clip_path = clip_path or (str(backbone) if isinstance(backbone, (str, Path)) else "")
        if not clip_path:
            raise ScdpoError("clip-zero-shot needs a full CLIP model: clip-zero-shot:PATH, PATH a transformers CLIP "
                             "folder (config.json + model.safetensors) or an open_clip .safetensors file")
        return load_zero_shot_scorer(clip_path, device=dev, dtype=dtype)
    if spec in ("toy", ""):
        path = shipped_toy_cost_model()
    model = load_safety_cost_model(path, backbone=backbone, device=dev)
    scorer = CostScorer(model, name=f"cost model {Path(path).name}")
    if dtype is not None:
        scorer.to(dev, dtype)
    return scorer


def shipped_toy_cost_model() -> Path:
    from ..toy.model import weights_dir

    path = weights_dir() / "toy_cost_model.safetensors"
    if not path.exists():
        raise InputFileError(f"the shipped toy cost model {path} is missing; reinstall from a full checkout or "
                             "re-create it with `scdpo cost train --out weights/toy_cost_model.safetensors`")
    return path
