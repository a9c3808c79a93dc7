"""Training a cost model: cached embeddings → head → threshold calibration → held-out metrics.

Read top to bottom: config → embeddings (cached per encoder, so the head trains in seconds and
ablations re-use them) → head training on the ``train`` split → threshold at a target
false-positive rate on the ``calib`` split → AUROC / FPR on the ``test`` split → checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from ..fileio import load_safetensors, save_safetensors_atomic
from ..errors import InputFileError, ScdpoError
from .backbones import ImageEncoder
from .data import CostExamples, decode_image, image_key
from .model import SafetyCostModel
from .objectives import CostObjective, cost_model_loss


@dataclass
class CostTrainConfig:
    steps: int = 500  # optimiser steps over the cached embeddings (each a random batch)
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    feature_dim: int = 128
    target_fpr: float = 0.02  # on the calibration split's safe images
    seed: int = 0
    objective: CostObjective = field(default_factory=CostObjective)


# --- embedding cache -----------------------------------------------------------------------------


class EmbeddingCache:
    """Embeddings of images under one encoder, stored in ``<dir>/<encoder digest>.safetensors``
    (tensors ``keys`` uint8 ``[N,20]`` = sha1 of the image content, ``embeddings`` ``[N,D]``)."""

    def __init__(self, cache_dir: Optional[str | Path], encoder: ImageEncoder):
        self.encoder = encoder
        self.path = Path(cache_dir) / f"embeddings-{encoder.weights_digest()}.safetensors" if cache_dir else None
        self.table: dict[bytes, torch.Tensor] = {}
        if self.path is not None and self.path.exists():
            try:
                tensors, _ = load_safetensors(self.path, what="embedding cache")
                keys, emb = tensors["keys"], tensors["embeddings"]
                if emb.shape[-1] == encoder.embed_dim and len(keys) == len(emb):
                    self.table = {bytes(k.tolist()): e for k, e in zip(keys, emb)}
            except (ScdpoError, KeyError):
                self.table = {}  # a broken cache is rebuilt, never trusted

    def embed(self, examples: CostExamples, batch_size: int = 64, progress: bool = True) -> torch.Tensor:
        """``[N, D]`` float32 CPU embeddings of ``examples.images`` (computing only missing ones)."""
        keys = [hashlib.sha1(image_key(it)).digest() for it in examples.images]
        missing = [i for i, k in enumerate(keys) if k not in self.table]
        bar = tqdm(total=len(missing), desc="embed", disable=not progress or not missing, unit="img")
        for start in range(0, len(missing), batch_size):
            idx = missing[start:start + batch_size]
            imgs = [decode_image(examples.images[i], examples.names[i]) for i in idx]
            emb = self.encoder.encode(imgs, batch_size=batch_size).float().cpu()
            for i, e in zip(idx, emb):
                self.table[keys[i]] = e
            bar.update(len(idx))
        bar.close()
        if missing and self.path is not None:
            self.save()
        if not keys:
            return torch.zeros(0, self.encoder.embed_dim)
        return torch.stack([self.table[k] for k in keys])

    def save(self) -> None:
        keys = torch.tensor([list(k) for k in self.table], dtype=torch.uint8)
        emb = torch.stack(list(self.table.values()))
        save_safetensors_atomic({"keys": keys, "embeddings": emb}, self.path,
                                {"backbone_id": self.encoder.backbone_id})


# --- metrics -------------------------------------------------------------------------------------


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve (Mann–Whitney U with tied ranks averaged). NaN if one class is absent."""
    s = scores.double().cpu().numpy()
    y = positive.bool().cpu().numpy()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def calibrate_threshold(safe_costs: torch.Tensor, target_fpr: float) -> float:
    """The smallest threshold with at most ``floor(target_fpr · n)`` safe costs strictly above it."""
    if not 0.0 <= target_fpr < 1.0:
        raise ScdpoError(f"target false-positive rate must be in [0, 1), got {target_fpr}")
    if len(safe_costs) == 0:
        return 0.0
    desc = torch.sort(safe_costs.float(), descending=True).values
    k = int(math.floor(target_fpr * len(desc)))
    return float(desc[min(k, len(desc) - 1)])


def evaluate_costs(per_category: torch.Tensor, examples: CostExamples, categories: list[str], threshold: float) -> dict:
    """Held-out metrics: AUROC (unsafe vs safe), FPR on safe and on near-miss images, TPR, and the
    accuracy of the top category on correctly flagged unsafe images."""
    cost = per_category.max(-1).values
    unsafe = torch.tensor([lab is not None for lab in examples.labels])
    near = torch.tensor(examples.near_miss, dtype=torch.bool) & ~unsafe
    flagged = cost > threshold

    def rate(mask):
        return float(flagged[mask].float().mean()) if mask.any() else float("nan")

    hit = flagged & unsafe
    cat_ok = [categories[int(per_category[i].argmax())] == examples.labels[i] for i in torch.nonzero(hit).flatten()]
    return {"auroc": auroc(cost, unsafe), "fpr": rate(~unsafe), "fpr_near_miss": rate(near), "tpr": rate(unsafe),
            "category_accuracy": float(np.mean(cat_ok)) if cat_ok else float("nan"), "threshold": threshold,
            "n": len(examples), "n_unsafe": int(unsafe.sum()), "n_near_miss": int(near.sum())}


# --- head training -------------------------------------------------------------------------------


def _label_tensor(examples: CostExamples, categories: list[str]) -> torch.Tensor:
    return torch.tensor([categories.index(lab) if lab else -1 for lab in examples.labels], dtype=torch.long)


def _group_tensor(examples: CostExamples) -> torch.Tensor:
    names = sorted({g for g in examples.groups if g})
    return torch.tensor([names.index(g) if g else -1 for g in examples.groups], dtype=torch.long)


@contextlib.contextmanager
def _single_thread_on_cpu(device: torch.device):
    """The head's ops are tiny; on CPU one thread is several times faster than a contended pool."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_head(model: SafetyCostModel, embeddings: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor,
               cfg: CostTrainConfig, progress: bool = True) -> list[dict]:
    """Train adapter + head on cached embeddings; returns mean losses every tenth of the run."""
    with _single_thread_on_cpu(model.head.weight.device):
        return _train_head(model, embeddings, labels, groups, cfg, progress)


def _train_head(model, embeddings, labels, groups, cfg: CostTrainConfig, progress: bool) -> list[dict]:
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    params = list(model.adapter.parameters()) + list(model.head.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    device = model.head.weight.device
    embeddings, labels, groups = embeddings.to(device), labels.to(device), groups.to(device)
    n = len(embeddings)
    history: list[dict] = []
    sums: dict[str, float] = {}
    log_every = max(1, cfg.steps // 10)
    model.adapter.train()
    order = torch.randperm(n, generator=gen)
    cursor = 0
    for step in tqdm(range(cfg.steps), desc="cost head", disable=not progress, unit="step"):
        if cursor + min(cfg.batch_size, n) > n:  # reshuffle once an epoch is used up
            order, cursor = torch.randperm(n, generator=gen), 0
        idx = order[cursor:cursor + cfg.batch_size].to(device)
        cursor += len(idx)
        per_cat, feats = model.category_costs(embeddings[idx])
        loss, parts = cost_model_loss(model.total_cost(per_cat), per_cat, feats, labels[idx], cfg.objective,
                                      groups=_ranking_groups(groups[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v / log_every
        if (step + 1) % log_every == 0:
            history.append({"step": step + 1, **{k: round(v, 5) for k, v in sums.items()}})
            sums = {}
    model.adapter.eval()
    for p in params:
        p.requires_grad_(False)
    return history


def _ranking_groups(groups: torch.Tensor) -> Optional[torch.Tensor]:
    """Groups for the ranking term, or None when no example has one (= all pairs)."""
    return None if (groups < 0).all() else groups


@torch.no_grad()
def predict(model: SafetyCostModel, embeddings: torch.Tensor) -> torch.Tensor:
    per_cat, _ = model.category_costs(embeddings.to(model.head.weight.device))
    return per_cat.float().cpu()


def train_cost_model(examples: CostExamples, encoder: ImageEncoder, cfg: CostTrainConfig,
                     cache_dir: Optional[str | Path] = None, progress: bool = True,
                     data_summary: Optional[dict] = None) -> tuple[SafetyCostModel, dict]:
    """The whole recipe; returns the calibrated model and a report (held-out metrics, history)."""
    t0 = time.time()
    categories = examples.categories()
    if not categories:
        raise InputFileError("the training data has no unsafe images; a cost model needs unsafe examples")
    train, calib, test = (examples.subset(s) for s in ("train", "calib", "test"))
    if len(train) == 0 or len(calib) == 0:
        raise InputFileError("the training data needs train and calibration images; add more images")
    cache = EmbeddingCache(cache_dir, encoder)
    emb = {name: cache.embed(part, progress=progress) for name, part in (("train", train), ("calib", calib),
                                                                         ("test", test))}
    torch.manual_seed(cfg.seed)  # the head's initialisation: same seed, same model, whatever ran before
    model = SafetyCostModel(encoder, categories, feature_dim=cfg.feature_dim)
    labels = _label_tensor(train, categories)
    groups = _group_tensor(train)
    history = train_head(model, emb["train"], labels, groups, cfg, progress=progress)
    calib_pc = predict(model, emb["calib"])
    safe_mask = torch.tensor([lab is None for lab in calib.labels])
    model.threshold = calibrate_threshold(calib_pc.max(-1).values[safe_mask], cfg.target_fpr)
    report = {
        "categories": categories,
        "threshold": model.threshold,
        "target_fpr": cfg.target_fpr,
        "objectives": cfg.objective.active_terms(),
        "objective_config": asdict(cfg.objective),
        "train_config": {k: v for k, v in asdict(cfg).items() if k != "objective"},
        "data": data_summary or {},
        "splits": examples.summary(),
        "calibration": evaluate_costs(calib_pc, calib, categories, model.threshold),
        "final_losses": history[-1] if history else {},
        "seconds": None,
    }
    if len(test):
        report["test"] = evaluate_costs(predict(model, emb["test"]), test, categories, model.threshold)
    report["seconds"] = round(time.time() - t0, 1)
    model.training_summary = report
    return model, report
