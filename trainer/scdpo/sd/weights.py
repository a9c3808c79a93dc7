"""Reading a UNet's weights tensor by tensor, each cast to the training dtype as it is read.

Loading through the libraries (``from_pretrained`` / ``from_single_file``) memory-maps the whole
file and holds the stored precision and the target precision of every weight at once: for a
frozen bf16 UNet stored in fp32 that is three times the memory the UNet keeps, and the process's
peak memory is set at load time rather than by training (docs/results.md §6). Here the file is
read with plain reads (no mapping, so the file's pages never count as the process's memory), one
tensor at a time, cast, and the model is built on the ``meta`` device and takes the tensors as
they are (``load_state_dict(assign=True)``): the peak is the model in its training dtype plus one
tensor in its stored dtype.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Callable, Optional

import torch

from ..errors import WeightsFormatError
from ..fileio import read_safetensors_header
from ..limits import read_json_file
from .detect import SAFETENSORS_DTYPES

_HINT = "re-download or re-export it as .safetensors"


def read_tensors(path: str | Path, dtype: Optional[torch.dtype] = None,
                 select: Optional[Callable[[str], bool]] = None, what: str = "weights file") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file whose names ``select`` accepts (all by default), floating
    point ones cast to ``dtype`` (None: as stored). The header is validated first
    (:func:`~scdpo.fileio.read_safetensors_header`)."""
    path = Path(path)
    header = read_safetensors_header(path, what)
    out: dict[str, torch.Tensor] = {}
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        start = 8 + n
        entries = sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                         key=lambda kv: kv[1]["data_offsets"][0])
        for key, info in entries:
            if select is not None and not select(key):
                continue
            stored = SAFETENSORS_DTYPES.get(info["dtype"])
            if stored is None:
                raise WeightsFormatError(f"{what} {path}: tensor {key!r} is {info['dtype']}, which SD weights never "
                                         f"are; {_HINT}")
            first, last = info["data_offsets"]
            buf = bytearray(last - first)
            fh.seek(start + first)
            if fh.readinto(buf) != len(buf):
                raise WeightsFormatError(f"{what} {path} is truncated (tensor {key!r}); {_HINT}")
            tensor = (torch.frombuffer(buf, dtype=stored) if buf else torch.empty(0, dtype=stored)).reshape(info["shape"])
            if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
                tensor = tensor.to(dtype)
            out[key] = tensor
    return out


def unet_from_state(config: dict, state: dict[str, torch.Tensor], source: Path):
    """A ``UNet2DConditionModel`` of ``config`` holding exactly ``state`` (no copy, no random init)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    result = unet.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        example = (result.missing_keys or result.unexpected_keys)[0]
        raise WeightsFormatError(
            f"{source}: its UNet weights do not match the UNet config ({len(result.missing_keys)} missing, "
            f"{len(result.unexpected_keys)} unexpected, e.g. {example}); the file is incomplete or not a standard "
            "checkpoint of its family")
    meta = [name for name, t in [*unet.named_parameters(), *unet.named_buffers()] if t.is_meta]
    if meta:
        raise WeightsFormatError(f"{source}: the UNet lacks {len(meta)} weights (e.g. {meta[0]}); the file is incomplete")
    return unet


def folder_unet_files(unet_dir: Path, variant: Optional[str]) -> list[Path]:
    """The safetensors file(s) of a diffusers ``unet/`` folder (one file, or the shards of its index)."""
    stem = "diffusion_pytorch_model" + (f".{variant}" if variant else "")
    single = unet_dir / f"{stem}.safetensors"
    if single.is_file():
        return [single]
    index = unet_dir / f"{stem}.safetensors.index.json"
    if index.is_file():
        data = read_json_file(index, "UNet weight index", _HINT, WeightsFormatError)
        names = sorted(set((data.get("weight_map") or {}).values())) if isinstance(data, dict) else []
        files = [unet_dir / Path(str(name)).name for name in names]  # a shard name never leaves the folder
        if files and all(f.is_file() for f in files):
            return files
    raise WeightsFormatError(f"{unet_dir} holds no {stem}.safetensors (or complete shards of it); pass a complete "
                             "diffusers folder (pickled .bin weights are never loaded)")


def load_folder_unet(root: Path, dtype: torch.dtype, variant: Optional[str]):
    config = read_json_file(root / "unet" / "config.json", "UNet config", _HINT, WeightsFormatError)
    if not isinstance(config, dict):
        raise WeightsFormatError(f"{root / 'unet' / 'config.json'} is not a UNet config; {_HINT}")
    state: dict[str, torch.Tensor] = {}
    for file in folder_unet_files(root / "unet", variant):
        state.update(read_tensors(file, dtype, what="UNet weights"))
    return unet_from_state(config, state, root)


def load_single_file_unet(path: Path, config_dir: Path, dtype: torch.dtype, prefix: str):
    """The UNet of an LDM-layout single file: its ``prefix`` tensors, renamed to diffusers' names by
    diffusers' own converter."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    config = json.loads((config_dir / "unet" / "config.json").read_text(encoding="utf-8"))
    state = read_tensors(path, dtype, select=lambda k: k.startswith(prefix), what="base model checkpoint")
    converted = convert_ldm_unet_checkpoint(state, config)
    del state
    return unet_from_state(config, converted, path)


__all__ = ["folder_unet_files", "load_folder_unet", "load_single_file_unet", "read_tensors", "unet_from_state"]
