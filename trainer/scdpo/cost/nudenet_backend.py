"""NudeNet as a ready, training-free cost source for the ``nudity`` category.

The ``nudenet`` package (optional extra: ``pip install "scdpo-safe-diffusion[nudenet]"``) ships
its YOLO detector as ONNX inside the wheel, so nothing is downloaded. We run its ONNX session
on our own batch (same preprocessing as ``nudenet._read_image`` applies to a file or a BGR array:
pad bottom/right to a square with black, resize to 320, /255, channels in B,G,R order — its
colour conversions end there) and read the raw per-anchor class scores, so every image
gets a score for every class, not only detections above NudeNet's fixed 0.2 cut-off.

Cost: ``p = max`` over anchors and over the *exposed* classes in :data:`UNSAFE_CLASSES`;
``C = logit(p)`` (clamped to ``[1e-4, 1 - 1e-4]``); the threshold is ``logit(threshold_probability)``
(0.5 by default, so ``threshold = 0``). Covered body parts, faces, feet etc. never add cost.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..errors import ScdpoError
from .scorer import CostResult, ProgressFn, images_to_list, make_result

UNSAFE_CLASSES = (
    "FEMALE_GENITALIA_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "BUTTOCKS_EXPOSED",
    "ANUS_EXPOSED",
)
INPUT_SIZE = 320


def _import_nudenet():
    try:
        import cv2  # noqa: F401  (nudenet's dependency; used for the resize)
        import nudenet
        import nudenet.nudenet as nudenet_impl
    except ImportError:
        raise ScdpoError('the NudeNet backend needs the `nudenet` package: pip install "scdpo-safe-diffusion[nudenet]"'
                         " (or pip install nudenet)") from None
    return nudenet, nudenet_impl


def preprocess_rgb(image: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """``[H,W,3]`` uint8 RGB → ``[1,3,size,size]`` float32 (B,G,R planes), exactly what NudeNet's own
    reader feeds its network for an image file."""
    import cv2

    image = np.ascontiguousarray(image[..., ::-1])  # RGB → BGR, the order NudeNet's network receives
    h, w = image.shape[:2]
    side = max(h, w)
    padded = cv2.copyMakeBorder(image, 0, side - h, 0, side - w, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    resized = cv2.resize(padded, (size, size), interpolation=cv2.INTER_LINEAR)
    return (resized.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]


class NudeNetScorer:
    """The :class:`~scdpo.cost.scorer.CostScorer` interface on top of NudeNet's detector."""

    categories = ["nudity"]
    name = "NudeNet"

    def __init__(self, threshold_probability: float = 0.5, model_path: Optional[str] = None):
        if not 0.0 < threshold_probability < 1.0:
            raise ScdpoError(f"NudeNet threshold probability must be in (0, 1), got {threshold_probability}")
        nudenet, impl = _import_nudenet()
        path = model_path or str(Path(nudenet.__file__).parent / "320n.onnx")
        try:
            self.detector = impl.NudeDetector(model_path=path)
        except Exception as exc:  # onnxruntime raises its own types for a bad model file
            raise ScdpoError(f"cannot load the NudeNet detector {path} ({exc}); reinstall nudenet") from None
        labels = list(getattr(impl, "__labels", None) or impl.__dict__.get("__labels", []))
        if not labels:
            raise ScdpoError("this nudenet version has no class list; install nudenet>=3.4")
        self.labels = labels
        self.unsafe_index = [labels.index(c) for c in UNSAFE_CLASSES if c in labels]
        self.threshold_probability = threshold_probability
        self.threshold = math.log(threshold_probability / (1 - threshold_probability))
        self.device = torch.device("cpu")

    def to(self, device=None, dtype=None) -> "NudeNetScorer":
        return self  # onnxruntime CPU session; nothing to move

    def class_scores(self, images_uint8: Sequence[np.ndarray]) -> np.ndarray:
        """``[B, n_classes]``: max over anchors of each NudeNet class score (0..1)."""
        if not len(images_uint8):
            return np.zeros((0, len(self.labels)), np.float32)
        blob = np.concatenate([preprocess_rgb(img) for img in images_uint8])
        try:
            (raw,) = self.detector.onnx_session.run(None, {self.detector.input_name: blob})[:1]
        except Exception as exc:
            raise ScdpoError(f"NudeNet failed on a batch of {len(blob)} image(s) ({exc})") from None
        return raw[:, 4:4 + len(self.labels), :].max(axis=-1)  # raw: [B, 4 + n_classes, anchors]

    def score(self, images, batch_size: int = 8, progress: Optional[ProgressFn] = None) -> CostResult:
        batch = images_to_list(images)
        n = len(batch)
        costs = []
        for start in range(0, n, batch_size):
            chunk = [(img.clamp(0, 1) * 255).round().to(torch.uint8).numpy() for img in batch[start:start + batch_size]]
            scores = self.class_scores(chunk)
            p = np.clip(scores[:, self.unsafe_index].max(axis=1), 1e-4, 1 - 1e-4)
            costs.append(torch.from_numpy(np.log(p / (1 - p))).float()[:, None])
            if progress is not None:
                progress(min(start + batch_size, n), n)
        per_category = torch.cat(costs) if costs else torch.zeros(0, 1)
        return make_result(per_category, self.categories, self.threshold)

    def weak_labels(self, images, batch_size: int = 8) -> list[Optional[str]]:
        """``"nudity"`` / ``None`` per image: NudeNet as a weak labeller for cost-model data."""
        result = self.score(images, batch_size=batch_size)
        return ["nudity" if u else None for u in result.unsafe.tolist()]
