"""Reading an SCP dataset (``pairs.parquet``) with validation of every row.

``load_scp_dataset(path, skip_bad=False, expected_size=None) -> ScpDataset``. Every row is checked
when the dataset is opened: a missing or undecodable image, a winner/loser of different sizes or
not ``expected_size``, a NaN/inf cost or reward, or a missing/invalid field raises one
:class:`~scdpo.errors.DatasetError` naming the row (``pair_id`` and row number) — or, with
``skip_bad=True``, the row is skipped and counted in ``ScpDataset.skipped`` (reasons in
``ScpDataset.skip_reasons``). Images are PNG, JPEG or WebP within the pixel limits of
:mod:`scdpo.limits` (per image and per row, checked from their headers before decoding); they are
decoded to validate them and again when an item is read, never all held decoded.

Item ``i`` is a dict: ``prompt`` str, ``winner`` / ``loser`` ``[H,W,3]`` float32 0..1 tensors,
``winner_cost``, ``loser_cost``, ``winner_reward``, ``loser_reward`` floats, ``is_harmful`` bool,
``category`` str|None, ``kind`` str, ``pair_id`` str, ``safe_prompt`` str|None (the harmful
instruction's safe rewrite; None when unknown or for a harmless pair), ``concept_push`` float|None
(attack pairs: see :mod:`scdpo.scp.schema`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ..errors import DatasetError, InputFileError
from ..images import decode_rgb_array, image_size
from ..limits import MAX_IMAGE_PIXELS, MAX_ROW_PIXELS, read_json_file, read_parquet_rows
from .schema import COLUMNS, KINDS, OPTIONAL_COLUMNS, PAIRS_FILE, REQUIRED_COLUMNS, WINNER_SOURCES

Size = Union[int, tuple[int, int], None]
_BINARY = ("winner_png", "loser_png")
_FLOATS = ("winner_cost", "loser_cost", "winner_reward", "loser_reward")


def _decode_png(data, what: str, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """PNG (or JPEG/WebP) bytes → ``uint8 [H,W,3]``; ValueError naming ``what`` for anything else."""
    if data is None or len(data) == 0:
        raise ValueError(f"{what} is missing")
    try:
        return decode_rgb_array(data, what, max_pixels)
    except DatasetError as exc:
        raise ValueError(str(exc)) from None


def _image_sizes(row: dict) -> tuple[tuple[int, int], tuple[int, int]]:
    """(width, height) of the winner and loser from their headers; checked against the pixel limits
    before either is decoded."""
    sizes = []
    for key, what in (("winner_png", "winner image"), ("loser_png", "loser image")):
        data = row.get(key)
        if data is None or len(data) == 0:
            raise ValueError(f"{what} is missing")
        try:
            w, h = image_size(data, what)
        except DatasetError as exc:
            raise ValueError(str(exc)) from None
        if w * h > MAX_IMAGE_PIXELS:
            raise ValueError(f"{what} is {w}x{h} pixels, more than the {MAX_IMAGE_PIXELS / 1e6:.1f} megapixels "
                             "allowed per image; downscale it")
        sizes.append((w, h))
    if sum(w * h for w, h in sizes) > MAX_ROW_PIXELS:
        raise ValueError(f"winner and loser hold {sum(w * h for w, h in sizes) / 1e6:.1f} megapixels together, more "
                         f"than the {MAX_ROW_PIXELS / 1e6:.1f} allowed per row; downscale them")
    return sizes[0], sizes[1]


def _check_row(row: dict, expected: Optional[tuple[int, int]]) -> None:
    """Validate one row, its images decoded once and released. Raises ValueError with the reason."""
    for key in ("pair_id", "prompt"):
        if not isinstance(row.get(key), str) or not row[key]:
            raise ValueError(f"{key} is missing or empty")
    if not isinstance(row.get("is_harmful"), bool):
        raise ValueError("is_harmful is missing")
    if row.get("kind") not in KINDS:
        raise ValueError(f"kind {row.get('kind')!r} is not one of {', '.join(KINDS)}")
    if row.get("winner_source") not in WINNER_SOURCES:
        raise ValueError(f"winner_source {row.get('winner_source')!r} is not one of {', '.join(WINNER_SOURCES)}")
    if row["is_harmful"] and not (isinstance(row.get("category"), str) and row["category"]):
        raise ValueError("a harmful pair needs a category")
    safe = row.get("safe_prompt")
    if safe is not None and not (isinstance(safe, str) and safe.strip()):
        raise ValueError(f"safe_prompt {safe!r} is not a non-empty string (null when unknown)")
    if safe is not None and not row["is_harmful"]:
        raise ValueError("safe_prompt is set on a harmless pair (it is the safe rewrite of a harmful prompt)")
    push = row.get("concept_push")
    if push is not None:
        if isinstance(push, bool) or not isinstance(push, (int, float)) or not math.isfinite(push) or push <= 0:
            raise ValueError(f"concept_push is {push!r}; it must be a positive number (null for an ordinary pair)")
        if safe is None:
            raise ValueError("concept_push is set but safe_prompt is empty (an attack pair pushes the safe rewrite)")
    for key in _FLOATS:
        v = row.get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise ValueError(f"{key} is {v!r} (NaN, inf or missing)")
    (ww, wh), (lw, lh) = _image_sizes(row)
    if (ww, wh) != (lw, lh):
        raise ValueError(f"winner is {ww}x{wh} but loser is {lw}x{lh}")
    if expected is not None and (wh, ww) != tuple(expected):
        raise ValueError(f"images are {ww}x{wh}, expected {expected[1]}x{expected[0]}")
    for key, what in (("winner_png", "winner image"), ("loser_png", "loser image")):
        if _decode_png(row[key], what).shape[:2] != (wh, ww):  # decodes fully: truncated data shows here
            raise ValueError(f"{what} decodes to another size than its header says")


def _read_rows(path: Path) -> list[dict]:
    """The rows of ``pairs.parquet``, its columns checked first and its decoded size bounded
    (:func:`~scdpo.limits.read_parquet_rows`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fix = "rebuild it with `scdpo data build` or re-import it"
    try:
        schema = pq.read_schema(path)
        missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
        if missing:
            raise DatasetError(f"SCP dataset {path} lacks column(s) {', '.join(missing)}; it was not written by "
                               "`scdpo data build` / `scdpo data import`")
        for col in _BINARY:
            kind = schema.field(col).type
            if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
                raise DatasetError(f"SCP dataset {path}: column {col} must hold PNG bytes, not {kind}")
        return read_parquet_rows(path, list(COLUMNS), "SCP dataset", fix, DatasetError)
    except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
        raise DatasetError(f"SCP dataset {path} is not a readable parquet file ({str(exc)[:160]}); {fix}") from None


class ScpDataset(torch.utils.data.Dataset):
    """Validated pairs. Images stay PNG bytes in memory and are decoded when an item is read (a
    decoded image is several times larger than its PNG). See module docstring."""

    def __init__(self, rows: list[dict], path: Path, skipped: int, skip_reasons: dict[str, int], summary: dict):
        self.rows = rows
        self.path = path
        self.skipped = skipped
        self.skip_reasons = skip_reasons
        self.summary = summary

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        winner = _decode_png(row["winner_png"], f"{self.path} row {row['pair_id']!r} winner image")
        loser = _decode_png(row["loser_png"], f"{self.path} row {row['pair_id']!r} loser image")
        return {
            "prompt": row["prompt"],
            "winner": torch.tensor(winner, dtype=torch.float32) / 255.0,  # a copy: decoded arrays are read-only
            "loser": torch.tensor(loser, dtype=torch.float32) / 255.0,
            "winner_cost": float(row["winner_cost"]),
            "loser_cost": float(row["loser_cost"]),
            "winner_reward": float(row["winner_reward"]),
            "loser_reward": float(row["loser_reward"]),
            "is_harmful": bool(row["is_harmful"]),
            "category": row["category"],
            "kind": row["kind"],
            "pair_id": row["pair_id"],
            "safe_prompt": row["safe_prompt"],
            "concept_push": row["concept_push"],
        }

    def pair_info(self, i: int) -> tuple[bool, Optional[str]]:
        """``(is_harmful, category)`` of pair ``i`` without building its image tensors."""
        return bool(self.rows[i]["is_harmful"]), self.rows[i]["category"]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows:
            out[row["kind"]] = out.get(row["kind"], 0) + 1
        return out


def resolve_pairs_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / PAIRS_FILE
    if not path.is_file():
        raise InputFileError(f"SCP dataset not found: {path}; pass the folder written by `scdpo data build` "
                             f"(it holds {PAIRS_FILE})")
    return path


def load_scp_dataset(path: str | Path, skip_bad: bool = False, expected_size: Size = None) -> ScpDataset:
    """Open and validate an SCP dataset folder (or its ``pairs.parquet``). See module docstring."""
    pairs = resolve_pairs_file(path)
    all_rows = _read_rows(pairs)
    expected = (expected_size, expected_size) if isinstance(expected_size, int) else expected_size
    rows, reasons = [], {}
    for row in all_rows:
        for col in OPTIONAL_COLUMNS:
            row.setdefault(col, None)
    for i, row in enumerate(all_rows):
        try:
            _check_row(row, tuple(expected) if expected else None)
        except ValueError as exc:
            if not skip_bad:
                raise DatasetError(f"SCP dataset {pairs}: row {i} (pair_id {row.get('pair_id')!r}): {exc}; fix or "
                                   "drop the row, or pass --skip-bad to skip broken rows") from None
            reason = str(exc).split(" (")[0]
            reasons[reason] = reasons.get(reason, 0) + 1
            continue
        rows.append(row)
    summary = {}
    summary_file = pairs.parent / "dataset.json"
    if summary_file.is_file():
        try:
            summary = read_json_file(summary_file, "dataset summary", "")
        except InputFileError:
            summary = {}  # the summary is informative only; the parquet is the dataset
    if not rows:
        raise DatasetError(f"SCP dataset {pairs} has no usable pairs ({sum(reasons.values())} broken rows)")
    return ScpDataset(rows, pairs, sum(reasons.values()), reasons, summary if isinstance(summary, dict) else {})
