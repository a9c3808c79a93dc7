"""What we accept from a file or a request we did not write: the limits, and the checks that use them.

Users load LoRAs, cost models and datasets made by strangers, and the web UI and the webui scoring
endpoint take requests from whoever reaches them. Everything such an input controls is checked
here *before* it is used: sizes before memory is allocated, architecture numbers before a model is
built, image dimensions before pixels are decoded, numbers that steer the safety gate for being
finite. A failed check raises one :class:`~scdpo.errors.ScdpoError` naming the thing and the fix.

The limits (each is far above anything a real file or request of this project holds):

=============================  =========================  ==================================================
limit                          value                      why this much
=============================  =========================  ==================================================
:data:`MAX_HEADER_BYTES`       16 MiB                     safetensors JSON header (tensor table + metadata);
                                                          an SDXL checkpoint's is ~0.3 MB, kohya metadata < 2 MB
:data:`MAX_JSON_BYTES`         16 MiB                     a JSON side file (adapter_config.json, model_index.json,
                                                          config.json, dataset.json, report.json)
:data:`MAX_JSON_DEPTH`         64                         nesting of any JSON we parse (configs nest 3-4 deep)
:data:`MAX_IMAGE_PIXELS`       4096 × 4096 (16.8 MP)      one decoded image (50 MB as RGB bytes)
:data:`MAX_ROW_PIXELS`         2 × 2048 × 2048 (8.4 MP)   both images of one dataset row together
:data:`MAX_REQUEST_PIXELS`     4 × 2048 × 2048 (16.8 MP)  all images of one scoring request together
:data:`MAX_REQUEST_BYTES`      32 MiB                     body of one scoring request (base64 JSON)
:data:`MAX_REQUEST_IMAGES`     64                         images in one scoring request
:func:`max_parquet_bytes`      128 MiB + 16 × file size   what a parquet file may decode to (declared and read)
=============================  =========================  ==================================================

Architecture numbers a file may set are range-checked where its model is built (see
:data:`UNET_RANGES`, :data:`TEXT_RANGES`, :data:`COST_RANGES`, :data:`TOY_ENCODER_RANGES`,
``scdpo.cost.backbones.CLIP_VISION_RANGES`` and ``scdpo.cost.clip_model.TEXT_CONFIG_RANGES``), and the
model is then compared, shape by shape, with the tensors the file holds before it is allocated. Every error message is one line of at most
:data:`~scdpo.errors.MAX_MESSAGE_CHARS` (400) characters.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional

from .errors import InputFileError, ScdpoError

MiB = 1024 * 1024
MAX_HEADER_BYTES = 16 * MiB
MAX_JSON_BYTES = 16 * MiB
MAX_JSON_DEPTH = 64
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_ROW_PIXELS = 2 * 2048 * 2048
MAX_REQUEST_PIXELS = 4 * 2048 * 2048
MAX_REQUEST_BYTES = 32 * MiB
MAX_REQUEST_IMAGES = 64
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")  # what Pillow may decode; never EPS (Ghostscript), never others


def max_parquet_bytes(file_size: int) -> int:
    """The most decompressed bytes a parquet file of ``file_size`` bytes may declare. PNG bytes do not
    compress, so real datasets expand about 1×; a zstd bomb expands thousands of times."""
    return 128 * MiB + 16 * file_size


def read_parquet_rows(path: str | os.PathLike, columns: list[str], what: str, fix: str,
                      error: type[ScdpoError]) -> list[dict]:
    """The rows of a parquet file (``columns`` that it has), read batch by batch: the data it decodes
    to may not pass :func:`max_parquet_bytes` of its size (a few KB of zstd or dictionary-encoded
    zeros can decode to gigabytes). Parquet library errors propagate to the caller."""
    import pyarrow.parquet as pq

    path = Path(path)
    size = path.stat().st_size
    limit = max_parquet_bytes(size)
    parquet = pq.ParquetFile(path)
    meta = parquet.metadata
    declared = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    present = [c for c in columns if c in parquet.schema_arrow.names]
    rows: list[dict] = []
    decoded = 0
    for group in range(meta.num_row_groups):  # one row group's size is declared before it is decoded
        if declared > limit or meta.row_group(group).num_rows > 10_000_000:
            break
        for batch in parquet.iter_batches(batch_size=16, row_groups=[group], columns=present):
            decoded += batch.nbytes
            if decoded > limit:
                break
            rows.extend(batch.to_pylist())
        if decoded > limit:
            break
    if declared > limit or decoded > limit:
        raise error(f"{what} {path} decodes to more than {limit / MiB:.0f} MiB from a {size / MiB:.1f} MiB file, "
                    f"more than allowed (a compression bomb?); {fix}")
    return rows


# Sane ranges of the numbers a toy base model's metadata sets: (low, high), inclusive.
UNET_RANGES = {
    "sample_size": (1, 256), "in_channels": (1, 64), "out_channels": (1, 64), "layers_per_block": (1, 4),
    "cross_attention_dim": (1, 4096), "attention_head_dim": (1, 256), "norm_num_groups": (1, 128),
    "block_out_channels": (1, 2048), "blocks": (1, 6),
}
TEXT_RANGES = {
    "vocab_size": (4, 200_000), "hidden_size": (8, 4096), "intermediate_size": (8, 16384),
    "num_hidden_layers": (1, 48), "num_attention_heads": (1, 64), "max_position_embeddings": (2, 1024),
}
COST_RANGES = {"embed_dim": (1, 8192), "feature_dim": (1, 8192), "categories": (1, 64)}
TOY_ENCODER_RANGES = {"embed_dim": (1, 4096), "widths": (8, 1024), "layers": (1, 5)}
MAX_NAME_CHARS = 200  # a category or other name read from a file


# -- numbers ----------------------------------------------------------------------------------------


def is_number(value: Any) -> bool:
    """A real int or float (not a bool, not a string)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def finite_number(value: Any, what: str, fix: str, error: type[ScdpoError] = ScdpoError) -> float:
    """``value`` as a float if it is a finite number, else ``error`` naming ``what``."""
    if not is_number(value) or not math.isfinite(value):
        raise error(f"{what} is {_short(value)}, not a finite number; {fix}")
    return float(value)


def int_in_range(value: Any, what: str, low: int, high: int, fix: str,
                 error: type[ScdpoError] = ScdpoError) -> int:
    """``value`` if it is an int in ``[low, high]``, else ``error`` naming ``what`` and the range."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise error(f"{what} is {_short(value)}; it must be a whole number from {low} to {high}; {fix}")
    return value


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- JSON -------------------------------------------------------------------------------------------


def json_depth_ok(value: Any, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """True if ``value`` (parsed JSON) nests at most ``max_depth`` levels (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > max_depth:
                return False
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return True


def parse_json(data: bytes | str, what: str, fix: str, error: type[ScdpoError] = InputFileError,
               max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Parse untrusted JSON: UTF-8, at most ``max_bytes`` and :data:`MAX_JSON_DEPTH` deep, no NaN or
    Infinity literals. Anything else raises ``error`` naming ``what`` (a file or field) and ``fix``."""
    if len(data) > max_bytes:
        raise error(f"{what} is {len(data) / MiB:.1f} MiB, more than the {max_bytes // MiB} MiB allowed; {fix}")
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise error(f"{what} is not UTF-8 text; {fix}") from None
    try:
        value = json.loads(data, parse_constant=_refuse_constant)
    except (json.JSONDecodeError, ValueError) as exc:
        raise error(f"{what} is not valid JSON ({str(exc)[:80]}); {fix}") from None
    except RecursionError:
        value = _TOO_DEEP
    if value is _TOO_DEEP or not json_depth_ok(value):
        raise error(f"{what} nests JSON more than {MAX_JSON_DEPTH} levels deep; {fix}")
    return value


_TOO_DEEP = object()


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def read_json_file(path: str | os.PathLike, what: str, fix: str, error: type[ScdpoError] = InputFileError) -> Any:
    """Read and :func:`parse_json` a file, refusing one larger than :data:`MAX_JSON_BYTES` unread."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise error(f"{what} {path} is {size / MiB:.1f} MiB, more than the {MAX_JSON_BYTES // MiB} MiB "
                        f"allowed; {fix}")
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"{what} {path} cannot be read ({exc.strerror or exc}); {fix}") from None
    return parse_json(data, f"{what} {path}", fix, error)


def json_object(value: Any, what: str, fix: str, error: type[ScdpoError] = InputFileError) -> dict:
    """``value`` if it is a JSON object, else ``error``."""
    if not isinstance(value, dict):
        raise error(f"{what} is a JSON {type(value).__name__}, not an object; {fix}")
    return value


def check_ranges(config: Mapping[str, Any], ranges: Mapping[str, tuple[int, int]], what: str, fix: str,
                 error: type[ScdpoError]) -> None:
    """Every key of ``ranges`` present in ``config`` is an int in its range (lists: each item)."""
    for key, (low, high) in ranges.items():
        if key not in config:
            continue
        values = config[key]
        for item in values if isinstance(values, (list, tuple)) else [values]:
            int_in_range(item, f"{what}: {key}", low, high, fix, error)


def inside(path: str | os.PathLike, root: str | os.PathLike) -> Optional[Path]:
    """``path`` resolved (symlinks followed, relative to ``root``) if it lies inside ``root``, else None."""
    root = Path(root).resolve()
    candidate = Path(path)
    resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    return resolved if resolved == root or root in resolved.parents else None
