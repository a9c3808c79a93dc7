"""The safety cost model ``C(x)`` (positive = unsafe): encoders, head, checkpoint, scoring, training.

Public API (see CONTRACTS "Safety cost model"):

* :func:`load_cost_model` ``(path | "toy" | "nudenet", backbone=None, device=None) -> CostScorer``
* :class:`CostScorer` ``.score(images) -> CostResult``, ``.categories``, ``.threshold``, ``.device``, ``.to()``
* :class:`SafetyCostModel`, :func:`load_safety_cost_model` (checkpoint I/O)
* :func:`load_backbone`, :func:`load_clip_vision`, :class:`ImageEncoder` (frozen encoders)
* ``scdpo.cost.nudenet_backend.NudeNetScorer`` (optional ``nudenet`` extra; imported lazily)
* :func:`load_clip_model`, :class:`ClipModel` (a full CLIP: image and text towers, for the CLIP reward),
  :class:`ZeroShotClipScorer` (``clip-zero-shot:PATH``), :class:`CombinedScorer` (``nudenet+...``)
"""

from .backbones import ClipVisionEncoder, ImageEncoder, load_backbone, load_clip_vision
from .clip_model import ClipModel, load_clip_model
from .model import COST_MODEL_KIND, SafetyCostModel, load_safety_cost_model
from .scorer import CombinedScorer, CostResult, CostScorer, load_cost_model, shipped_toy_cost_model
from .zero_shot import ZeroShotClipScorer

__all__ = [
    "COST_MODEL_KIND",
    "ClipModel",
    "ClipVisionEncoder",
    "CombinedScorer",
    "CostResult",
    "CostScorer",
    "ImageEncoder",
    "SafetyCostModel",
    "load_backbone",
    "load_clip_model",
    "load_clip_vision",
    "load_cost_model",
    "load_safety_cost_model",
    "shipped_toy_cost_model",
    "ZeroShotClipScorer",
]
