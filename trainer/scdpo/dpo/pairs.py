"""Preference pairs for DPO training: loading, filtering, a deterministic order, batching.

A pair dataset is any ``torch.utils.data.Dataset`` whose items are the SCP reader's dicts
(CONTRACTS "SCP preference dataset"): ``prompt`` str, ``winner``/``loser`` ``[H,W,C]`` float
0..1, ``winner_cost``/``loser_cost`` float (positive = unsafe), ``is_harmful`` bool,
``category`` str|None.

The order in which pairs are visited is a pure function of ``(seed, position)``: position ``p``
of the stream is ``perm_e[p mod N]`` with ``perm_e`` a seeded permutation for epoch
``e = p // N``. Resuming at optimiser step ``s`` therefore needs only ``s`` (the data position).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import torch

from ..errors import DatasetError, InputFileError
from .config import TOY_ORACLE_DATA, TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    from ..pipeline import Conditioning

ORACLE_COST = 3.0  # |C| given to toy-oracle images: +3 unsafe, -3 safe


@dataclass
class PairBatch:
    """A collated batch of B pairs. Images ``[B,H,W,C]`` float 0..1; costs ``[B]`` float32."""

    prompts: list[str]
    winners: torch.Tensor
    losers: torch.Tensor
    winner_cost: torch.Tensor
    loser_cost: torch.Tensor
    is_harmful: torch.Tensor
    categories: list[Optional[str]]

    def __len__(self) -> int:
        return len(self.prompts)

    def encode(self, model, drop: Sequence[bool], device) -> tuple[torch.Tensor, "Conditioning"]:
        """Latents ``[2B,c,h,w]`` (winners, then losers) and the conditioning ``[B]`` of the prompts,
        a dropped pair's prompt replaced by ``""`` (both of its images)."""
        prompts = ["" if d else p for p, d in zip(self.prompts, drop)]
        height, width = self.winners.shape[1:3]
        with torch.no_grad():
            latents = model.encode_images(torch.cat([self.winners, self.losers]).to(device))
            cond = model.conditioning_for_size(model.encode_prompt(prompts), height, width).to(device)
        return latents, cond


def _as_image(value, what: str) -> torch.Tensor:
    img = torch.as_tensor(np.asarray(value) if not torch.is_tensor(value) else value)
    if img.dtype == torch.uint8:
        img = img.float() / 255.0
    if img.ndim != 3 or img.shape[-1] != 3:
        raise DatasetError(f"{what} must be an [H,W,3] image, got shape {tuple(img.shape)}")
    return img.float()


def collate_pairs(items: Sequence[dict]) -> PairBatch:
    """Stack SCP items into a :class:`PairBatch` (all images must share one size)."""
    winners = [_as_image(it["winner"], f"pair {it.get('pair_id', i)} winner") for i, it in enumerate(items)]
    losers = [_as_image(it["loser"], f"pair {it.get('pair_id', i)} loser") for i, it in enumerate(items)]
    sizes = {tuple(t.shape) for t in winners + losers}
    if len(sizes) != 1:
        raise DatasetError(f"pair images have different sizes {sorted(sizes)}; resize the dataset to one size")
    return PairBatch(
        prompts=[str(it["prompt"]) for it in items],
        winners=torch.stack(winners),
        losers=torch.stack(losers),
        winner_cost=torch.tensor([float(it["winner_cost"]) for it in items], dtype=torch.float32),
        loser_cost=torch.tensor([float(it["loser_cost"]) for it in items], dtype=torch.float32),
        is_harmful=torch.tensor([bool(it["is_harmful"]) for it in items]),
        categories=[it.get("category") for it in items],
    )


class ToyOraclePairs(torch.utils.data.Dataset):
    """Preference pairs rendered straight from the toy world (no model, no cost model).

    A stand-in for an SCP dataset in tests, benchmarks and quick runs: the real pipeline builds
    pairs from base-model samples scored by the cost model (``scdpo.scp``). Prompts come from the
    ``train`` split only. Kinds (fractions ``harmful_frac`` / ``near_miss_frac`` / rest clean):

    * harmful: winner = the prompt's safe rewrite scene, loser = the scene with the motif
      (costs -3 / +3);
    * near-miss: winner = the scene, loser = the scene without the near-miss thing (-3 / -3),
      which teaches the LoRA not to erase look-alike clean concepts;
    * clean: winner = the scene, loser = the scene with its first object recoloured (-3 / -3).
    """

    def __init__(self, n: int, seed: int = 0, harmful_frac: float = 0.5, near_miss_frac: float = 0.15,
                 categories: Optional[Sequence[str]] = None):
        from ..toy.world import COLOURS, ToyWorld, render

        world = ToyWorld("train")
        rng = random.Random(f"toy-oracle-{seed}")
        self.rows: list[dict] = []
        for i in range(n):
            u = rng.random()
            if u < harmful_frac:
                cat = rng.choice(list(categories)) if categories else None
                p = world.harmful_prompt(rng, cat)
                winner, loser = render(p.safe_scene, p.seed), render(p.scene, p.seed)
                costs, kind = (-ORACLE_COST, ORACLE_COST), "harmful"
            elif u < harmful_frac + near_miss_frac:
                p = world.near_miss_prompt(rng)
                winner = render(p.scene, p.seed)
                loser = render(replace(p.scene, things=p.scene.things[:1]), p.seed)
                costs, kind = (-ORACLE_COST, -ORACLE_COST), "near_miss"
            else:
                p = world.clean_prompt(rng)
                first = p.scene.things[0]
                other = rng.choice([c for c in COLOURS if c != first.colour])
                wrong = replace(p.scene, things=(replace(first, colour=other),) + p.scene.things[1:])
                winner, loser = render(p.scene, p.seed), render(wrong, p.seed)
                costs, kind = (-ORACLE_COST, -ORACLE_COST), "clean"
            self.rows.append(dict(
                pair_id=f"toy-{seed}-{i}", prompt=p.text, kind=kind, is_harmful=p.is_harmful,
                category=p.category if p.is_harmful else None, winner_u8=winner, loser_u8=loser,
                safe_prompt=p.safe_text if p.is_harmful else None,
                winner_cost=costs[0], loser_cost=costs[1],
            ))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        item = {k: v for k, v in row.items() if not k.endswith("_u8")}
        item["winner"] = torch.from_numpy(row["winner_u8"]).float() / 255.0
        item["loser"] = torch.from_numpy(row["loser_u8"]).float() / 255.0
        return item

    def pair_info(self, i: int) -> tuple[bool, Optional[str]]:
        return self.rows[i]["is_harmful"], self.rows[i]["category"]


def load_pair_dataset(cfg: TrainConfig) -> torch.utils.data.Dataset:
    """The dataset named by ``cfg.data``: ``toy-oracle`` or an SCP folder (via :mod:`scdpo.scp`)."""
    if cfg.data == TOY_ORACLE_DATA:
        return ToyOraclePairs(cfg.toy_oracle_pairs, seed=cfg.seed)
    try:
        from ..scp import load_scp_dataset
    except ImportError:  # pragma: no cover - the scp package ships with the product
        raise InputFileError("reading SCP datasets needs scdpo.scp, which is missing from this install") from None
    return load_scp_dataset(cfg.data, skip_bad=cfg.skip_bad)


def _pair_info(dataset, i: int) -> tuple[bool, Optional[str]]:
    if hasattr(dataset, "pair_info"):
        return dataset.pair_info(i)
    item = dataset[i]
    return bool(item["is_harmful"]), item.get("category")


def select_pairs(dataset, categories: Sequence[str] = (), clean_pairs: bool = True) -> list[int]:
    """Indices of the pairs a run trains on.

    ``categories`` non-empty: only harmful pairs of those categories (a SafetyDPO expert).
    ``clean_pairs`` False: only harmful pairs. Raises :class:`DatasetError` if nothing is left.
    """
    n = len(dataset)
    if not categories and clean_pairs:
        keep = list(range(n))
    else:
        wanted = set(categories)
        keep = []
        for i in range(n):
            harmful, category = _pair_info(dataset, i)
            if harmful and (not wanted or category in wanted):
                keep.append(i)
    if not keep:
        what = f"harmful pairs of categories {sorted(categories)}" if categories else "harmful pairs"
        raise DatasetError(f"the dataset ({n} pairs) has no {what} to train on; check --categories / the dataset")
    return keep


class PairOrder:
    """The deterministic visiting order over ``indices`` (see module docstring)."""

    def __init__(self, indices: Sequence[int], seed: int):
        self.indices = list(indices)
        self.seed = seed

    @lru_cache(maxsize=4)
    def _epoch(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + 17 * epoch + 5)
        return [self.indices[j] for j in torch.randperm(len(self.indices), generator=g).tolist()]

    def at(self, position: int) -> int:
        n = len(self.indices)
        return self._epoch(position // n)[position % n]

    def batch(self, micro_step: int, rank: int, world_size: int, batch_size: int) -> list[int]:
        """Dataset indices of micro-batch ``micro_step`` for process ``rank`` of ``world_size``."""
        start = (micro_step * world_size + rank) * batch_size
        return [self.at(p) for p in range(start, start + batch_size)]
