"""Finding and reading CLIP weights on disk, offline, for the cost-model backbone, the CLIP reward
and the zero-shot cost scorer.

What a path may be (only ``.safetensors`` is ever read; nothing is unpickled or downloaded):

* a transformers folder: ``config.json`` + ``model.safetensors`` (or shards listed in
  ``model.safetensors.index.json``), as ``save_pretrained`` writes it: ``CLIPModel`` (both towers),
  ``CLIPVisionModel[WithProjection]`` (vision only);
* a Hugging Face hub cache entry: ``models--openai--clip-vit-large-patch14/`` (its ``refs/main``
  snapshot) or one of its ``snapshots/<hash>/`` folders;
* an open_clip file (``visual.*``, ``token_embedding.weight``... names), alone or as
  ``open_clip_model.safetensors`` in a folder, with ``open_clip_config.json`` beside it if present;
* one ``.safetensors`` file in transformers names, as ComfyUI keeps CLIP vision files in
  ``models/clip_vision/`` (its config from the metadata key ``config``, else from tensor shapes).

:func:`read_clip_weights` reads only the file headers first, tells which towers the file holds,
refuses the wrong kind of file in one line (a vision-only file where both towers are needed, an SD
checkpoint, a LoRA...), and only then loads the tensors of the towers asked for, renamed to
transformers' names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import IncompatibleModelError, InputFileError, WeightsFormatError
from ..fileio import load_safetensors, read_safetensors_header
from ..limits import inside, json_object, parse_json, read_json_file
from .open_clip_keys import convert_open_clip, is_open_clip, is_vision_key, open_clip_towers, unsupported_open_clip

HF_WEIGHTS = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
OPEN_CLIP_CONFIG = "open_clip_config.json"
MAX_SHARDS = 64

FULL_CLIP_FIX = ("pass a full CLIP model instead: a transformers folder (config.json + model.safetensors) such as "
                 "openai/clip-vit-large-patch14, or an open_clip .safetensors file")
TOWER_PREFIXES = {"vision": ("vision_model.", "visual_projection."), "text": ("text_model.", "text_projection.")}


@dataclass
class ClipWeights:
    """The tensors of the towers asked for, in transformers ``CLIPModel`` names."""

    source: Path  # what the user passed
    file: Path  # the (first) safetensors file read
    layout: str  # transformers | open_clip
    towers: set[str]  # the towers the file holds
    tensors: dict[str, torch.Tensor]
    meta: dict[str, str] = field(default_factory=dict)
    config: Optional[dict] = None  # config.json (or the metadata key `config`)
    open_clip_config: Optional[dict] = None  # open_clip_config.json's model_cfg

    def tower(self, name: str) -> dict[str, torch.Tensor]:
        """The tensors of one tower (``vision`` | ``text``)."""
        return {k: v for k, v in self.tensors.items() if k.startswith(TOWER_PREFIXES[name])}


# --- where the weights are -----------------------------------------------------------------------


def _hub_snapshot(repo: Path, what: str) -> Path:
    """``models--org--name/`` of a Hugging Face cache → the snapshot ``refs/main`` names, else the
    newest snapshot that holds weights."""
    snapshots = repo / "snapshots"
    ref = repo / "refs" / "main"
    if ref.is_file() and ref.stat().st_size < 200:
        commit = ref.read_text(encoding="ascii", errors="replace").strip()
        if re.fullmatch(r"[0-9a-f]{40}", commit) and _weights_in(snapshots / commit):
            return snapshots / commit
    found = [d for d in snapshots.iterdir() if d.is_dir() and _weights_in(d)]
    if not found:
        raise InputFileError(f"{what} {repo} is a Hugging Face cache folder without a downloaded model.safetensors; "
                             "download it (with the safetensors weights) or pass another folder")
    return max(found, key=lambda d: d.stat().st_mtime)


def _weights_in(folder: Path) -> bool:
    return any((folder / name).is_file() for name in (HF_WEIGHTS, HF_INDEX, OPEN_CLIP_WEIGHTS))


def _shards(folder: Path, what: str) -> list[Path]:
    index = json_object(read_json_file(folder / HF_INDEX, f"{what} shard index", "re-download the folder"),
                        f"{what} shard index {folder / HF_INDEX}", "re-download the folder")
    names = index.get("weight_map")
    if not isinstance(names, dict) or not all(isinstance(v, str) for v in names.values()):
        raise InputFileError(f"{what} shard index {folder / HF_INDEX} has no weight_map; re-download the folder")
    files = []
    for name in dict.fromkeys(names.values()):
        path = inside(folder / name, folder)
        if path is None or path.parent != folder.resolve() or not name.endswith(".safetensors"):
            raise InputFileError(f"{what} shard index {folder / HF_INDEX} names {name!r}, not a .safetensors file "
                                 "in its folder; re-download the folder")
        files.append(path)
    if not files or len(files) > MAX_SHARDS:
        raise InputFileError(f"{what} shard index {folder / HF_INDEX} lists {len(files)} files (1 to {MAX_SHARDS} "
                             "allowed); re-download the folder")
    return files


def locate_clip_files(path: str | Path, what: str) -> tuple[list[Path], Optional[Path], Optional[Path]]:
    """``(safetensors files, config.json or None, open_clip_config.json or None)`` for a file or folder."""
    path = Path(path)
    if path.is_file():
        oc = path.parent / OPEN_CLIP_CONFIG
        config = path.parent / "config.json"  # the model.safetensors of a transformers folder, passed itself
        config = config if path.name == HF_WEIGHTS and config.is_file() else None
        return [path], config, oc if oc.is_file() and config is None else None
    if not path.is_dir():
        raise InputFileError(f"{what} not found: {path}; pass a CLIP .safetensors file or its folder")
    if (path / "snapshots").is_dir():
        path = _hub_snapshot(path, what)
    config = path / "config.json" if (path / "config.json").is_file() else None
    if (path / HF_WEIGHTS).is_file():
        return [path / HF_WEIGHTS], config, None
    if (path / HF_INDEX).is_file():
        return _shards(path, what), config, None
    if (path / OPEN_CLIP_WEIGHTS).is_file():
        oc = path / OPEN_CLIP_CONFIG
        return [path / OPEN_CLIP_WEIGHTS], None, oc if oc.is_file() else None
    if (path / "model_index.json").is_file():
        raise IncompatibleModelError(f"{what} {path} is a diffusers pipeline folder, not a CLIP model (its "
                                     "text_encoder/ has no image tower); pass a CLIP model folder or file")
    pickled = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    hint = (f" (found {pickled[0]}, a pickled file that is never loaded; convert it to safetensors)"
            if pickled else "")
    raise InputFileError(f"{what} folder {path} has no model.safetensors{hint}")


# --- what the file holds -------------------------------------------------------------------------


def towers_of(keys: set[str]) -> tuple[str, set[str]]:
    """``(layout, towers)`` from tensor names: layout ``transformers`` | ``open_clip``."""
    if is_open_clip(keys):
        return "open_clip", open_clip_towers(keys)
    towers = set()
    if any(k.startswith("vision_model.") for k in keys) or "embeddings.patch_embedding.weight" in keys:
        towers.add("vision")
    if any(k.startswith("text_model.") for k in keys):
        towers.add("text")
    return "transformers", towers


def foreign_kind(keys: set[str], meta: dict[str, str]) -> Optional[str]:
    """What a file that is not CLIP is, when its names say it (for the error message)."""
    if meta.get("scdpo_kind"):
        return f"an scdpo {meta['scdpo_kind'].replace('_', ' ')} file"
    if any(k.startswith(("model.diffusion_model.", "conditioner.embedders.", "cond_stage_model.")) for k in keys):
        return "a Stable Diffusion checkpoint (its CLIP text encoder has no image tower)"
    if any("lora_down" in k or "lora_up" in k or ".lora_A." in k or k.startswith("lora_") for k in keys):
        return "a LoRA"
    if any(k.startswith(("down_blocks.", "up_blocks.", "mid_block.")) for k in keys):
        return "a diffusers UNet or VAE"
    return None


def _missing_tower_message(file: Path, towers: set[str], need: tuple[str, ...], kind: Optional[str]) -> str:
    if "vision" in need and "text" in need and towers == {"vision"}:
        return (f"{file} holds only CLIP's vision tower (a models/clip_vision/ file) and no text tower, so it cannot "
                f"compare images with prompts; {FULL_CLIP_FIX}")
    if towers == {"text"}:
        return (f"{file} holds only a CLIP text encoder (as in models/clip/ or models/text_encoders/) and no image "
                f"tower; {FULL_CLIP_FIX if 'text' in need else 'pass a CLIP vision file or a full CLIP model'}")
    it_is = f" (it is {kind})" if kind else ""
    if need == ("vision",):
        return (f"{file} holds no CLIP vision weights (no `vision_model.*` tensors){it_is}; pass a CLIP vision model "
                "such as ComfyUI's models/clip_vision files or a transformers CLIPVisionModel folder")
    return f"{file} holds no CLIP weights{it_is}; {FULL_CLIP_FIX}"


def read_clip_weights(path: str | Path, what: str, need: tuple[str, ...] = ("vision", "text")) -> ClipWeights:
    """The towers ``need`` of the CLIP model at ``path`` (see the module docstring). Raises one
    :class:`~scdpo.errors.ScdpoError` line for a missing, corrupt, pickled or wrong kind of file."""
    files, config_file, oc_file = locate_clip_files(path, what)
    headers = [read_safetensors_header(f, what=what) for f in files]  # corrupt / pickled: refused here
    keys = {k for h in headers for k in h if k != "__metadata__"}
    meta = dict(headers[0].get("__metadata__", {}))
    layout, towers = towers_of(keys)
    if not set(need) <= towers:
        raise IncompatibleModelError(_missing_tower_message(files[0], towers, need, foreign_kind(keys, meta)))
    if layout == "open_clip":
        problem = unsupported_open_clip(keys)
        if problem:
            raise IncompatibleModelError(f"{what} {files[0]} is an open_clip model with {problem}, which scdpo "
                                         "cannot read; pass a plain ViT CLIP (open_clip ViT-B/L/H/bigG or a "
                                         "transformers CLIP folder)")
        keep = (lambda k: (("vision" in need) == is_vision_key(k)) or k == "logit_scale") if len(need) == 1 else None
    else:
        prefixes = tuple(p for t in need for p in TOWER_PREFIXES[t]) + ("logit_scale", "embeddings.", "encoder.",
                                                                        "pre_layrnorm.", "post_layernorm.")
        keep = lambda k: k.startswith(prefixes)  # noqa: E731
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        part, _ = load_safetensors(f, what=what, keep=keep)
        tensors.update(part)
    if layout == "open_clip":
        try:
            tensors = convert_open_clip(tensors)
        except KeyError as exc:
            raise WeightsFormatError(f"{what} {files[0]} has the open_clip tensor {exc.args[0]!r}, which a plain "
                                     "ViT CLIP does not; pass an unmodified CLIP model") from None
    config = None
    if config_file is not None:
        config = json_object(read_json_file(config_file, f"{what} config", "re-export the folder"),
                             f"{what} config {config_file}", "re-export the folder")
    elif "config" in meta:
        try:
            value = parse_json(meta["config"], f"{what} {files[0]}: metadata config", "", WeightsFormatError)
            config = value if isinstance(value, dict) else None
        except WeightsFormatError:
            config = None
    oc_config = None
    if oc_file is not None:
        raw = json_object(read_json_file(oc_file, f"{what} open_clip config", "re-download it"),
                          f"{what} open_clip config {oc_file}", "re-download it")
        oc_config = raw.get("model_cfg") if isinstance(raw.get("model_cfg"), dict) else raw
    return ClipWeights(Path(path), files[0], layout, towers, tensors, meta, config, oc_config)


def tower_config(weights: ClipWeights, tower: str) -> Optional[dict[str, Any]]:
    """The config dict of one tower from ``config.json`` / metadata (``CLIPConfig`` nests it), or None."""
    cfg = weights.config
    if not isinstance(cfg, dict):
        return None
    nested = cfg.get(f"{tower}_config")
    if isinstance(nested, dict):
        return dict(nested)
    model_type = cfg.get("model_type")
    if model_type in (None, f"clip_{tower}_model"):
        return dict(cfg)
    return None


def open_clip_hints(weights: ClipWeights, tower: str) -> dict[str, Any]:
    """``num_attention_heads`` / ``hidden_act`` of a tower from ``open_clip_config.json`` (the numbers the
    weights do not hold), empty when there is none."""
    cfg = weights.open_clip_config
    if not isinstance(cfg, dict):
        return {}
    sub = cfg.get("vision_cfg" if tower == "vision" else "text_cfg")
    out: dict[str, Any] = {}
    if isinstance(sub, dict):
        width = sub.get("width")
        if tower == "vision" and isinstance(width, int) and isinstance(sub.get("head_width", 64), int):
            out["num_attention_heads"] = max(1, width // max(1, sub.get("head_width", 64)))
        elif tower == "text" and isinstance(sub.get("heads"), int):
            out["num_attention_heads"] = sub["heads"]
    out["hidden_act"] = "quick_gelu" if cfg.get("quick_gelu") is True else "gelu"  # open_clip's default: gelu
    return out
