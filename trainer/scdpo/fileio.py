"""Atomic writes and safe, validated loading of safetensors files (+ JSON metadata).

Nothing in this project is unpickled: weights and checkpoints are safetensors, metadata is JSON
stored in the safetensors header (string → string, as the format requires).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import socket
import struct
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import InputFileError, OutputPathError, ScdpoError, WeightsFormatError
from .limits import MAX_HEADER_BYTES, MiB, json_depth_ok, parse_json

# bytes per element of the safetensors dtypes torch reads
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed over ``path``.

    A reader never sees a half-written file, and a kill mid-write leaves the old file intact. The
    temporary name carries this host and process id, so the next write to the folder removes what a
    killed writer left (:func:`remove_stale_temp_files`). A full disk or another write failure
    removes the partial file and raises one :class:`OutputPathError` naming ``path``.
    """
    path = Path(path)
    ensure_writable_dir(path.parent)
    remove_stale_temp_files(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_TEMP_TAG}", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
            os.replace(tmp_path, path)
        except (OSError, SafetensorError) as exc:
            if isinstance(exc, ScdpoError):
                raise
            raise _write_error(path, exc) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


# ".<name>.<host>-<pid>-" + mkstemp's random part + ".tmp": whose write a temporary file belongs to
_TEMP_TAG = f"{socket.gethostname().replace('.', '_').replace('-', '_')[:40]}-{os.getpid()}-"
_TEMP_NAME = re.compile(r"^\..+\.(?P<host>[^.\-]+)-(?P<pid>\d+)-[^.]+\.tmp$")
_LEGACY_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # written before temp names carried a pid
_LEGACY_STALE_S = 600.0


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of killed writes in ``directory``: those of a process of this host
    that no longer runs (and untagged ones older than 10 minutes). Returns what was removed."""
    global _TEMP_TAG
    if not _TEMP_TAG.endswith(f"-{os.getpid()}-"):  # a forked child writes under its own pid
        _TEMP_TAG = f"{_TEMP_TAG.rsplit('-', 2)[0]}-{os.getpid()}-"
    host = _TEMP_TAG.split("-")[0]
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        if not (entry.name.startswith(".") and entry.name.endswith(".tmp")) or not entry.is_file(follow_symlinks=False):
            continue
        m = _TEMP_NAME.match(entry.name)
        if m:
            stale = m["host"] == host and not _process_alive(int(m["pid"]))
        else:
            try:
                stale = bool(_LEGACY_TEMP_NAME.match(entry.name)) and \
                    time.time() - entry.stat(follow_symlinks=False).st_mtime > _LEGACY_STALE_S
            except OSError:
                stale = False
        if stale:
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process: alive
    return True


def _write_error(path: Path, exc: BaseException) -> OutputPathError:
    """One line for a failed write: the reason the OS gave (full disk, quota, read-only...)."""
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
    else:  # safetensors wraps the OS error: 'IoError(Os { code: 28, ..., message: "No space left on device" })'
        m = re.search(r'message: "([^"]+)"', str(exc))
        reason = m.group(1) if m else str(exc)
    return OutputPathError(f"cannot write {path}: {reason}; the partial file was removed; free disk space or "
                           "choose another output location")


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
        if n == 0 or n > MAX_HEADER_BYTES or 8 + n > size:
            if head[:2] == b"PK" or head[:1] == b"\x80":
                raise WeightsFormatError(
                    f"{what} {path} is a pickled PyTorch checkpoint, which is never loaded (unsafe); "
                    "convert it to .safetensors first"
                )
            if MAX_HEADER_BYTES < n <= size:
                raise WeightsFormatError(f"{what} {path} has a {n / MiB:.0f} MiB header (tensor table and metadata), "
                                         f"more than the {MAX_HEADER_BYTES // MiB} MiB allowed; {hint}")
            raise WeightsFormatError(f"{what} {path} is not a safetensors file or is truncated; {hint}")
        raw = fh.read(n)
    header = parse_json(raw, f"{what} {path}: its safetensors header", hint, WeightsFormatError,
                        max_bytes=MAX_HEADER_BYTES)
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
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
            or not 0 <= offs[0] <= offs[1] <= data_len
        ):
            raise WeightsFormatError(f"{what} {path} is truncated or corrupt (tensor {key!r}); {hint}")
        shape, dtype = info.get("shape"), info.get("dtype")
        if (
            dtype not in _DTYPE_BYTES
            or not isinstance(shape, list)
            or len(shape) > 8
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            or math.prod(shape) * _DTYPE_BYTES[dtype] != offs[1] - offs[0]
        ):
            raise WeightsFormatError(f"{what} {path} is corrupt: tensor {key!r} has dtype {dtype!r} and shape "
                                     f"{shape!r}, which do not fit its {offs[1] - offs[0]} bytes; {hint}")
    return header


def load_safetensors(
    path: str | os.PathLike, what: str = "weights file", device: str = "cpu",
    keep: Optional[Callable[[str], bool]] = None,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load the tensors (those whose name ``keep`` accepts, default all) and the raw string metadata of a
    safetensors file, with clear errors."""
    header = read_safetensors_header(path, what)
    try:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt", device=device) as f:
            for key in f.keys():
                if keep is None or keep(key):
                    tensors[key] = f.get_tensor(key)
    except Exception as exc:  # safetensors raises several exception types for bad files
        raise WeightsFormatError(f"{what} {path} could not be read as safetensors ({exc}); re-export it") from None
    return tensors, dict(header.get("__metadata__", {}))


def decode_metadata(meta: Mapping[str, str]) -> dict[str, Any]:
    """Decode metadata values written by :func:`save_safetensors_atomic` (JSON where possible).

    A value that is not JSON, or nests deeper than :data:`~scdpo.limits.MAX_JSON_DEPTH`, stays the
    raw string: the reader that needs it then refuses it by name."""
    out: dict[str, Any] = {}
    for k, v in meta.items():
        try:
            value = json.loads(v)
        except (json.JSONDecodeError, TypeError, RecursionError):
            value = v
        out[k] = value if json_depth_ok(value) else v
    return out
