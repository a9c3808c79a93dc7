"""Loading a base text-to-image model from what the user names on the command line.

``None`` / ``"toy"`` → the shipped toy base (``weights/toy_base.safetensors``); a toy checkpoint
file (its metadata says ``scdpo_kind: toy_base``) → that toy model; anything else → a Stable
Diffusion model (diffusers folder or single-file checkpoint) via :mod:`scdpo.sd`, in the dtype it is
stored in, except that fp16 weights are loaded as bf16 on a CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from .errors import InputFileError
from .fileio import read_safetensors_header
from .pipeline import TextToImageModel


def resolve_device(device: Optional[str] = None) -> torch.device:
    """``auto``/None → CUDA if available, then MPS, else CPU."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def is_toy_base(spec: Optional[str]) -> bool:
    """Whether ``spec`` names the toy world's base model (the shipped one or a toy checkpoint file)."""
    from .toy.model import is_toy_checkpoint

    if spec in (None, "", "toy"):
        return True
    path = Path(spec)
    return path.is_file() and is_toy_checkpoint(path)


def load_base_model(spec: Optional[str] = None, device: Optional[str] = None, dtype: Optional[torch.dtype] = None
                    ) -> TextToImageModel:
    from .toy.model import ToyTextToImage, is_toy_checkpoint, shipped_toy_weights

    dev = resolve_device(device)
    if spec in (None, "", "toy"):
        return ToyTextToImage.load(shipped_toy_weights(), device=dev)
    path = Path(spec)
    if not path.exists():
        raise InputFileError(f"base model not found: {path}; pass a .safetensors checkpoint, a diffusers folder, or omit it for the toy base")
    if path.is_file():
        read_safetensors_header(path, what="base model checkpoint")  # clear error for corrupt/pickled files
    if path.is_file() and is_toy_checkpoint(path):
        return ToyTextToImage.load(path, device=dev)
    from .sd.loader import load_sd_model  # noqa: WPS433 - heavy import only when needed

    if dtype is None and dev.type == "cpu":
        from .sd.detect import inspect_base_model

        if inspect_base_model(path).dtype == torch.float16:
            # CPUs compute fp16 about 10x slower than bf16 (docs/results.md §6); same range as fp32, half its memory
            dtype = torch.bfloat16
    return load_sd_model(path, device=dev, dtype=dtype)
