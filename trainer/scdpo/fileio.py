"""Atomic writes and safe, validated loading of safetensors files (+ JSON metadata).

Nothing in this project is unpickled: weights and checkpoints are safetensors, metadata is JSON
stored in the safetensors header (string → string, as the format requires).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import InputFileError, OutputPathError, WeightsFormatError

_MAX_HEADER_BYTES = 100 * 1024 * 1024


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed over ``path``.

    A reader never sees a half-written file, and a kill mid-write leaves the old file intact.
    """
    path = Path(path)
    ensure_writable_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def ensure_writable_dir(directory: str | os.PathLike) -> Path:
    """Create ``directory`` if needed and check that files can be written there."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(
            f"cannot create output folder {directory}: {exc.strerror or exc}; choose a writable location"
        ) from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputPathError(f"output folder {directory} is not writable; choose another --out or fix its permissions")
    return directory


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_safetensors_atomic(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, Any] | None = None
) -> None:
    """Save tensors as safetensors atomically. Non-string metadata values are JSON-encoded."""
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def read_safetensors_header(path: str | os.PathLike, what: str = "weights file") -> dict[str, Any]:
    """Read and validate the JSON header of a safetensors file without loading tensors.

    Raises :class:`WeightsFormatError` with a clear message for anything that is not a
    well-formed safetensors file (wrong extension content, truncated, pickled checkpoint...).
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{what} not found: {path}; check the path")
    if path.is_dir():
        raise InputFileError(f"{what} {path} is a folder; pass the .safetensors file inside it")
    size = path.stat().st_size
    hint = "re-download or re-export it as .safetensors"
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise WeightsFormatError(f"{what} {path} is not a safetensors file (only {size} bytes); {hint}")
        (n,) = struct.unpack("<Q", head)
        if n == 0 or n > _MAX_HEADER_BYTES or 8 + n > size:
            if head[:2] == b"PK" or head[:1] == b"\x80":
                raise WeightsFormatError(
                    f"{what} {path} is a pickled PyTorch checkpoint, which is never loaded (unsafe); "
                    "convert it to .safetensors first"
                )
            raise WeightsFormatError(f"{what} {path} is not a safetensors file or is truncated; {hint}")
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WeightsFormatError(f"{what} {path} has a corrupt safetensors header; {hint}") from None
    if not isinstance(header, dict):
        raise WeightsFormatError(f"{what} {path} has a corrupt safetensors header; {hint}")
    data_len = size - 8 - n
    for key, info in header.items():
        if key == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise WeightsFormatError(f"{what} {path} has malformed metadata; {hint}")
            continue
        offs = info.get("data_offsets") if isinstance(info, dict) else None
        if (
            not isinstance(offs, list)
            or len(offs) != 2
            or not all(isinstance(o, int) for o in offs)
            or not 0 <= offs[0] <= offs[1] <= data_len
        ):
            raise WeightsFormatError(f"{what} {path} is truncated or corrupt (tensor {key!r}); {hint}")
    return header


def load_safetensors(
    path: str | os.PathLike, what: str = "weights file", device: str = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load all tensors and the raw string metadata of a safetensors file, with clear errors."""
    header = read_safetensors_header(path, what)
    try:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt", device=device) as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except Exception as exc:  # safetensors raises several exception types for bad files
        raise WeightsFormatError(f"{what} {path} could not be read as safetensors ({exc}); re-export it") from None
    return tensors, dict(header.get("__metadata__", {}))


def decode_metadata(meta: Mapping[str, str]) -> dict[str, Any]:
    """Decode metadata values written by :func:`save_safetensors_atomic` (JSON where possible)."""
    out: dict[str, Any] = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            out[k] = v
    return out
