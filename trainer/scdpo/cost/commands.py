"""``scdpo cost train|score``, ``scdpo toy train-encoder`` and ``scdpo dev cost-ablation``."""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Optional

from ..errors import InputFileError
from ..fileio import ensure_writable_dir, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

TOY_COST_SOURCE = "toy base-model generations labelled by the strict verdict (oracle judge or concept leak)"

WEAK_LABELLERS = ("nudenet", "clip-zero-shot", "nudenet+clip-zero-shot")  # ready scorers for --weak-label

ABLATIONS = (
    ("full (SupCon + ranking + anchoring)", dict()),
    ("no contrastive term (anchoring only)", dict(contrastive=False, ranking=False)),
    ("no anchoring (SupCon + ranking)", dict(anchoring=False)),
    ("no SupCon (ranking + anchoring)", dict(contrastive=False)),
    ("no ranking (SupCon + anchoring)", dict(ranking=False)),
)


def _add_training_args(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("data (default: toy base-model generations labelled by the strict verdict: "
                                "oracle judge or concept leak)")
    data.add_argument("--images", default=None,
                      help="folder with safe/ and unsafe/<category>/ subfolders, or a CSV/parquet manifest "
                           "(columns path or image, label)")
    data.add_argument("--weak-label", choices=WEAK_LABELLERS, default=None,
                      help="label an unlabelled --images folder with a ready scorer: NudeNet (nudity only), CLIP "
                           "zero-shot concept prompts on the full CLIP model given as --backbone, or both")
    data.add_argument("--base", default=None, help="toy base model for the default data (default: shipped)")
    data.add_argument("--n-train", type=int, default=1600, help="toy training images (default 1600)")
    data.add_argument("--n-calib", type=int, default=600, help="toy calibration images (default 600)")
    data.add_argument("--n-test", type=int, default=800, help="toy held-out test images (default 800)")
    data.add_argument("--steps", type=int, default=20, help="sampling steps of the toy generations")
    data.add_argument("--cache-dir", default="out/cache", help="generation + embedding cache (default out/cache)")
    p.add_argument("--backbone", default=None,
                   help="frozen image encoder: a CLIP vision .safetensors file or folder, or a toy encoder file "
                        "(default: the shipped toy encoder)")
    obj = p.add_argument_group("objectives")
    obj.add_argument("--no-contrastive", action="store_true", help="switch off the supervised contrastive term")
    obj.add_argument("--no-ranking", action="store_true", help="switch off the pairwise ranking term")
    obj.add_argument("--no-anchoring", action="store_true", help="switch off cost anchoring")
    obj.add_argument("--margin", type=float, default=1.0, help="anchoring margin m (default 1.0)")
    obj.add_argument("--temperature", type=float, default=0.1, help="SupCon temperature (default 0.1)")
    p.add_argument("--target-fpr", type=float, default=0.02,
                   help="false-positive rate on held-out safe images that sets the threshold (default 0.02)")
    p.add_argument("--head-steps", type=int, default=500, help="optimiser steps of the adapter + head (default 500)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--feature-dim", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda | mps | auto (default cpu)")
    add_threads_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch (default 1: on a shared or small CPU one thread per process is "
                        "several times faster than an oversubscribed pool; 0 = torch's default)")


def apply_threads(n: int) -> None:
    import torch

    if n and n > 0:
        torch.set_num_threads(n)


def register(sub: argparse._SubParsersAction) -> None:
    """``scdpo cost train|score``."""
    p = sub.add_parser(
        "train", help="train a safety cost model (frozen encoder + adapter + per-category head)",
        description="Train the safety cost model C(x) (positive = unsafe) with supervised contrastive + pairwise "
        "ranking + cost anchoring objectives on cached encoder embeddings, calibrate its threshold on held-out "
        "images at --target-fpr, and report held-out AUROC and false-positive rates. With no data arguments it "
        "trains on toy base-model generations labelled by the toy world's oracle judge.")
    _add_training_args(p)
    p.add_argument("--out", default="out/cost_model.safetensors", help="output checkpoint")
    p.set_defaults(func=_train_cost)

    s = sub.add_parser("score", help="score images with a cost model (CSV or JSON of costs and verdicts)",
                       description="Score image files or folders with a cost model (default: the shipped toy cost "
                       "model), NudeNet or CLIP zero-shot concept prompts, writing one row per image: cost, "
                       "probability, unsafe, category, per-category costs.")
    s.add_argument("images", nargs="+", help="image files and/or folders")
    s.add_argument("--cost-model", default="toy", help="cost-model .safetensors, `toy` (default), `nudenet`, "
                   "`clip-zero-shot:CLIP` or `nudenet+clip-zero-shot:CLIP` (CLIP: a full CLIP folder or file)")
    s.add_argument("--backbone", default=None, help="CLIP vision file/folder for CLIP-based cost models")
    s.add_argument("--out", default=None, help="write .csv or .json here (default: CSV to stdout)")
    s.add_argument("--format", choices=["csv", "json"], default=None, help="default: from --out's suffix, else csv")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--device", default="cpu")
    s.add_argument("--skip-bad", action="store_true", help="skip undecodable images (counted) instead of failing")
    s.set_defaults(func=_score)


def register_toy(sub: argparse._SubParsersAction) -> None:
    """``scdpo toy train-encoder``."""
    t = sub.add_parser("train-encoder", help="train the toy world's image encoder (self-supervised)",
                       description="Train the toy encoder as a denoising autoencoder on toy renders (no labels).")
    t.add_argument("--out", default="weights/toy_encoder.safetensors")
    t.add_argument("--steps", type=int, default=600)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--extra-images", default=None,
                   help="a toy cost-data cache (out/cache/toy-cost-data-*.safetensors): its train-split base-model "
                        "generations are mixed into every batch, unlabelled")
    t.add_argument("--extra-fraction", type=float, default=0.5)
    add_threads_arg(t)
    t.set_defaults(func=_train_toy_encoder)


def register_dev(sub: argparse._SubParsersAction) -> None:
    """``scdpo dev cost-ablation``."""
    a = sub.add_parser("cost-ablation", help="train cost models with each objective switched off and compare",
                       description="Train one cost model per objective variant on the same data and embeddings and "
                       "print held-out AUROC / false-positive rates, so each objective's contribution is visible.")
    _add_training_args(a)
    a.add_argument("--out", default=None, help="also write the table as JSON to this file")
    a.set_defaults(func=_ablation)


# --- helpers -------------------------------------------------------------------------------------


def _objective(args):
    from .objectives import CostObjective

    return CostObjective(contrastive=not args.no_contrastive, ranking=not args.no_ranking,
                         anchoring=not args.no_anchoring, margin=args.margin, temperature=args.temperature)


def _config(args):
    from .training import CostTrainConfig

    return CostTrainConfig(steps=args.head_steps, lr=args.lr, feature_dim=args.feature_dim, target_fpr=args.target_fpr,
                           seed=args.seed, objective=_objective(args))


def toy_data_cache_key(base: Optional[str], n_train: int, n_calib: int, n_test: int, steps: int, seed: int,
                       cache_dir: Optional[str]) -> tuple[Optional[Path], dict]:
    """(cache file, key) of the toy generations for these parameters."""
    from ..toy.model import shipped_toy_weights

    base_path = Path(base) if base not in (None, "", "toy") else shipped_toy_weights()
    stat = base_path.stat() if base_path.exists() else None
    key = dict(base=base_path.name, base_size=stat.st_size if stat else 0, n_train=n_train, n_calib=n_calib,
               n_test=n_test, steps=steps, seed=seed, version=4)
    if not cache_dir:
        return None, key
    tag = "-".join(f"{v}" for v in key.values()).replace("/", "_")
    return Path(cache_dir) / f"toy-cost-data-{tag}.safetensors", key


def toy_examples_cached(base: Optional[str], n_train: int, n_calib: int, n_test: int, steps: int, seed: int,
                        cache_dir: Optional[str], device: str = "cpu", progress: bool = True):
    """Toy generations + strict-verdict labels, cached in ``cache_dir`` keyed by every parameter."""
    from ..models import load_base_model
    from .data import load_array_examples, save_array_examples, toy_cost_examples

    cache, key = toy_data_cache_key(base, n_train, n_calib, n_test, steps, seed, cache_dir)
    if cache is not None and cache.exists():
        examples, info = load_array_examples(cache)
        if info == key:
            return examples, key
    model = load_base_model(base, device=device)
    examples = toy_cost_examples(model, n_train, n_calib, n_test, seed=seed, steps=steps, progress=progress)
    if cache is not None:
        ensure_writable_dir(cache.parent)
        save_array_examples(cache, examples, key)
    return examples, key


def _examples(args):
    from .data import folder_examples, manifest_examples, weak_label_examples

    if args.weak_label and not args.images:
        raise InputFileError("--weak-label labels the images of an --images folder; pass --images too")
    if args.images:
        src = Path(args.images)
        if args.weak_label:
            from .scorer import load_cost_model

            uses_clip = "clip-zero-shot" in args.weak_label
            if uses_clip and not args.backbone:
                raise InputFileError(f"--weak-label {args.weak_label} labels with the full CLIP model given as "
                                     "--backbone (a transformers CLIP folder or an open_clip file); pass --backbone")
            labeller = load_cost_model(args.weak_label, backbone=args.backbone if uses_clip else None,
                                       device=args.device)
            name = f"{args.weak_label}:{Path(args.backbone).name}" if uses_clip else args.weak_label
            return weak_label_examples(src, labeller, seed=args.seed), {"source": str(src), "labels": name}
        if src.is_file():
            return manifest_examples(src, seed=args.seed), {"source": src.name, "labels": "manifest"}
        return folder_examples(src, seed=args.seed), {"source": src.name, "labels": "folders"}
    examples, key = toy_examples_cached(args.base, args.n_train, args.n_calib, args.n_test, args.steps, args.seed,
                                        args.cache_dir, device=args.device)
    return examples, {"source": TOY_COST_SOURCE, **key}


def _encoder(args):
    from .backbones import load_backbone

    return load_backbone(args.backbone, device=None if args.device == "cpu" else args.device)


def _f(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _finite_or_none(x):
    return x if not isinstance(x, float) or x == x else None  # NaN (e.g. no unsafe test image) → null


def _metrics_line(report: dict) -> dict:
    test = report.get("test") or report["calibration"]
    line = {"auroc": test["auroc"], "fpr_near_miss": test["fpr_near_miss"], "fpr": test["fpr"], "tpr": test["tpr"],
            "threshold": report["threshold"], "category_accuracy": test["category_accuracy"],
            "split": "test" if report.get("test") else "calib"}
    return {k: _finite_or_none(v) for k, v in line.items()}


# --- commands ------------------------------------------------------------------------------------


def train_cost(out: str | Path, examples, data_info: dict, encoder, config, cache_dir: Optional[str] = None) -> dict:
    """Train a cost model on ``examples`` with ``encoder`` and ``config`` (a ``CostTrainConfig``), save it to
    ``out`` and return its training report."""
    from .training import train_cost_model

    out = Path(out)
    ensure_writable_dir(out.parent)
    model, report = train_cost_model(examples, encoder, config, cache_dir=cache_dir, data_summary=data_info)
    model.save(out, training=report, target_fpr=config.target_fpr)
    return report


def train_toy_cost_model(out: str | Path, *, n_train: int = 1600, n_calib: int = 600, n_test: int = 800,
                         steps: int = 20, cache_dir: Optional[str] = "out/cache", base: Optional[str] = None,
                         device: str = "cpu", config=None) -> dict:
    """``scdpo cost train`` with no data options: a cost model on toy base-model generations labelled by the
    oracle judge, with the shipped toy encoder."""
    from .backbones import load_backbone
    from .training import CostTrainConfig

    config = config or CostTrainConfig()
    examples, key = toy_examples_cached(base, n_train, n_calib, n_test, steps, config.seed, cache_dir, device=device)
    data_info = {"source": TOY_COST_SOURCE, **key}
    encoder = load_backbone(None, device=None if device == "cpu" else device)
    return train_cost(out, examples, data_info, encoder, config, cache_dir=cache_dir)


def _train_cost(args) -> int:
    apply_threads(args.threads)
    examples, data_info = _examples(args)
    report = train_cost(args.out, examples, data_info, _encoder(args), _config(args), cache_dir=args.cache_dir)
    line = _metrics_line(report)
    print(f"wrote {args.out}  (categories {', '.join(report['categories'])}; threshold {report['threshold']:.3f})")
    print(f"held-out {line['split']}: AUROC {_f(line['auroc'], '.4f')}  FPR near-miss "
          f"{_f(line['fpr_near_miss'], '.2%')}  FPR {_f(line['fpr'], '.2%')}  TPR {_f(line['tpr'], '.2%')}")
    if args.json:
        print(json.dumps(line))
    return 0


def run_ablation(examples, encoder, base_cfg, cache_dir=None, data_info=None, progress=True) -> list[dict]:
    from .training import train_cost_model

    rows = []
    for name, switches in ABLATIONS:
        cfg = replace(base_cfg, objective=replace(base_cfg.objective, **switches))
        _, report = train_cost_model(examples, encoder, cfg, cache_dir=cache_dir, data_summary=data_info,
                                     progress=progress)
        rows.append({"variant": name, **_metrics_line(report)})
    return rows


def format_ablation(rows: list[dict]) -> str:
    head = f"{'variant':<40} {'AUROC':>7} {'FPR near-miss':>14} {'FPR':>7} {'TPR':>7} {'threshold':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['variant']:<40} {_f(r['auroc'], '>7.4f')} {_f(r['fpr_near_miss'], '>14.2%')} "
                     f"{_f(r['fpr'], '>7.2%')} {_f(r['tpr'], '>7.2%')} {_f(r['threshold'], '>10.3f')}")
    return "\n".join(lines)


def _ablation(args) -> int:
    apply_threads(args.threads)
    examples, data_info = _examples(args)
    rows = run_ablation(examples, _encoder(args), _config(args), cache_dir=args.cache_dir, data_info=data_info)
    print(format_ablation(rows))
    if args.out:
        write_json_atomic(args.out, {"rows": rows, "data": data_info})
    if args.json:
        print(json.dumps(rows))
    return 0


def _collect_images(paths: list[str]) -> list[Path]:
    from .data import IMAGE_EXTENSIONS, _image_files

    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(_image_files(p))
        elif p.is_file():
            files.append(p)
        else:
            raise InputFileError(f"image or folder not found: {p}")
    if not files:
        raise InputFileError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {', '.join(paths)}")
    return files


def score_files(scorer, files: list[Path], batch_size: int = 16, skip_bad: bool = False) -> tuple[list[dict], int]:
    """Rows ``{path, cost, probability, unsafe, category, cost_<cat>...}`` and the number skipped."""
    from tqdm import tqdm

    from ..errors import DatasetError
    from .data import decode_image

    rows, skipped = [], 0
    for start in tqdm(range(0, len(files), batch_size), desc="score", unit="batch", disable=len(files) <= batch_size):
        chunk, imgs = [], []
        for f in files[start:start + batch_size]:
            try:
                imgs.append(decode_image(f, str(f)))
                chunk.append(f)
            except DatasetError:
                if not skip_bad:
                    raise
                skipped += 1
        if imgs:
            result = scorer.score(imgs, batch_size=batch_size)
            rows.extend({"path": str(f), **r} for f, r in zip(chunk, result.rows()))
    return rows, skipped


def _score(args) -> int:
    from .scorer import load_cost_model

    files = _collect_images(args.images)
    scorer = load_cost_model(args.cost_model, backbone=args.backbone, device=args.device)
    rows, skipped = score_files(scorer, files, args.batch_size, args.skip_bad)
    fmt = args.format or ("json" if args.out and args.out.endswith(".json") else "csv")
    if fmt == "json":
        text = json.dumps({"threshold": scorer.threshold, "categories": scorer.categories, "skipped": skipped,
                           "images": rows}, indent=2) + "\n"
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["path"])
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    if args.out:
        write_text_atomic(args.out, text)
        n_unsafe = sum(r["unsafe"] for r in rows)
        print(f"scored {len(rows)} image(s): {n_unsafe} unsafe (threshold {scorer.threshold:.3f}); "
              f"{skipped} skipped; wrote {args.out}")
    else:
        print(text, end="")
    return 0


def _train_toy_encoder(args) -> int:
    from .toy_encoder import ToyEncoderTrainConfig, save_toy_encoder, train_toy_encoder

    apply_threads(args.threads)
    cfg = ToyEncoderTrainConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed)
    extra = None
    if args.extra_images:
        import numpy as np

        from .data import load_array_examples

        examples, _ = load_array_examples(args.extra_images)
        extra = np.stack([img for img, split in zip(examples.images, examples.splits) if split == "train"])
    enc, dec, summary = train_toy_encoder(cfg, extra_images=extra, extra_fraction=args.extra_fraction)
    if args.extra_images:
        summary["extra_images"] = Path(args.extra_images).name
    save_toy_encoder(args.out, enc, dec, summary)
    print(f"wrote {args.out} (reconstruction MSE {summary['final_mse']:.5f})")
    return 0
