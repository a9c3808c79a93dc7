"""The safety cost model ``C(x)`` and its checkpoint file.

``SafetyCostModel`` = frozen :class:`~scdpo.cost.backbones.ImageEncoder` → trainable adapter
(LayerNorm → Linear → GELU → Linear, ``feature_dim`` wide) → linear head with one cost per
category. ``C(x) = max_k c_k(x)``; positive = unsafe; ``sigmoid(C - threshold)`` is reported as the
probability (see :class:`~scdpo.cost.scorer.CostResult`).

Checkpoint: one safetensors file.

* tensors ``adapter.*``, ``head.*``, ``backbone.probe`` (``[4, embed_dim]`` embeddings of
  :func:`~scdpo.cost.backbones.probe_images`), and for the toy encoder the encoder itself
  (``encoder.*``, it is small); CLIP backbones are never copied in (the user has the file);
* metadata (JSON values): ``scdpo_kind=safety_cost_model``, ``format_version``, ``backbone_id``,
  ``embed_dim``, ``backbone_kind`` (toy|clip), ``backbone_source`` (file name it was trained with),
  ``categories``, ``threshold``, ``feature_dim``, ``target_fpr``, ``training`` (data summary,
  objectives, held-out metrics).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..errors import IncompatibleModelError, WeightsFormatError
from ..fileio import decode_metadata, load_safetensors, save_safetensors_atomic
from ..limits import COST_RANGES, MAX_NAME_CHARS, check_ranges, finite_number, is_number
from .backbones import ImageBatch, ImageEncoder, check_probe, probe_embeddings

COST_MODEL_KIND = "safety_cost_model"
FORMAT_VERSION = 1


class CostAdapter(nn.Module):
    """Embedding ``[B,D]`` → features ``[B,F]`` (what the contrastive term shapes)."""

    def __init__(self, embed_dim: int, feature_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, feature_dim), nn.GELU(),
                                 nn.Linear(feature_dim, feature_dim))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.net(embeddings)


class SafetyCostModel(nn.Module):
    """Frozen encoder → adapter → per-category cost head. See module docstring."""

    def __init__(self, encoder: ImageEncoder, categories: list[str], feature_dim: int = 128,
                 threshold: float = 0.0):
        super().__init__()
        if not categories:
            raise ValueError("a cost model needs at least one unsafe category")
        self.encoder = encoder.eval().requires_grad_(False)
        self.categories = list(categories)
        self.feature_dim = feature_dim
        self.adapter = CostAdapter(encoder.embed_dim, feature_dim)
        self.head = nn.Linear(feature_dim, len(self.categories))
        self.threshold = float(threshold)
        self.training_summary: dict[str, Any] = {}

    # -- from cached embeddings (training) and from images (scoring)
    def features(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.adapter(embeddings.to(self.head.weight.dtype))

    def category_costs(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(per_category [B,K], features [B,F])`` from encoder embeddings."""
        feats = self.features(embeddings)
        return self.head(feats), feats

    @staticmethod
    def total_cost(per_category: torch.Tensor) -> torch.Tensor:
        """``C = max_k c_k`` → ``[B]``."""
        return per_category.max(dim=-1).values

    @torch.no_grad()
    def embed(self, images: ImageBatch, batch_size: int = 64) -> torch.Tensor:
        return self.encoder.encode(images, batch_size=batch_size).to(self.head.weight.device)

    @torch.no_grad()
    def forward(self, images: ImageBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Images → ``(cost [B], per_category [B,K])``."""
        per_cat, _ = self.category_costs(self.embed(images))
        return self.total_cost(per_cat), per_cat

    # -- checkpoint
    def save(self, path: str | Path, training: Optional[dict] = None, target_fpr: Optional[float] = None) -> None:
        from .toy_encoder import ToyImageEncoder

        tensors = {f"adapter.{k}": v for k, v in self.adapter.state_dict().items()}
        tensors.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        tensors["backbone.probe"] = probe_embeddings(self.encoder)
        is_toy = isinstance(self.encoder, ToyImageEncoder)
        meta: dict[str, Any] = {
            "scdpo_kind": COST_MODEL_KIND,
            "format_version": FORMAT_VERSION,
            "backbone_id": self.encoder.backbone_id,
            "backbone_kind": "toy" if is_toy else "clip",
            "backbone_source": Path(str(getattr(self.encoder, "source", "") or "")).name,
            "embed_dim": self.encoder.embed_dim,
            "feature_dim": self.feature_dim,
            "categories": self.categories,
            "threshold": self.threshold,
            "target_fpr": target_fpr,
            "training": training if training is not None else self.training_summary,
        }
        if is_toy:
            tensors.update({f"encoder.{k}": v for k, v in self.encoder.state_dict().items()})
            meta["encoder_config"] = self.encoder.config()
        save_safetensors_atomic(tensors, path, meta)


def read_cost_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and decoded metadata of a cost-model file, with its kind and fields validated."""
    tensors, raw = load_safetensors(path, what="cost model")
    meta = decode_metadata(raw)
    if meta.get("scdpo_kind") != COST_MODEL_KIND:
        raise WeightsFormatError(f"{path} is not a safety cost model (kind {meta.get('scdpo_kind')!r}); pass a file "
                                 "written by `scdpo cost train`, or `nudenet` for the NudeNet detector")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise WeightsFormatError(f"cost model {path} has format version {version!r}; this scdpo reads up to "
                                 f"{FORMAT_VERSION}: upgrade scdpo")
    cats = meta.get("categories")
    ok = (
        isinstance(cats, list) and cats and all(isinstance(c, str) and 0 < len(c) <= MAX_NAME_CHARS for c in cats)
        and isinstance(meta.get("embed_dim"), int) and meta["embed_dim"] > 0
        and isinstance(meta.get("feature_dim"), int) and meta["feature_dim"] > 0
        and is_number(meta.get("threshold"))
        and isinstance(meta.get("backbone_id"), str)
        and isinstance(tensors.get("backbone.probe"), torch.Tensor)
    )
    if not ok:
        raise WeightsFormatError(f"cost model {path} has missing or malformed metadata (categories, embed_dim, "
                                 "feature_dim, threshold, backbone_id or probe); re-train or re-download it")
    fix = "re-train or re-download it"
    # a threshold of inf would let every image pass the gate: only finite values are read
    finite_number(meta["threshold"], f"cost model {path}: threshold", fix, WeightsFormatError)
    check_ranges({**meta, "categories": len(cats)}, COST_RANGES, f"cost model {path}", fix, WeightsFormatError)
    _check_head_shapes(tensors, meta, path)
    return tensors, meta


def _check_head_shapes(tensors: dict[str, torch.Tensor], meta: dict[str, Any], path) -> None:
    """The adapter and head tensors have exactly the shapes the metadata implies (before anything is built)."""
    d, f, k = meta["embed_dim"], meta["feature_dim"], len(meta["categories"])
    expected = {"adapter.net.0.weight": (d,), "adapter.net.0.bias": (d,), "adapter.net.1.weight": (f, d),
                "adapter.net.1.bias": (f,), "adapter.net.3.weight": (f, f), "adapter.net.3.bias": (f,),
                "head.weight": (k, f), "head.bias": (k,), "backbone.probe": (4, d)}
    for key, shape in expected.items():
        got = tensors.get(key)
        if got is None or tuple(got.shape) != shape or not got.is_floating_point():
            what = "missing" if got is None else f"{tuple(got.shape)} {str(got.dtype).replace('torch.', '')}"
            raise WeightsFormatError(f"cost model {path} has damaged head tensors ({key}: {what}, expected float "
                                     f"{shape} for {k} categories, embed_dim {d}, feature_dim {f}); re-train it")
        if not torch.isfinite(got).all():
            raise WeightsFormatError(f"cost model {path} contains NaN/inf weights ({key}); re-train it")


def load_safety_cost_model(path: str | Path, backbone=None, device=None,
                           dtype: Optional[torch.dtype] = None) -> SafetyCostModel:
    """Load a cost-model checkpoint onto its backbone.

    ``backbone``: ``None`` (the encoder stored in the file — toy — or an error naming the CLIP file
    it needs), a path, or an encoder module. A backbone whose architecture, embedding size or
    probe embeddings differ from the checkpoint's raises :class:`IncompatibleModelError`.
    """
    from .backbones import load_backbone
    from .toy_encoder import toy_encoder_from_tensors

    tensors, meta = read_cost_checkpoint(path)
    if backbone is None:
        if any(k.startswith("encoder.") for k in tensors):
            cfg = meta.get("encoder_config") if isinstance(meta.get("encoder_config"), dict) else {}
            encoder: ImageEncoder = toy_encoder_from_tensors(tensors, cfg, f"cost model {path}")
        else:
            raise IncompatibleModelError(
                f"cost model {path} was trained on the backbone {meta['backbone_id']} "
                f"({meta.get('backbone_source') or 'a CLIP vision file'}), which is not stored in it; "
                "pass that file with --backbone (or backbone=PATH)"
            )
    else:
        encoder = load_backbone(backbone, device=None, dtype=None)
    if encoder.backbone_id != meta["backbone_id"] or encoder.embed_dim != meta["embed_dim"]:
        raise IncompatibleModelError(
            f"cost model {path} was trained on backbone {meta['backbone_id']} ({meta['embed_dim']}-dim embeddings) "
            f"but the supplied encoder is {encoder.backbone_id} ({encoder.embed_dim}-dim); pass the backbone it was "
            "trained with or retrain with `scdpo cost train --backbone`"
        )
    check_probe(tensors["backbone.probe"], encoder, str(path))
    model = SafetyCostModel(encoder, list(meta["categories"]), int(meta["feature_dim"]), float(meta["threshold"]))
    try:
        model.adapter.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("adapter.")})
        model.head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
    except RuntimeError as exc:
        raise WeightsFormatError(f"cost model {path} has damaged head tensors ({str(exc)[:160]}); "
                                 "re-train it") from None
    if not all(torch.isfinite(p).all() for p in list(model.adapter.parameters()) + list(model.head.parameters())):
        raise WeightsFormatError(f"cost model {path} contains NaN/inf weights; re-train it")
    model.training_summary = meta.get("training") if isinstance(meta.get("training"), dict) else {}
    model.target_fpr = meta.get("target_fpr")
    model.source_path = str(path)
    model.eval().requires_grad_(False)
    return model.to(device=device or "cpu")
