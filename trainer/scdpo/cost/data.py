"""Labelled images for training and calibrating a cost model.

:class:`CostExamples` is a list of images (uint8 arrays in memory, or files) with a label each
(``None`` = safe, else an unsafe category name), an optional *group* (prompt or concept; the
ranking term pairs unsafe and safe images of the same group), a near-miss flag (a clean image
that resembles a category: where false positives are measured) and a split
(``train`` | ``calib`` | ``test``).

Sources:
* :func:`toy_cost_examples` — generations of a toy base model for train-split prompts (train and
  calibration) and held-out prompts (test), labelled by the strict verdict (oracle judge or concept leak);
* :func:`folder_examples` — ``DIR/safe/*`` and ``DIR/unsafe/<category>/*``;
* :func:`manifest_examples` — a CSV or parquet manifest (``path`` or ``image`` bytes, ``label``);
* :func:`weak_label_examples` — an unlabelled folder labelled by a scorer (NudeNet, CLIP zero-shot);
* :func:`weak_label_manifest` — in-memory images (a recipe's candidates) labelled by a scorer, written
  as a manifest + PNGs for ``scdpo cost train --images``.
"""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from tqdm import tqdm

from ..errors import DatasetError, InputFileError
from ..limits import read_parquet_rows

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")  # the formats scdpo.images decodes
SAFE_LABELS = ("", "safe", "none", "clean", "0")
ImageItem = Union[np.ndarray, Path, bytes]


@dataclass
class CostExamples:
    images: list = field(default_factory=list)  # np.uint8 [H,W,3] | Path | PNG/JPEG bytes
    labels: list = field(default_factory=list)  # None (safe) | category name
    groups: list = field(default_factory=list)  # str | None
    near_miss: list = field(default_factory=list)  # bool
    splits: list = field(default_factory=list)  # train | calib | test
    names: list = field(default_factory=list)  # for error messages and score tables

    def __len__(self) -> int:
        return len(self.images)

    def add(self, image, label: Optional[str], group: Optional[str] = None, near_miss: bool = False,
            split: str = "train", name: str = "") -> None:
        self.images.append(image)
        self.labels.append(label or None)
        self.groups.append(group)
        self.near_miss.append(bool(near_miss))
        self.splits.append(split)
        self.names.append(name or f"image {len(self.images) - 1}")

    def categories(self) -> list[str]:
        return sorted({lab for lab in self.labels if lab})

    def subset(self, split: str) -> "CostExamples":
        out = CostExamples()
        for i, s in enumerate(self.splits):
            if s == split:
                out.add(self.images[i], self.labels[i], self.groups[i], self.near_miss[i], s, self.names[i])
        return out

    def summary(self) -> dict:
        out: dict = {}
        for split in ("train", "calib", "test"):
            sub = [i for i, s in enumerate(self.splits) if s == split]
            counts: dict[str, int] = {}
            for i in sub:
                key = self.labels[i] or ("safe_near_miss" if self.near_miss[i] else "safe")
                counts[key] = counts.get(key, 0) + 1
            out[split] = {"n": len(sub), **dict(sorted(counts.items()))}
        return out

    def assign_random_splits(self, seed: int = 0, calib: float = 0.15, test: float = 0.15) -> None:
        """Stratified (per label) random train/calib/test split of every example."""
        rng = random.Random(seed)
        by_label: dict = {}
        for i, lab in enumerate(self.labels):
            by_label.setdefault((lab, self.near_miss[i]), []).append(i)
        for idx in by_label.values():
            rng.shuffle(idx)
            n_cal = max(1, round(calib * len(idx))) if len(idx) >= 3 else 0
            n_test = max(1, round(test * len(idx))) if len(idx) >= 3 else 0
            for j, i in enumerate(idx):
                self.splits[i] = "calib" if j < n_cal else "test" if j < n_cal + n_test else "train"


def decode_image(item: ImageItem, name: str = "image") -> torch.Tensor:
    """An item → ``[H,W,3]`` float 0..1. Files and bytes must be PNG, JPEG or WebP within
    :data:`~scdpo.limits.MAX_IMAGE_PIXELS`; anything else raises :class:`DatasetError` naming them."""
    from ..images import decode_rgb_array

    if isinstance(item, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(item[..., :3])).float() / 255.0
    arr = decode_rgb_array(item, name)
    return torch.from_numpy(arr.copy()).float() / 255.0


def image_key(item: ImageItem) -> bytes:
    """Bytes identifying an image's content (for the embedding cache)."""
    if isinstance(item, np.ndarray):
        return repr(item.shape).encode() + np.ascontiguousarray(item).tobytes()
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    try:
        return Path(item).read_bytes()
    except OSError:
        raise DatasetError(f"{item}: image file is missing or unreadable") from None


# --- toy world -----------------------------------------------------------------------------------


# Column shifts that move a thing from the right-hand place to the left-hand one and to the centre
# (the toy world's three places, see toy.world.CENTRES).
TOY_PLACE_SHIFTS = (-7, -3)


def toy_cost_examples(model, n_train: int = 1600, n_calib: int = 600, n_test: int = 800, seed: int = 0,
                      steps: int = 20, batch_size: int = 128, harmful_frac: float = 0.45,
                      near_miss_frac: float = 0.3, progress: bool = True, shift_places: bool = True,
                      leak_labels: bool = True) -> CostExamples:
    """Base-model generations labelled by the oracle judge and the concept-leak check.

    With ``leak_labels`` (the default) an image is also unsafe when its prompt's harmful concept
    *leaks* (:func:`~scdpo.toy.judge.concept_leak`: the concept's shape at its place in a colour the
    judge does not read, e.g. faint drops where the base draws a splatter): the label is the strict
    verdict the reports use, so the cost model learns the concept, not the judge's colours.

    The training split's captions put a harmful or look-alike thing on the right or on the left
    (its caption shapes), never in the centre; a gate must see it anywhere. With ``shift_places``
    every train and calibration image is also added rolled sideways (with wrap-around) by
    :data:`TOY_PLACE_SHIFTS` columns, same label: an image augmentation that moves each thing to the
    other places, so no other split's prompts are used.

    Train and calibration images come from ``ToyWorld("train")`` prompts, test images from
    ``ToyWorld("validation")`` prompts (surface forms, templates and caption shapes no training stage
    uses) with other seeds. Group
    = the concept (category a harmful or near-miss prompt is about); plain clean prompts get no
    group (they pair with every unsafe image in the ranking term).
    """
    from ..toy.judge import concept_leak, judge_images
    from ..toy.world import EMPTY_SCENE_FRAC, ToyWorld

    plan = [("train", "train", n_train, seed), ("calib", "train", n_calib, seed + 1),
            ("test", "validation", n_test, seed + 2)]
    out = CostExamples()
    total = n_train + n_calib + n_test
    bar = tqdm(total=total, desc="generate+judge", disable=not progress, unit="img")
    for split, world_split, n, s in plan:
        world = ToyWorld(world_split)
        rng = random.Random(f"cost-data-{split}-{s}")
        prompts = [world.sample_prompt(rng, harmful_frac, near_miss_frac, empty_frac=EMPTY_SCENE_FRAC)
                   for _ in range(n)]
        for start in range(0, n, batch_size):
            chunk = prompts[start:start + batch_size]
            seeds = [10_000_000 * (s + 1) + start + i for i in range(len(chunk))]
            imgs = model.generate([p.text for p in chunk], seed=seeds, steps=steps)
            arr = (imgs.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            verdicts = judge_images(arr)  # judge exactly the stored 8-bit image: rounding to 8 bits flips some labels
            for i, (p, v) in enumerate(zip(chunk, verdicts)):
                label = v.unsafe_category or (concept_leak(arr[i], p) if leak_labels else None)
                near_miss = p.kind == "near_miss" and not label
                out.add(arr[i], label, p.category, near_miss, split, f"{split}/{start + i:05d} ({p.kind}: {p.text})")
                for shift in (TOY_PLACE_SHIFTS if shift_places and split != "test" else ()):
                    out.add(np.ascontiguousarray(np.roll(arr[i], shift, axis=1)), label, p.category, near_miss, split,
                            f"{split}/{start + i:05d} shifted {shift} ({p.kind}: {p.text})")
            bar.update(len(chunk))
    bar.close()
    return out


# --- user folders and manifests ------------------------------------------------------------------


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def folder_examples(root: str | Path, seed: int = 0) -> CostExamples:
    """``root/safe/**`` (safe) and ``root/unsafe/<category>/**``; ``root/near_miss/**`` optional
    (safe, counted as near-miss). Random stratified train/calib/test split."""
    root = Path(root)
    if not root.is_dir():
        raise InputFileError(f"image folder not found: {root}; pass a folder with safe/ and unsafe/<category>/")
    safe_dir, unsafe_dir = root / "safe", root / "unsafe"
    if not safe_dir.is_dir() or not unsafe_dir.is_dir():
        raise InputFileError(f"{root} must contain safe/ and unsafe/<category>/ subfolders (or pass a manifest "
                             "CSV/parquet with path,label columns)")
    out = CostExamples()
    for p in _image_files(safe_dir):
        out.add(p, None, name=str(p))
    if (root / "near_miss").is_dir():
        for p in _image_files(root / "near_miss"):
            out.add(p, None, near_miss=True, name=str(p))
    for cat_dir in sorted(d for d in unsafe_dir.iterdir() if d.is_dir()):
        for p in _image_files(cat_dir):
            out.add(p, cat_dir.name, group=None, name=str(p))
    _check_enough(out, str(root))
    out.assign_random_splits(seed)
    return out


def _check_enough(ex: CostExamples, where: str) -> None:
    n_unsafe = sum(1 for lab in ex.labels if lab)
    n_safe = len(ex) - n_unsafe
    if n_unsafe < 3 or n_safe < 3:
        raise InputFileError(f"{where} has {n_safe} safe and {n_unsafe} unsafe image(s); a cost model needs at least "
                             "3 of each (dozens to thousands in practice)")


def manifest_examples(path: str | Path, seed: int = 0) -> CostExamples:
    """CSV or parquet with columns ``path`` (relative to the manifest) or ``image`` (bytes), and
    ``label`` (``safe``/empty or a category); optional ``group``, ``near_miss``, ``split``."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"manifest not found: {path}")
    rows = _read_manifest_rows(path)
    out = CostExamples()
    have_split = False
    for i, row in enumerate(rows):
        where = f"{path.name} row {i + 1}"
        label = row.get("label", row.get("category"))
        if label is not None and not isinstance(label, str):
            raise DatasetError(f"{where}: label must be text (safe or a category name), got {label!r}")
        label = None if label is None or label.strip().lower() in SAFE_LABELS else label.strip()
        if isinstance(row.get("image"), (bytes, bytearray)) and row["image"]:
            item: ImageItem = bytes(row["image"])
        elif isinstance(row.get("path"), str) and row["path"].strip():
            item = (path.parent / row["path"].strip()).resolve()
        else:
            raise DatasetError(f"{where}: needs a `path` (file relative to the manifest) or `image` (bytes) value")
        split = row.get("split") if row.get("split") in ("train", "calib", "test") else "train"
        have_split = have_split or row.get("split") in ("calib", "test")
        nm = str(row.get("near_miss", "")).strip().lower() in ("1", "true", "yes")
        group = row.get("group") if isinstance(row.get("group"), str) and row.get("group") else None
        out.add(item, label, group, nm, split, f"{where} ({row.get('path') or 'embedded image'})")
    _check_enough(out, str(path))
    if not have_split:
        out.assign_random_splits(seed)
    return out


def _read_manifest_rows(path: Path) -> list[dict]:
    if path.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(path).names
            return read_parquet_rows(path, names, "manifest", "rebuild it", InputFileError)
        except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
            raise InputFileError(f"manifest {path} is not a readable parquet file ({str(exc)[:160]})") from None
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputFileError(f"manifest {path} is not UTF-8 text; save it as UTF-8 CSV") from None
    try:
        reader = csv.DictReader(io.StringIO(text))
        rows = list(reader)
    except csv.Error as exc:
        raise InputFileError(f"manifest {path} is not valid CSV ({exc})") from None
    fields = set(reader.fieldnames or [])
    if not ({"path", "image"} & fields) or not ({"label", "category"} & fields):
        raise InputFileError(f"manifest {path} needs a header with `path` and `label` columns (got {sorted(fields)})")
    return rows


def weak_label_examples(folder: str | Path, labeller, seed: int = 0, batch_size: int = 8,
                        progress: bool = True) -> CostExamples:
    """Label every image of an unlabelled folder with ``labeller.weak_labels`` (NudeNet, CLIP zero-shot)."""
    folder = Path(folder)
    files = _image_files(folder) if folder.is_dir() else []
    if not files:
        raise InputFileError(f"no images found in {folder} to weak-label")
    out = CostExamples()
    for start in tqdm(range(0, len(files), batch_size), desc="weak labels", disable=not progress, unit="batch"):
        chunk = files[start:start + batch_size]
        labels = labeller.weak_labels([decode_image(p, str(p)) for p in chunk])
        for p, lab in zip(chunk, labels):
            out.add(p, lab, name=str(p))
    _check_enough(out, f"{folder} (after weak labelling)")
    out.assign_random_splits(seed)
    return out


def weak_label_manifest(images: Sequence, labeller, out: str | Path, groups: Optional[Sequence[str]] = None,
                        min_margin: float = 0.0, batch_size: int = 16) -> dict:
    """Label images with a ready scorer (``clip-zero-shot``, NudeNet, a combination) and write
    ``out/manifest.csv`` (columns ``path,label,group``), the manifest ``scdpo cost train --images
    out/manifest.csv`` reads; in-memory images are written as ``out/images/NNNNN.png``.

    ``images``: a recipe's own candidates: ``[H,W,3]`` uint8 arrays, ``[H,W,3]`` float 0..1 tensors or
    arrays, or image files (referenced by path, not copied). ``groups``: one per image (e.g. its prompt),
    so the ranking term pairs the unsafe and safe candidates of one prompt. Label: the top category of
    an image the scorer calls unsafe, else ``safe``. An image whose cost lies within ``min_margin`` of
    the scorer's threshold is left out: a weak label that close to the boundary is a coin toss.
    Returns ``{"manifest": path, "labels": {label: count}, "uncertain": count}``."""
    from PIL import Image

    from ..fileio import atomic_path, ensure_writable_dir, write_text_atomic

    out = ensure_writable_dir(out)
    if groups is not None and len(groups) != len(images):
        raise DatasetError(f"weak labels: {len(images)} image(s) but {len(groups)} group(s)")
    rows, counts, uncertain = [], {}, 0
    for start in range(0, len(images), batch_size):
        chunk = list(range(start, min(start + batch_size, len(images))))
        pixels = [_as_float_image(images[i], f"image {i}") for i in chunk]
        result = labeller.score(pixels, batch_size=batch_size)
        for j, i in enumerate(chunk):
            if abs(float(result.cost[j]) - result.threshold) < min_margin:
                uncertain += 1
                continue
            item = images[i]
            if isinstance(item, (str, Path)):
                path = str(Path(item).resolve())
            else:
                (out / "images").mkdir(exist_ok=True)
                path = f"images/{i:05d}.png"
                arr = (pixels[j].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
                with atomic_path(out / path) as tmp:
                    Image.fromarray(arr).save(tmp, format="PNG")
            label = result.top_category(j) or "safe"
            counts[label] = counts.get(label, 0) + 1
            rows.append({"path": path, "label": label, "group": groups[i] if groups is not None else ""})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["path", "label", "group"])
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "manifest.csv", buf.getvalue())
    return {"manifest": out / "manifest.csv", "labels": dict(sorted(counts.items())), "uncertain": uncertain}


def _as_float_image(item, name: str) -> torch.Tensor:
    """An image item or a float ``[H,W,3]`` 0..1 tensor/array → ``[H,W,3]`` float tensor."""
    if isinstance(item, torch.Tensor) and item.is_floating_point():
        return item[..., :3].float().cpu()
    if isinstance(item, np.ndarray) and item.dtype != np.uint8:
        return torch.from_numpy(np.ascontiguousarray(item[..., :3])).float()
    if isinstance(item, str):
        item = Path(item)
    return decode_image(item, name)


def load_images(items: Sequence[ImageItem], names: Sequence[str]) -> list[torch.Tensor]:
    return [decode_image(it, nm) for it, nm in zip(items, names)]


# --- in-memory example sets as one safetensors file (the toy generations cache) -------------------

_SPLITS = ("train", "calib", "test")


def save_array_examples(path: str | Path, examples: CostExamples, info: dict) -> None:
    """Save examples whose images are equal-size uint8 arrays (tensors + JSON metadata)."""
    from ..fileio import save_safetensors_atomic

    cats = examples.categories()
    groups = sorted({g for g in examples.groups if g})
    tensors = {
        "images": torch.from_numpy(np.stack(examples.images)),
        "labels": torch.tensor([cats.index(lab) if lab else -1 for lab in examples.labels]),
        "groups": torch.tensor([groups.index(g) if g else -1 for g in examples.groups]),
        "near_miss": torch.tensor(examples.near_miss, dtype=torch.uint8),
        "splits": torch.tensor([_SPLITS.index(s) for s in examples.splits]),
    }
    save_safetensors_atomic(tensors, path, {"scdpo_kind": "cost_examples", "categories": cats, "groups": groups,
                                            "names": examples.names, "info": info})


def load_array_examples(path: str | Path) -> tuple[CostExamples, dict]:
    from ..errors import WeightsFormatError
    from ..fileio import decode_metadata, load_safetensors

    tensors, raw = load_safetensors(path, what="cost examples cache")
    meta = decode_metadata(raw)
    try:
        if meta.get("scdpo_kind") != "cost_examples":
            raise KeyError("scdpo_kind")
        cats, groups, names = meta["categories"], meta["groups"], meta["names"]
        out = CostExamples()
        images = tensors["images"].numpy()
        for i in range(len(images)):
            lab, g = int(tensors["labels"][i]), int(tensors["groups"][i])
            out.add(images[i], cats[lab] if lab >= 0 else None, groups[g] if g >= 0 else None,
                    bool(tensors["near_miss"][i]), _SPLITS[int(tensors["splits"][i])], names[i])
    except (KeyError, IndexError, TypeError, ValueError):
        raise WeightsFormatError(f"{path} is not a valid cost examples cache; delete it to regenerate") from None
    return out, meta.get("info", {})
