"""Reading an SCP dataset (``pairs.parquet``) with validation of every row.

``load_scp_dataset(path, skip_bad=False, expected_size=None) -> ScpDataset``. Every row is checked
when the dataset is opened: a missing or undecodable image, a winner/loser of different sizes or
not ``expected_size``, a NaN/inf cost or reward, or a missing/invalid field raises one
:class:`~scdpo.errors.DatasetError` naming the row (``pair_id`` and row number) — or, with
``skip_bad=True``, the row is skipped and counted in ``ScpDataset.skipped`` (reasons in
``ScpDataset.skip_reasons``).

Item ``i`` is a dict: ``prompt`` str, ``winner`` / ``loser`` ``[H,W,3]`` float32 0..1 tensors,
``winner_cost``, ``loser_cost``, ``winner_reward``, ``loser_reward`` floats, ``is_harmful`` bool,
``category`` str|None, ``kind`` str, ``pair_id`` str, ``safe_prompt`` str|None (the harmful
instruction's safe rewrite; None when unknown or for a harmless pair), ``concept_push`` float|None
(attack pairs: see :mod:`scdpo.scp.schema`).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ..errors import DatasetError, InputFileError
from .schema import COLUMNS, KINDS, OPTIONAL_COLUMNS, PAIRS_FILE, REQUIRED_COLUMNS, WINNER_SOURCES

Size = Union[int, tuple[int, int], None]
_BINARY = ("winner_png", "loser_png")
_FLOATS = ("winner_cost", "loser_cost", "winner_reward", "loser_reward")


def _decode_png(data, what: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if data is None or len(data) == 0:
        raise ValueError(f"{what} is missing")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return np.array(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{what} cannot be decoded ({str(exc)[:120]})") from None


def _check_row(row: dict, expected: Optional[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Validate one row; returns the decoded (winner, loser). Raises ValueError with the reason."""
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
    winner = _decode_png(row.get("winner_png"), "winner image")
    loser = _decode_png(row.get("loser_png"), "loser image")
    if winner.shape != loser.shape:
        raise ValueError(f"winner is {winner.shape[1]}x{winner.shape[0]} but loser is "
                         f"{loser.shape[1]}x{loser.shape[0]}")
    if expected is not None and winner.shape[:2] != expected:
        raise ValueError(f"images are {winner.shape[1]}x{winner.shape[0]}, expected {expected[1]}x{expected[0]}")
    return winner, loser


def _read_table(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
        raise DatasetError(f"SCP dataset {path} is not a readable parquet file ({str(exc)[:160]}); rebuild it with "
                           "`scdpo data build` or re-import it") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise DatasetError(f"SCP dataset {path} lacks column(s) {', '.join(missing)}; it was not written by "
                           "`scdpo data build` / `scdpo data import`")
    for col in _BINARY:
        kind = table.schema.field(col).type
        if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
            raise DatasetError(f"SCP dataset {path}: column {col} must hold PNG bytes, not {kind}")
    return table


class ScpDataset(torch.utils.data.Dataset):
    """Validated pairs (decoded images kept in memory as uint8). See module docstring."""

    def __init__(self, rows: list[dict], images: list[tuple[np.ndarray, np.ndarray]], path: Path, skipped: int,
                 skip_reasons: dict[str, int], summary: dict):
        self.rows = rows
        self.images = images
        self.path = path
        self.skipped = skipped
        self.skip_reasons = skip_reasons
        self.summary = summary

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        winner, loser = self.images[i]
        return {
            "prompt": row["prompt"],
            "winner": torch.from_numpy(winner).float() / 255.0,
            "loser": torch.from_numpy(loser).float() / 255.0,
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
    import json

    pairs = resolve_pairs_file(path)
    table = _read_table(pairs)
    expected = (expected_size, expected_size) if isinstance(expected_size, int) else expected_size
    rows, images, reasons = [], [], {}
    try:
        all_rows = table.select([c for c in COLUMNS if c in table.column_names]).to_pylist()
    except Exception as exc:  # pyarrow can fail converting a damaged column
        raise DatasetError(f"SCP dataset {pairs} has unreadable values ({str(exc)[:160]})") from None
    for row in all_rows:
        for col in OPTIONAL_COLUMNS:
            row.setdefault(col, None)
    for i, row in enumerate(all_rows):
        try:
            decoded = _check_row(row, tuple(expected) if expected else None)
        except ValueError as exc:
            if not skip_bad:
                raise DatasetError(f"SCP dataset {pairs}: row {i} (pair_id {row.get('pair_id')!r}): {exc}; fix or "
                                   "drop the row, or pass --skip-bad to skip broken rows") from None
            reason = str(exc).split(" (")[0]
            reasons[reason] = reasons.get(reason, 0) + 1
            continue
        rows.append(row)
        images.append(decoded)
    summary = {}
    summary_file = pairs.parent / "dataset.json"
    if summary_file.is_file():
        try:
            summary = json.loads(summary_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            summary = {}  # the summary is informative only; the parquet is the dataset
    if not rows:
        raise DatasetError(f"SCP dataset {pairs} has no usable pairs ({sum(reasons.values())} broken rows)")
    return ScpDataset(rows, images, pairs, sum(reasons.values()), reasons, summary if isinstance(summary, dict) else {})
