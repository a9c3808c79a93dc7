"""LoRA files in the kohya format: reading, validating and writing them.

A file holds, per UNet module, ``<name>.lora_down.weight``, ``<name>.lora_up.weight`` and
``<name>.alpha`` (see :mod:`scdpo.lora.naming`), plus string metadata: ``ss_base_model_version``
(``toy_v1`` | ``sd_v1`` | ``sdxl_base_v1-0``), ``ss_network_module=networks.lora``,
``ss_network_dim`` (rank), ``ss_network_alpha`` and other ``ss_*`` / ``scdpo_*`` keys.

:func:`load_lora` also reads LoRAs saved in the peft / diffusers layout (``…lora_A.weight``) and
converts them to kohya names in memory, so every tool here takes either.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from ..errors import WeightsFormatError
from ..fileio import load_safetensors, save_safetensors_atomic
from .naming import KOHYA_UNET_PREFIX, split_kohya_key

NETWORK_MODULE = "networks.lora"
KNOWN_BASE_VERSIONS = ("toy_v1", "sd_v1", "sdxl_base_v1-0")
_KOHYA_PARTS = ("lora_down.weight", "lora_up.weight", "alpha")
_UNSUPPORTED_PARTS = {
    "dora_scale": "DoRA",
    "hada_w1_a": "LoHa (LyCORIS)",
    "lokr_w1": "LoKr (LyCORIS)",
    "lokr_w1_a": "LoKr (LyCORIS)",
    "diff": "a full weight difference (LyCORIS 'full')",
    "lora_mid.weight": "LoCon with a mid (Tucker) factor",
}
_TEXT_ENCODER_PREFIXES = ("lora_te_", "lora_te1_", "lora_te2_")


@dataclass
class LoraFile:
    """A LoRA in kohya layout held in memory.

    ``tensors``: kohya keys → tensors (down ``[r, in(,kh,kw)]``, up ``[out, r(,1,1)]``, alpha
    0-dim). ``metadata``: the file's string metadata (``ss_*``, ``scdpo_*``). ``source_layout``:
    ``kohya`` | ``peft`` | ``diffusers`` (what the file on disk used).
    """

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)
    path: Optional[Path] = None
    source_layout: str = "kohya"

    @property
    def module_names(self) -> list[str]:
        """Sorted kohya module names (``lora_unet_…``, and ``lora_te…`` if present)."""
        return sorted({split_kohya_key(k)[0] for k in self.tensors})

    @property
    def unet_module_names(self) -> list[str]:
        return [n for n in self.module_names if n.startswith(KOHYA_UNET_PREFIX)]

    @property
    def ranks(self) -> dict[str, int]:
        return {n: int(self.tensors[f"{n}.lora_down.weight"].shape[0]) for n in self.module_names}

    @property
    def alphas(self) -> dict[str, float]:
        """Per-module alpha; a module without ``.alpha`` gets alpha = rank (scale 1), as hosts do."""
        ranks = self.ranks
        return {
            n: float(self.tensors[f"{n}.alpha"].float().item()) if f"{n}.alpha" in self.tensors else float(ranks[n])
            for n in self.module_names
        }

    @property
    def rank(self) -> int:
        """The most common rank (kohya's ``ss_network_dim``)."""
        return Counter(self.ranks.values()).most_common(1)[0][0]

    @property
    def alpha(self) -> float:
        """The alpha of the most common (rank, alpha) pair (kohya's ``ss_network_alpha``)."""
        ranks, alphas = self.ranks, self.alphas
        return Counter((ranks[n], alphas[n]) for n in ranks).most_common(1)[0][0][1]

    @property
    def base_model_version(self) -> Optional[str]:
        return self.metadata.get("ss_base_model_version") or None

    def describe(self) -> str:
        where = str(self.path) if self.path else "in-memory LoRA"
        return f"{where} (base {self.base_model_version or 'unknown'}, {len(self.module_names)} modules, rank {self.rank})"


def network_metadata(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> dict[str, str]:
    """``metadata`` as strings, with ``ss_network_module/dim/alpha`` filled from the tensors."""
    lora = LoraFile(dict(tensors))
    out = {k: v if isinstance(v, str) else str(v) for k, v in metadata.items()}
    out.setdefault("ss_network_module", NETWORK_MODULE)
    out["ss_network_dim"] = str(lora.rank)
    alpha = lora.alpha
    out["ss_network_alpha"] = str(int(alpha)) if float(alpha).is_integer() else str(alpha)
    return out


def save_lora(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> Path:
    """Write a kohya LoRA atomically. ``metadata`` must name ``ss_base_model_version``.

    Modules without ``.alpha`` get alpha = rank; ``ss_network_dim`` / ``ss_network_alpha`` are
    set from the tensors. Returns the path written.
    """
    if "ss_base_model_version" not in metadata:
        raise ValueError("save_lora metadata must contain ss_base_model_version (e.g. 'sd_v1')")
    tensors = dict(tensors)
    _validate_kohya(tensors, Path(path))
    for name in {split_kohya_key(k)[0] for k in tensors}:
        if f"{name}.alpha" not in tensors:
            tensors[f"{name}.alpha"] = torch.tensor(float(tensors[f"{name}.lora_down.weight"].shape[0]))
        else:
            tensors[f"{name}.alpha"] = tensors[f"{name}.alpha"].detach().float().reshape(())
    path = Path(path)
    save_safetensors_atomic(tensors, path, network_metadata(tensors, metadata))
    return path


def load_lora(path: str | Path) -> LoraFile:
    """Read a LoRA file (kohya layout, or peft / diffusers layout converted to kohya names).

    Raises :class:`~scdpo.errors.InputFileError` if it is missing and
    :class:`~scdpo.errors.WeightsFormatError` if it is corrupt or not a LoRA.
    """
    path = Path(path)
    tensors, metadata = load_safetensors(path, what="LoRA file")
    layout = detect_layout(tensors)
    if layout == "kohya":
        lora = LoraFile(tensors, metadata, path, "kohya")
    elif layout in ("peft", "diffusers"):
        from .convert import peft_layout_to_kohya, read_peft_adapter_config

        config = read_peft_adapter_config(path, metadata)
        lora = LoraFile(peft_layout_to_kohya(tensors, config, str(path)), metadata, path, layout)
    elif layout == "checkpoint":
        raise WeightsFormatError(
            f"{path} is a full model checkpoint, not a LoRA; pass it as the base model (--base) instead"
        )
    else:
        example = next(iter(tensors), "<no tensors>")
        raise WeightsFormatError(
            f"{path} is not a LoRA file: no lora_down/lora_up (kohya) or lora_A/lora_B (peft) keys "
            f"(first key: {example!r}); pass a LoRA .safetensors written by `scdpo lora train` or a kohya trainer"
        )
    _validate_kohya(lora.tensors, path)
    return lora


def detect_layout(tensors: Mapping[str, torch.Tensor]) -> str:
    """``kohya`` | ``peft`` (``base_model.model.`` / bare paths) | ``diffusers`` (``unet.`` prefix)
    | ``checkpoint`` (a full model) | ``unknown``."""
    keys = list(tensors)
    if any(k.endswith((".lora_down.weight", ".lora_up.weight")) for k in keys):
        return "kohya"
    if any(".lora_A." in k or ".lora_B." in k for k in keys):
        return "diffusers" if any(k.startswith("unet.") for k in keys) else "peft"
    if any(k.startswith(("model.diffusion_model.", "conv_in.", "down_blocks.")) for k in keys):
        return "checkpoint"
    return "unknown"


def _validate_kohya(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """Every module has a down/up pair of matching rank and a finite alpha; nothing else."""
    if not tensors:
        raise WeightsFormatError(f"{path} holds no tensors; it is not a LoRA file")
    fix = "re-export the LoRA in kohya LoRA format (lora_down / lora_up / alpha)"
    parts: dict[str, set[str]] = {}
    for key in tensors:
        name, part = split_kohya_key(key)
        if part in _UNSUPPORTED_PARTS:
            raise WeightsFormatError(
                f"{path} is {_UNSUPPORTED_PARTS[part]}, which is not supported (key {key!r}); {fix}"
            )
        if part not in _KOHYA_PARTS or not name.startswith(("lora_unet_",) + _TEXT_ENCODER_PREFIXES):
            raise WeightsFormatError(f"{path} has a key that is not a kohya LoRA key: {key!r}; {fix}")
        parts.setdefault(name, set()).add(part)
    for name, have in sorted(parts.items()):
        if {"lora_down.weight", "lora_up.weight"} - have:
            raise WeightsFormatError(f"{path} is incomplete: module {name} lacks {sorted({'lora_down.weight', 'lora_up.weight'} - have)}; {fix}")
        down, up = tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"]
        if down.ndim in (2, 4) and down.shape[0] == 0:
            raise WeightsFormatError(f"{path} is corrupt: module {name} has rank 0 (lora_down {tuple(down.shape)}); "
                                     f"{fix}")
        if down.ndim not in (2, 4) or up.ndim != down.ndim or up.shape[1] != down.shape[0]:
            raise WeightsFormatError(
                f"{path} is corrupt: module {name} has lora_down {tuple(down.shape)} and lora_up "
                f"{tuple(up.shape)}, whose ranks do not match; {fix}"
            )
        if not (torch.isfinite(down).all() and torch.isfinite(up).all()):
            raise WeightsFormatError(f"{path} is corrupt: module {name} holds NaN/inf weights; re-train or re-export it")
        if "alpha" in have:
            alpha = tensors[f"{name}.alpha"]
            if alpha.numel() != 1 or not math.isfinite(float(alpha.float().reshape(-1)[0])):
                raise WeightsFormatError(f"{path} is corrupt: module {name} has a bad alpha {alpha!r}; {fix}")
