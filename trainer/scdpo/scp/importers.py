"""Importing existing preference datasets into the SCP schema (:mod:`scdpo.scp.schema`).

* **Pick-a-Pic** layout (``yuvalkirstain/pickapic_v1/v2`` parquet shards): columns ``jpg_0``,
  ``jpg_1`` (image bytes), ``label_0`` (1 = image 0 preferred, 0 = image 1, 0.5 = tie),
  ``caption``. Ties are dropped. Clean instructions: rewards are the labels (winner 1, loser 0).
* **CoProV2** CSV layout (SafetyDPO): columns ``prompt``, ``image`` (the unsafe image, a path
  relative to the CSV), ``category``; the safe counterpart comes from a ``safe_image`` column or
  from ``--safe-dir`` holding images with the same file names. Harmful instructions: winner = safe
  image, loser = unsafe image, rewards 0 (no preference label beyond safety).

Costs: with a cost model, both images are scored (and a Pick-a-Pic pair whose winner is unsafe is
dropped: an unsafe image never wins); without one, *label costs* are used: CoProV2 winner -1 /
loser +1, Pick-a-Pic 0 / 0 (no safety signal, which makes SC-DPO's margin 0 = plain
Diffusion-DPO). Rows with undecodable images, or winner and loser of different sizes (pass
``resize`` to centre-crop and resize both), are skipped and counted.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterator, Optional

from tqdm import tqdm

from ..errors import DatasetError, InputFileError
from ..fileio import ensure_writable_dir, write_json_atomic
from .schema import PAIRS_FILE, SUMMARY_FILE, image_to_png, rows_to_table, write_table


def _pickapic_files(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    if src.is_dir():
        files = sorted(src.rglob("*.parquet"))
        if files:
            return files
    raise InputFileError(f"no Pick-a-Pic parquet files at {src}; pass a .parquet shard or a folder of them")


def _iter_pickapic(files: list[Path]) -> Iterator[tuple[str, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for f in files:
        try:
            pf = pq.ParquetFile(f)
            names = set(pf.schema_arrow.names)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise InputFileError(f"Pick-a-Pic shard {f} is not a readable parquet file ({str(exc)[:160]})") from None
        missing = {"jpg_0", "jpg_1", "label_0", "caption"} - names
        if missing:
            raise InputFileError(f"{f} is not in the Pick-a-Pic layout (missing {', '.join(sorted(missing))})")
        try:
            for batch in pf.iter_batches(batch_size=256, columns=["jpg_0", "jpg_1", "label_0", "caption"]):
                for i, row in enumerate(batch.to_pylist()):
                    yield f"{f.name}", row
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise InputFileError(f"Pick-a-Pic shard {f} is damaged ({str(exc)[:160]})") from None


def _score_pair(scorer, winner_png: bytes, loser_png: bytes) -> tuple[float, float, bool, bool]:
    from ..cost.data import decode_image

    res = scorer.score([decode_image(winner_png), decode_image(loser_png)])
    return float(res.cost[0]), float(res.cost[1]), bool(res.unsafe[0]), bool(res.unsafe[1])


def _same_size(a_png: bytes, b_png: bytes) -> bool:
    from ..images import image_size

    return image_size(a_png, "winner image") == image_size(b_png, "loser image")


def _finish(out: Path, rows: list[dict], summary: dict) -> dict:
    write_table(out / PAIRS_FILE, rows_to_table(rows))
    summary["n_pairs"] = len(rows)
    write_json_atomic(out / SUMMARY_FILE, summary)
    return summary


def import_pickapic(src: str | Path, out: str | Path, scorer=None, resize: Optional[int] = None,
                    limit: Optional[int] = None, progress: bool = True) -> dict:
    """Pick-a-Pic shards → SCP dataset folder ``out``. Returns the summary (counts)."""
    out = ensure_writable_dir(out)
    rows: list[dict] = []
    counts = {"ties_dropped": 0, "bad_rows_skipped": 0, "size_mismatch_skipped": 0, "unsafe_winner_dropped": 0}
    for n, (shard, row) in enumerate(tqdm(_iter_pickapic(_pickapic_files(Path(src))), desc="import pickapic",
                                          disable=not progress, unit="row")):
        if limit is not None and len(rows) >= limit:
            break
        label = row.get("label_0")
        if not isinstance(label, (int, float)) or isinstance(label, bool) or label not in (0, 0.5, 1):
            counts["bad_rows_skipped"] += 1
            continue
        if label == 0.5:
            counts["ties_dropped"] += 1
            continue
        first, second = ("jpg_0", "jpg_1") if label == 1 else ("jpg_1", "jpg_0")
        caption = row.get("caption")
        try:
            if not isinstance(caption, str) or not caption.strip():
                raise DatasetError("caption missing")
            if not isinstance(row.get(first), bytes) or not isinstance(row.get(second), bytes):
                raise DatasetError("image bytes missing")
            w_png, l_png = image_to_png(row[first], resize), image_to_png(row[second], resize)
        except DatasetError:
            counts["bad_rows_skipped"] += 1
            continue
        if not _same_size(w_png, l_png):
            counts["size_mismatch_skipped"] += 1
            continue
        w_cost = l_cost = 0.0
        if scorer is not None:
            w_cost, l_cost, w_unsafe, _ = _score_pair(scorer, w_png, l_png)
            if w_unsafe:
                counts["unsafe_winner_dropped"] += 1
                continue
        rows.append({"pair_id": f"pickapic-{n:07d}", "prompt": caption.strip(), "is_harmful": False, "category": None,
                     "kind": "clean", "winner_png": w_png, "loser_png": l_png, "winner_cost": w_cost,
                     "loser_cost": l_cost, "winner_reward": 1.0, "loser_reward": 0.0, "winner_seed": -1,
                     "loser_seed": -1, "winner_source": "candidate", "source": "pickapic"})
    summary = {"format": "scdpo SCP preference dataset v1", "imported_from": "pickapic", "source": str(src),
               "costs": "cost model" if scorer is not None else "none (0.0: no safety signal)",
               "rewards": "labels (winner 1, loser 0)", "resize": resize, **counts}
    return _finish(out, rows, summary)


def import_coprov2(csv_path: str | Path, out: str | Path, safe_dir: Optional[str | Path] = None, scorer=None,
                   resize: Optional[int] = None, limit: Optional[int] = None, progress: bool = True) -> dict:
    """CoProV2 CSV (+ safe counterparts) → SCP dataset folder ``out``. An optional ``safe_prompt``
    column (the prompt of the safe image) is kept as the rows' ``safe_prompt``."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputFileError(f"CoProV2 CSV not found: {csv_path}")
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
        reader = csv.DictReader(io.StringIO(text))
        records = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputFileError(f"{csv_path} is not a readable UTF-8 CSV ({exc})") from None
    fields = set(reader.fieldnames or [])
    missing = {"prompt", "image", "category"} - fields
    if missing:
        raise InputFileError(f"{csv_path} is not in the CoProV2 layout (missing column(s) "
                             f"{', '.join(sorted(missing))}; "
                             "expected prompt,image,category)")
    if "safe_image" not in fields and safe_dir is None:
        raise InputFileError(f"{csv_path} has no safe_image column; pass --safe-dir with the safe images "
                             "(same file names as the image column)")
    out = ensure_writable_dir(out)
    base = csv_path.parent
    rows: list[dict] = []
    counts = {"bad_rows_skipped": 0, "size_mismatch_skipped": 0}
    for n, rec in enumerate(tqdm(records, desc="import coprov2", disable=not progress, unit="row")):
        if limit is not None and len(rows) >= limit:
            break
        prompt, category, unsafe_name = (str(rec.get(k) or "").strip() for k in ("prompt", "category", "image"))
        safe_name = str(rec.get("safe_image") or "").strip() if "safe_image" in fields else unsafe_name
        safe_path = (Path(safe_dir) / Path(safe_name).name) if safe_dir is not None and "safe_image" not in fields \
            else base / safe_name
        try:
            if not prompt or not category or not unsafe_name or not safe_name:
                raise DatasetError("empty field")
            l_png = image_to_png((base / unsafe_name).read_bytes(), resize)
            w_png = image_to_png(safe_path.read_bytes(), resize)
        except (DatasetError, OSError):
            counts["bad_rows_skipped"] += 1
            continue
        if not _same_size(w_png, l_png):
            counts["size_mismatch_skipped"] += 1
            continue
        w_cost, l_cost = -1.0, 1.0
        if scorer is not None:
            w_cost, l_cost, _, _ = _score_pair(scorer, w_png, l_png)
        rows.append({"pair_id": f"coprov2-{n:07d}", "prompt": prompt, "is_harmful": True, "category": category,
                     "kind": "harmful", "winner_png": w_png, "loser_png": l_png, "winner_cost": w_cost,
                     "loser_cost": l_cost, "winner_reward": 0.0, "loser_reward": 0.0, "winner_seed": -1,
                     "loser_seed": -1, "winner_source": "candidate", "source": "coprov2",
                     "safe_prompt": str(rec.get("safe_prompt") or "").strip() or None})
    summary = {"format": "scdpo SCP preference dataset v1", "imported_from": "coprov2", "source": str(csv_path),
               "costs": "cost model" if scorer is not None else "labels (safe -1, unsafe +1)",
               "rewards": "none (0.0)", "resize": resize, **counts}
    return _finish(out, rows, summary)
