"""Frozen image encoders ("backbones") under the safety cost model.

An :class:`ImageEncoder` maps images to one embedding per image. Two kinds exist:

* the toy-world encoder (:mod:`scdpo.cost.toy_encoder`), the default for the toy world;
* **CLIP vision** (:class:`ClipVisionEncoder`), loaded offline through transformers from a local
  diffusers/transformers folder (``config.json`` + ``model.safetensors``), from one
  ``.safetensors`` file as ComfyUI keeps them in ``models/clip_vision/`` (ViT-L/14, ViT-H, bigG), or
  from the image tower of a full CLIP (a Hugging Face cache entry, an open_clip file): every form
  :mod:`scdpo.cost.clip_files` reads. :class:`scdpo.cost.clip_model.ClipModel` adds the text tower.

Images everywhere are ``[B,H,W,C]`` float 0..1 tensors, or a list of ``[H,W,C]`` tensors of
different sizes; every encoder resizes to its own input size.

A cost-model checkpoint records its backbone by ``backbone_id`` (architecture), ``embed_dim`` and
the embeddings of a few fixed *probe images*: loading the head onto an encoder whose probe
embeddings differ (other weights, same architecture) is refused, not silently wrong.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import IncompatibleModelError, WeightsFormatError
from ..fileio import read_safetensors_header
from ..limits import check_ranges

ImageBatch = Union[torch.Tensor, Sequence[torch.Tensor]]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PROBE_COSINE_MIN = 0.98  # probe embeddings of the right weights agree far above this (fp16 ≈ 0.9999)


class ImageEncoder(torch.nn.Module):
    """Frozen image → embedding map. Subclasses set ``backbone_id``, ``embed_dim`` and implement
    :meth:`pixel_batch` (resize + normalise) and :meth:`embed_pixels`."""

    backbone_id: str = "unknown"
    embed_dim: int = 0
    input_size: int = 224

    def pixel_batch(self, images: ImageBatch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @torch.no_grad()
    def encode(self, images: ImageBatch, batch_size: int = 64) -> torch.Tensor:
        """Embeddings ``[B, embed_dim]`` float32 on the encoder's device."""
        n = len(images)
        out = []
        for start in range(0, n, batch_size):
            chunk = images[start:start + batch_size]
            pixels = self.pixel_batch(chunk).to(self.device, self.dtype)
            out.append(self.embed_pixels(pixels).float())
        if not out:
            return torch.zeros(0, self.embed_dim, device=self.device)
        return torch.cat(out)

    def weights_digest(self) -> str:
        """Short hash of the weights (for embedding-cache keys; not a security measure)."""
        h = hashlib.sha1(self.backbone_id.encode())
        for name, p in sorted(self.state_dict().items()):
            if p.numel() and p.is_floating_point():
                h.update(name.encode())
                h.update(p.detach().float().cpu().flatten()[:4096].numpy().tobytes())
        return h.hexdigest()[:16]


def resize_square(images: ImageBatch, size: int) -> torch.Tensor:
    """Resize the short side to ``size`` and centre-crop (CLIP's preprocessing) → ``[B,3,S,S]`` 0..1."""
    if isinstance(images, torch.Tensor) and images.dim() == 4 and images.shape[1] == images.shape[2] == size:
        return images.permute(0, 3, 1, 2).float()
    out = []
    for img in images:
        x = torch.as_tensor(img).float().permute(2, 0, 1)[None]  # [1,C,H,W]
        h, w = x.shape[-2:]
        if (h, w) != (size, size):
            scale = size / min(h, w)
            nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
            top, left = (nh - size) // 2, (nw - size) // 2
            x = x[..., top:top + size, left:left + size]
        out.append(x.clamp(0, 1))
    return torch.cat(out)


def probe_images(size: int = 64) -> torch.Tensor:
    """Four fixed images ``[4,size,size,3]`` 0..1 (gradients, checkerboard, discs) used to
    fingerprint an encoder's weights. Deterministic, no RNG."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    r = np.hypot(x - 0.5, y - 0.5)
    imgs = [
        np.stack([x, y, 1 - x], -1),
        np.stack([((x * 8).astype(int) + (y * 8).astype(int)) % 2] * 3, -1).astype(np.float32),
        np.stack([(r < 0.3), (r < 0.2), (r > 0.4)], -1).astype(np.float32),
        np.stack([0.5 + 0.5 * np.sin(12 * x), 0.5 + 0.5 * np.cos(9 * y), x * y], -1),
    ]
    return torch.from_numpy(np.stack(imgs)).float()


def probe_embeddings(encoder: ImageEncoder) -> torch.Tensor:
    return encoder.encode(probe_images()).float().cpu()


def check_probe(expected: torch.Tensor, encoder: ImageEncoder, cost_model_path: str) -> None:
    """Refuse an encoder whose probe embeddings differ from the ones the head was trained with."""
    got = probe_embeddings(encoder)
    if got.shape != expected.shape:
        raise IncompatibleModelError(
            f"cost model {cost_model_path} was trained on a {expected.shape[-1]}-dim backbone but the supplied "
            f"encoder gives {got.shape[-1]}-dim embeddings; pass the backbone it was trained with"
        )
    cos = F.cosine_similarity(got, expected.float(), dim=-1).min().item()
    if not cos >= PROBE_COSINE_MIN:
        raise IncompatibleModelError(
            f"cost model {cost_model_path} was trained on other weights of the backbone {encoder.backbone_id} "
            f"(probe-image embeddings agree only to cosine {cos:.3f}); pass the exact encoder file it was trained "
            "with (see its metadata `backbone_source`) or retrain the head with `scdpo cost train --backbone`"
        )


# --- CLIP vision ---------------------------------------------------------------------------------


class ClipVisionEncoder(ImageEncoder):
    """A transformers ``CLIPVisionModel`` / ``CLIPVisionModelWithProjection``; embedding = the
    projected image embedding when the file has ``visual_projection`` (what CLIP-score uses),
    else the pooled output."""

    def __init__(self, model: torch.nn.Module, source: str = ""):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        cfg = model.config
        self.has_projection = hasattr(model, "visual_projection")
        self.embed_dim = int(cfg.projection_dim if self.has_projection else cfg.hidden_size)
        self.input_size = int(cfg.image_size)
        self.source = source
        self.backbone_id = (
            f"clip-vision:h{cfg.hidden_size}-l{cfg.num_hidden_layers}-p{cfg.patch_size}"
            f"-s{cfg.image_size}-d{self.embed_dim}"
        )
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def pixel_batch(self, images: ImageBatch) -> torch.Tensor:
        return resize_square(images, self.input_size)

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = (pixels - self.mean.to(pixels.dtype)) / self.std.to(pixels.dtype)
        out = self.model(pixel_values=pixels)
        return out.image_embeds if self.has_projection else out.pooler_output


_LAYER_RE = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.")
# numbers a CLIP vision config may set (ViT-bigG, the largest public tower: 1664 wide, 48 layers)
CLIP_VISION_RANGES = {"hidden_size": (8, 4096), "intermediate_size": (8, 16384), "num_hidden_layers": (1, 64),
                      "num_attention_heads": (1, 64), "patch_size": (1, 64), "image_size": (8, 1024),
                      "projection_dim": (1, 4096), "num_channels": (1, 4)}
# hidden size → attention heads of the public CLIP vision towers (head count is not in the weights).
_KNOWN_HEADS = {768: 12, 1024: 16, 1280: 16, 1664: 16}


def infer_clip_vision_config(tensors: dict[str, torch.Tensor]) -> dict:
    """A ``CLIPVisionConfig`` dict from the shapes of HF-layout CLIP vision weights."""
    try:
        patch = tensors["vision_model.embeddings.patch_embedding.weight"]
        pos = tensors["vision_model.embeddings.position_embedding.weight"]
        fc1 = tensors["vision_model.encoder.layers.0.mlp.fc1.weight"]
    except KeyError as exc:
        raise WeightsFormatError(f"missing CLIP vision tensor {exc.args[0]}") from None
    hidden = int(patch.shape[0])
    patch_size = int(patch.shape[-1])
    grid = int(round((pos.shape[0] - 1) ** 0.5))
    layers = 1 + max(int(m.group(1)) for k in tensors if (m := _LAYER_RE.match(k)))
    cfg = dict(
        hidden_size=hidden,
        intermediate_size=int(fc1.shape[0]),
        num_hidden_layers=layers,
        num_attention_heads=_KNOWN_HEADS.get(hidden, max(1, hidden // 64)),
        patch_size=patch_size,
        image_size=grid * patch_size,
        # OpenAI's ViT-L/14 (SD1.x's CLIP) uses quick_gelu; the LAION ViT-H / bigG towers use gelu.
        hidden_act="quick_gelu" if hidden <= 1024 else "gelu",
    )
    if "visual_projection.weight" in tensors:
        cfg["projection_dim"] = int(tensors["visual_projection.weight"].shape[0])
    return cfg


def _vision_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the vision tower (+ projection); accept a full CLIPModel file too."""
    out = {k: v for k, v in tensors.items() if k.startswith("vision_model.") or k == "visual_projection.weight"}
    if not out and any(k.startswith("embeddings.") or k.startswith("encoder.layers.") for k in tensors):
        out = {f"vision_model.{k}": v for k, v in tensors.items()}  # bare CLIPVisionTransformer keys
    return out


def build_clip_vision(tensors: dict[str, torch.Tensor], config: Optional[dict], where: str, source: str = "",
                      hints: Optional[dict] = None) -> "ClipVisionEncoder":
    """A :class:`ClipVisionEncoder` from vision tensors in transformers names. ``config``: a
    ``CLIPVisionConfig`` dict (None: from the shapes, with ``hints`` for what shapes do not hold);
    checked against the tensors, shape by shape, before the model is allocated. ``where`` names the
    file in errors."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection

    tensors = _vision_tensors(tensors)
    if not tensors:
        raise IncompatibleModelError(
            f"{where} holds no CLIP vision weights (no `vision_model.*` tensors); pass a CLIP vision model "
            "such as ComfyUI's models/clip_vision files or a transformers CLIPVisionModel folder"
        )
    fix = "pass an unmodified CLIP vision checkpoint"
    try:
        if not isinstance(config, dict):
            config = {**infer_clip_vision_config(tensors), **(hints or {})}
        allowed = set(CLIPVisionConfig().to_dict())
        config = {k: v for k, v in config.items() if k in allowed}
        with_projection = "visual_projection.weight" in tensors
        if with_projection:  # a CLIPModel's config.json keeps the projection width at its top level only
            config["projection_dim"] = int(tensors["visual_projection.weight"].shape[0])
        check_ranges(config, CLIP_VISION_RANGES, where, fix, WeightsFormatError)
        cfg = CLIPVisionConfig(**config)
        model_class = CLIPVisionModelWithProjection if with_projection else CLIPVisionModel
        model = build_checked_model(model_class, cfg, tensors, where, "CLIP vision")
    except (WeightsFormatError, RuntimeError, ValueError, TypeError, KeyError, IndexError, ZeroDivisionError) as exc:
        if isinstance(exc, WeightsFormatError) and where in str(exc):
            raise
        raise WeightsFormatError(f"{where} does not match a CLIP vision architecture ({exc}); {fix}") from None
    return ClipVisionEncoder(model, source=source)


def build_checked_model(model_class, cfg, tensors: dict[str, torch.Tensor], where: str,
                        kind: str) -> torch.nn.Module:
    """``model_class(cfg)`` with ``tensors`` loaded, after comparing every shape on the meta device."""
    with torch.device("meta"):  # the architecture alone: compared with the file before it is allocated
        shapes = {k: tuple(v.shape) for k, v in model_class(cfg).state_dict().items()}
    misfit = [k for k, v in tensors.items() if k in shapes and tuple(v.shape) != shapes[k]]
    if misfit:
        raise WeightsFormatError(f"tensor {misfit[0]} is {tuple(tensors[misfit[0]].shape)}, the config implies "
                                 f"{shapes[misfit[0]]}")
    missing = [k for k in shapes if k not in tensors and not k.endswith("position_ids")]
    if missing:
        raise WeightsFormatError(f"{where} lacks {len(missing)} tensor(s) (e.g. {missing[0]}); the file is "
                                 f"incomplete or not {kind}")
    model = model_class(cfg)
    result = model.load_state_dict(tensors, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing:
        raise WeightsFormatError(f"{where} lacks {len(missing)} tensor(s) (e.g. {missing[0]}); the file is "
                                 f"incomplete or not {kind}")
    return model


def load_clip_vision(path: str | Path, device=None, dtype: Optional[torch.dtype] = None) -> ClipVisionEncoder:
    """Load CLIP vision weights from a folder (``config.json`` + ``model.safetensors``, or a Hugging Face
    cache entry), from one ``.safetensors`` file (config from its metadata key ``config`` if present,
    else from shapes), or from the vision tower of a full CLIP (transformers or open_clip names);
    see :mod:`scdpo.cost.clip_files`."""
    from .clip_files import open_clip_hints, read_clip_weights, tower_config

    what = "CLIP vision backbone"
    weights = read_clip_weights(path, what, need=("vision",))
    enc = build_clip_vision(weights.tower("vision") or weights.tensors, tower_config(weights, "vision"),
                            f"{what} {weights.file}", source=str(path), hints=open_clip_hints(weights, "vision"))
    return enc.to(device=device or "cpu", dtype=dtype)


def load_backbone(spec: Union[None, str, Path, torch.nn.Module] = None, device=None,
                  dtype: Optional[torch.dtype] = None) -> ImageEncoder:
    """``None`` / ``"toy"`` → the shipped toy encoder; a path → toy encoder file or CLIP vision;
    an :class:`ImageEncoder` → itself; a transformers CLIP vision module → wrapped."""
    from .toy_encoder import TOY_ENCODER_KIND, load_toy_encoder, shipped_toy_encoder

    if isinstance(spec, ImageEncoder):
        return spec.to(device=device) if device is not None else spec
    if isinstance(spec, torch.nn.Module):
        if hasattr(spec, "config") and getattr(spec.config, "model_type", "") in ("clip_vision_model", "clip"):
            return ClipVisionEncoder(spec).to(device=device or spec.device)
        raise IncompatibleModelError(
            f"backbone {type(spec).__name__} is not a supported image encoder; pass a CLIP vision model or a path"
        )
    if spec in (None, "", "toy"):
        return load_toy_encoder(shipped_toy_encoder(), device=device)
    path = Path(spec)
    if path.is_file():
        header = read_safetensors_header(path, what="backbone")
        if header.get("__metadata__", {}).get("scdpo_kind") == TOY_ENCODER_KIND:
            return load_toy_encoder(path, device=device)
    return load_clip_vision(path, device=device, dtype=dtype)
