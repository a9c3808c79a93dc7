"""Training inputs encoded once: VAE latents of every pair and text embeddings of every prompt.

DPO visits each pair many times. Encoding its two images with the VAE and its prompt with the
text encoder(s) at every visit repeats the same work, and keeping those encoders on the GPU costs
memory the UNet could use (SD1.5: 123 M text-encoder + 84 M VAE parameters; SDXL: 817 M + 84 M,
the VAE in fp32). So before the first step :func:`encoded_inputs` encodes

* the latents ``[N, 2, c, h, w]`` (winner, loser) of the N pairs the run trains on, and
* the conditioning of every distinct prompt plus the empty prompt (for prompt dropout),

in the model's dtype, and writes them atomically to ``<out>/<name>.inputs.safetensors`` with a
fingerprint of (dataset, selected pairs, base model, dtype), so a resumed run — and every other
process of a multi-process run — reads them instead of encoding again. The trainer then moves the
encoders off the accelerator (:func:`encoders_parked`). The file is removed when training ends.

Prompt dropout draws from the step's generator exactly as the uncached path does, so a cached run
follows the same trajectory (up to the float rounding of encoding in other batch sizes).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch

from ..errors import DatasetError
from ..fileio import load_safetensors, read_safetensors_header, save_safetensors_atomic
from ..pipeline import Conditioning, TextToImageModel
from .pairs import collate_pairs

log = logging.getLogger(__name__)
INPUTS_KIND = "scdpo_encoded_pairs"
FORMAT_VERSION = 4
CLEAN_PAIR, NEAR_MISS_PAIR = -1, -2  # pair_category of harmless pairs (harmful: index of the category)


def shift_columns(x: torch.Tensor, k: int) -> torch.Tensor:
    """``x`` ``[..., w]`` moved ``k`` columns right (left for ``k < 0``), the edge column filling the gap."""
    if k > 0:
        return torch.cat([x[..., :1].expand(*x.shape[:-1], k), x[..., :-k]], dim=-1)
    if k < 0:
        return torch.cat([x[..., -k:], x[..., -1:].expand(*x.shape[:-1], -k)], dim=-1)
    return x


def sideways_moves(n: int, width: int, fraction: float, generator: torch.Generator) -> list[int]:
    """``n`` sideways moves ``k``, ``1 <= |k| <= max(1, round(fraction · width))``, each sign equally likely.
    Draws ``2n`` numbers from ``generator``."""
    most = max(1, round(fraction * width))
    size = torch.randint(1, most + 1, (n,), generator=generator)
    sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1, 1)
    return (size * sign).tolist()


@dataclass
class EncodedPairBatch:
    """A micro-batch of B pairs whose images and prompts are already encoded."""

    latents: torch.Tensor  # [2B, c, h, w]: winners, then losers
    prompt_rows: torch.Tensor  # [B] rows of ``inputs.cond``
    winner_cost: torch.Tensor
    loser_cost: torch.Tensor
    category_rows: torch.Tensor  # [B] index into ``inputs.categories``; CLEAN_PAIR / NEAR_MISS_PAIR otherwise
    inputs: "EncodedPairs"
    safe_rows: Optional[torch.Tensor] = None  # [B] rows of the pairs' safe rewrites in ``inputs.cond`` (-1: none)
    push: Optional[torch.Tensor] = None  # [B] η of attack pairs (0: an ordinary pair)

    def __len__(self) -> int:
        return int(self.prompt_rows.shape[0])

    @property
    def with_rewrite(self) -> torch.Tensor:
        """``[B]`` bool: harmful pairs that carry their prompt's safe rewrite."""
        return (self.category_rows >= 0) & (self.safe_rows >= 0)

    def encode(self, model: TextToImageModel, drop: Sequence[bool], device) -> tuple[torch.Tensor, Conditioning]:
        """Latents ``[2B,...]`` and conditioning ``[B]`` (a dropped pair gets the empty prompt).

        An attack pair (``push`` η > 0) is conditioned as its loser was sampled: on its safe
        rewrite's embedding plus ``η · d_category`` (:meth:`EncodedPairs.concept_directions`)."""
        dropped = torch.tensor(list(drop), dtype=torch.bool)
        rows = torch.where(dropped, self.inputs.empty_row, self.prompt_rows)
        pushed = torch.zeros(len(self), dtype=torch.bool)
        if self.push is not None:
            pushed = (self.push > 0) & ~dropped & self.with_rewrite
            rows = torch.where(pushed, self.safe_rows, rows)
        cond = model.conditioning_for_size(self.inputs.cond.index(rows), self.inputs.height, self.inputs.width)
        if bool(pushed.any()):
            cond = cond.shifted(self._along_concept(torch.where(pushed, self.push, 0.0)))
        return self.latents.to(device), cond.to(device)

    def shift_sideways(self, latents: torch.Tensor, generator: torch.Generator, prob: float,
                       fraction: float) -> torch.Tensor:
        """Sideways-shift augmentation of harmful pairs: ``latents`` ``[2B,...]`` with each picked pair's
        winner and loser moved together by ``k`` latent columns, ``1 <= |k| <= max(1, round(fraction · w))``,
        the edge column repeated into the gap.

        Training captions put a harmful thing where their templates put it; a prompt in another shape
        draws it elsewhere, and the preference must hold wherever it is drawn. Each harmful pair is
        picked with probability ``prob``. Draws ``3B`` numbers from ``generator`` whatever is picked.
        """
        b = len(self)
        pick = (torch.rand(b, generator=generator) < prob) & (self.category_rows >= 0)
        moves = sideways_moves(b, latents.shape[-1], fraction, generator)
        if not bool(pick.any()):
            return latents
        out = latents.clone()
        for i in pick.nonzero().flatten().tolist():
            k = moves[i]
            for row in (i, i + b):
                out[row] = shift_columns(latents[row], k)
        return out

    def _along_concept(self, eta: torch.Tensor) -> dict[str, torch.Tensor]:
        """``eta[i] · d_category(i)`` per conditioning key (zero for harmless pairs or ``eta = 0``)."""
        cats = self.category_rows.clamp(min=0)
        eta = torch.where(self.category_rows >= 0, eta.float(), 0.0)
        return {key: eta.view(-1, *([1] * (table.ndim - 1))) * table[cats]
                for key, table in self.inputs.concept_directions().items()}

    def augment(self, cond: Conditioning, drop: Sequence[bool], generator: torch.Generator, prob: float,
                scale: float) -> Conditioning:
        """Embedding-space concept augmentation of harmful pairs (see :meth:`EncodedPairs.concept_directions`).

        Each harmful, not-dropped pair is picked with probability ``prob``; its conditioning moves by
        ``η · d_category`` with ``η ~ U(0, scale)``: the same pair (safe winner, unsafe loser) under a
        prompt embedding pushed further towards its unsafe concept, as a Ring-A-Bell-style attack
        pushes a prompt. Draws ``2B`` numbers from ``generator`` whatever is picked.
        """
        b = len(self)
        pick = torch.rand(b, generator=generator) < prob
        eta = torch.rand(b, generator=generator) * scale
        pick &= (self.category_rows >= 0) & ~torch.tensor(list(drop), dtype=torch.bool)
        if not bool(pick.any()):
            return cond
        return cond.shifted(self._along_concept(eta * pick))


class EncodedPairs:
    """The encoded inputs of a run: ``latents[k]`` belongs to dataset index ``indices[k]``."""

    def __init__(self, indices: Sequence[int], latents: torch.Tensor, pair_prompt: torch.Tensor, cond: Conditioning,
                 empty_row: int, winner_cost: torch.Tensor, loser_cost: torch.Tensor, height: int, width: int,
                 pair_category: torch.Tensor, categories: Sequence[str], pair_safe_prompt: Optional[torch.Tensor] = None,
                 pair_push: Optional[torch.Tensor] = None):
        self.indices = list(indices)
        n = len(self.indices)
        # row of each pair's safe rewrite in ``cond`` (-1: none); see :meth:`concept_directions`
        self.pair_safe_prompt = pair_safe_prompt if pair_safe_prompt is not None else torch.full((n,), -1)
        self.pair_push = pair_push if pair_push is not None else torch.zeros(n)  # η of attack pairs, else 0
        self.pair_category, self.categories = pair_category, list(categories)
        self._directions: Optional[dict[str, torch.Tensor]] = None
        self.position = {idx: k for k, idx in enumerate(self.indices)}
        self.latents, self.pair_prompt, self.cond, self.empty_row = latents, pair_prompt, cond, int(empty_row)
        self.winner_cost, self.loser_cost = winner_cost, loser_cost
        self.height, self.width = int(height), int(width)

    def __len__(self) -> int:
        return len(self.indices)

    def batch(self, dataset_indices: Sequence[int]) -> EncodedPairBatch:
        pos = torch.tensor([self.position[i] for i in dataset_indices], dtype=torch.long)
        lat = self.latents[pos]
        return EncodedPairBatch(torch.cat([lat[:, 0], lat[:, 1]]), self.pair_prompt[pos], self.winner_cost[pos],
                                self.loser_cost[pos], self.pair_category[pos], self, self.pair_safe_prompt[pos],
                                self.pair_push[pos])

    def concept_directions(self) -> dict[str, torch.Tensor]:
        """Per unsafe category, the direction of its concept in text-embedding space, from the data.

        Where harmful pairs carry their prompt's safe rewrite (the SCP column ``safe_prompt``),
        ``d_k = mean over the distinct (prompt, rewrite) pairs of category k of embedding(prompt) -
        embedding(rewrite)``: the difference the concept itself makes, as a Ring-A-Bell attack
        measures it (a prompt that is its own rewrite, a neutral attack prompt, is left out).
        Otherwise ``d_k = mean(embedding of the distinct harmful prompts of k) -
        mean(embedding of the distinct clean prompts)``; near-miss (look-alike) prompts are left out
        of that clean mean unless there are no others, since they share the harmful prompts' layout
        (a second thing) and with them the direction loses that part of the concept.
        Returns ``{"hidden": [K, L, D], "text_embeds": [K, D']}`` (float32). A category with
        neither gets a zero direction.
        """
        if self._directions is None:
            k = len(self.categories)
            harmful = [set() for _ in range(k)]
            paired = [set() for _ in range(k)]
            clean, near_miss = set(), set()
            for prow, srow, cat in zip(self.pair_prompt.tolist(), self.pair_safe_prompt.tolist(),
                                       self.pair_category.tolist()):
                (harmful[cat] if cat >= 0 else clean if cat == CLEAN_PAIR else near_miss).add(prow)
                if cat >= 0 and srow >= 0 and srow != prow:  # a prompt that is its own rewrite: no difference
                    paired[cat].add((prow, srow))
            clean = (clean or near_miss) - {self.empty_row}
            tables = {"hidden": self.cond.hidden.float()}
            tables.update({k_: v.float() for k_, v in self.cond.added.items() if k_ == "text_embeds"})
            self._directions = {}
            for key, table in tables.items():
                dirs = torch.zeros(k, *table.shape[1:])
                for c in range(k):
                    if paired[c]:
                        rows = torch.tensor(sorted(paired[c]), dtype=torch.long)
                        dirs[c] = (table[rows[:, 0]] - table[rows[:, 1]]).mean(0)
                    elif harmful[c] and clean:
                        dirs[c] = table[sorted(harmful[c])].mean(0) - table[sorted(clean)].mean(0)
                self._directions[key] = dirs
        return self._directions

    def nbytes(self) -> int:
        tensors = [self.latents, self.cond.hidden, *self.cond.added.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: Path, fingerprint: str) -> None:
        tensors = {"latents": self.latents, "pair_prompt": self.pair_prompt, "cond.hidden": self.cond.hidden,
                   "winner_cost": self.winner_cost, "loser_cost": self.loser_cost,
                   "indices": torch.tensor(self.indices, dtype=torch.long), "pair_category": self.pair_category,
                   "pair_safe_prompt": self.pair_safe_prompt, "pair_push": self.pair_push}
        tensors.update({f"cond.added.{k}": v for k, v in self.cond.added.items()})
        save_safetensors_atomic(tensors, path, {
            "kind": INPUTS_KIND, "format_version": str(FORMAT_VERSION), "fingerprint": fingerprint,
            "empty_row": str(self.empty_row), "height": str(self.height), "width": str(self.width),
            "categories": json.dumps(self.categories),
        })

    @classmethod
    def load(cls, path: Path, fingerprint: str) -> Optional["EncodedPairs"]:
        """The inputs saved at ``path`` if they were encoded for ``fingerprint``, else None."""
        try:
            meta = read_safetensors_header(path, "encoded training inputs").get("__metadata__", {})
            if meta.get("kind") != INPUTS_KIND or meta.get("fingerprint") != fingerprint:
                return None
            t, _ = load_safetensors(path, "encoded training inputs")
        except Exception as exc:  # a broken cache is re-encoded, never trusted
            log.warning("ignoring %s (%s); encoding the inputs again", path, exc)
            return None
        added = {k[len("cond.added."):]: v for k, v in t.items() if k.startswith("cond.added.")}
        return cls(t["indices"].tolist(), t["latents"], t["pair_prompt"], Conditioning(t["cond.hidden"], added),
                   int(meta["empty_row"]), t["winner_cost"], t["loser_cost"], int(meta["height"]), int(meta["width"]),
                   t["pair_category"], json.loads(meta["categories"]), t["pair_safe_prompt"],
                   t["pair_push"])


def pair_texts(dataset, i: int) -> tuple[str, Optional[str], Optional[float]]:
    """``(prompt, safe_prompt, concept_push)`` of pair ``i``, without decoding images where the dataset allows."""
    rows = getattr(dataset, "rows", None)
    row = rows[i] if isinstance(rows, list) and i < len(rows) and isinstance(rows[i], dict) else None
    if row is None or "prompt" not in row:
        row = dataset[i]
    return str(row["prompt"]), row.get("safe_prompt"), row.get("concept_push")


def model_identity(model: TextToImageModel) -> list[str]:
    """What encoded inputs depend on of the model that encoded them: its id, version and dtype."""
    return [str(getattr(model, "model_id", "")), model.base_model_version, str(model.dtype)]


def inputs_fingerprint(model: TextToImageModel | Sequence[str], dataset, indices: Sequence[int], data: str) -> str:
    """What the encoded inputs depend on: the dataset (source, size, file stamp, prompts of the
    selected pairs), the selection, and the base model (id, version, dtype; a model or its
    :func:`model_identity`, which the trainer knows before loading anything)."""
    identity = list(model) if isinstance(model, (list, tuple)) else model_identity(model)
    source: dict = {"data": str(data), "n": len(dataset)}
    folder = Path(str(data))
    if folder.exists():
        files = [folder] if folder.is_file() else sorted(folder.glob("*.parquet")) + sorted(folder.glob("*.json"))
        source["files"] = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    h = hashlib.sha256(json.dumps({
        "format": FORMAT_VERSION, "source": source, "model": identity}, sort_keys=True).encode())
    for i in indices:
        prompt, safe, push = pair_texts(dataset, i)
        h.update(f"{i}\t{prompt}\t{safe}\t{push}\n".encode())
    return h.hexdigest()


@torch.no_grad()
def encode_pairs(model: TextToImageModel, dataset, indices: Sequence[int], chunk: int = 16,
                 progress: bool = True) -> EncodedPairs:
    """Encode the images of ``dataset[indices]`` (``chunk`` pairs per VAE call) and their prompts."""
    from tqdm import tqdm

    latents, costs_w, costs_l, prompts, cats, kinds, safe, push = [], [], [], [], [], [], [], []
    size = None
    bar = tqdm(total=len(indices), desc="encoding pairs (once)", unit="pair", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(indices), chunk):
        items = [dataset[i] for i in indices[start:start + chunk]]
        batch = collate_pairs(items)
        size = size or tuple(batch.winners.shape[1:3])
        if tuple(batch.winners.shape[1:3]) != size:
            raise DatasetError(f"pair images have different sizes {size} and {tuple(batch.winners.shape[1:3])}; "
                               "resize the dataset to one size")
        lat = model.encode_images(torch.cat([batch.winners, batch.losers]).to(model.device)).cpu()
        b = len(batch)
        latents.append(torch.stack([lat[:b], lat[b:]], dim=1))
        costs_w.append(batch.winner_cost)
        costs_l.append(batch.loser_cost)
        prompts.extend(batch.prompts)
        cats.extend(str(c) if h and c else None for h, c in zip(batch.is_harmful.tolist(), batch.categories))
        kinds.extend(item.get("kind") for item in items)
        safe.extend(item.get("safe_prompt") if h else None for item, h in zip(items, batch.is_harmful.tolist()))
        push.extend(float(item.get("concept_push") or 0.0) for item in items)
        bar.update(b)
    bar.close()
    distinct = sorted(set(prompts) | {s_ for s_ in safe if s_} | {""})
    row = {p: k for k, p in enumerate(distinct)}
    cond = Conditioning.concat([model.encode_prompt(distinct[s:s + 64]).to("cpu") for s in range(0, len(distinct), 64)])
    names = sorted({c for c in cats if c is not None})
    pair_category = torch.tensor([names.index(c) if c is not None else NEAR_MISS_PAIR if k == "near_miss" else CLEAN_PAIR
                                  for c, k in zip(cats, kinds)], dtype=torch.long)
    return EncodedPairs(indices, torch.cat(latents), torch.tensor([row[p] for p in prompts], dtype=torch.long), cond,
                        row[""], torch.cat(costs_w), torch.cat(costs_l), size[0], size[1], pair_category, names,
                        torch.tensor([row[s_] if s_ else -1 for s_ in safe], dtype=torch.long),
                        torch.tensor(push, dtype=torch.float32))


def saved_inputs(path: Path, fingerprint: str) -> Optional[EncodedPairs]:
    """The inputs saved at ``path`` for ``fingerprint``, or None (no file, or one for other inputs)."""
    if not path.exists():
        return None
    cached = EncodedPairs.load(path, fingerprint)
    if cached is not None:  # the fingerprint covers the selected indices
        log.info("read encoded inputs of %d pairs from %s", len(cached), path)
    return cached


def encoded_inputs(model: TextToImageModel | Callable[[], TextToImageModel], dataset, indices: Sequence[int],
                   path: Path, data: str, progress: bool = True,
                   identity: Optional[Sequence[str]] = None) -> EncodedPairs:
    """The run's inputs from ``path`` when it holds them for this data and model; else encoded and saved.

    ``model`` may be a function that loads the encoders only when encoding is needed (then
    ``identity``, the :func:`model_identity` of the model they belong to, is required); what it
    loaded is released before this returns."""
    loader = model if callable(model) and not isinstance(model, TextToImageModel) else None
    if loader is not None and identity is None:
        raise ValueError("encoded_inputs with a model loader needs the model's identity")
    fingerprint = inputs_fingerprint(identity if loader is not None else model, dataset, indices, data)
    cached = saved_inputs(path, fingerprint)
    if cached is not None:
        return cached
    if loader is None:
        inputs = encode_pairs(model, dataset, indices, progress=progress)
    else:
        encoders = loader()
        try:
            inputs = encode_pairs(encoders, dataset, indices, progress=progress)
        finally:
            from .runtime import release_freed_memory

            del encoders
            release_freed_memory()
    inputs.save(path, fingerprint)
    log.info("encoded %d pairs (%.1f MiB) into %s", len(inputs), inputs.nbytes() / 2**20, path)
    return inputs


@contextlib.contextmanager
def encoders_parked(model: TextToImageModel, free: bool) -> Iterator[None]:
    """Keep the text encoder(s) and VAE out of accelerator memory while training on cached inputs.

    ``free``: the trainer loaded ``model`` itself and nothing uses its encoders afterwards, so their
    weights are released (moved to the ``meta`` device). Otherwise a GPU-resident encoder is moved to
    the CPU and back afterwards; on a CPU-only model nothing changes.
    """
    parked = []
    for module in model.encoder_modules():
        device = next(module.parameters()).device
        if free:
            module.to("meta")
        elif device.type != "cpu":
            module.to("cpu")
            parked.append((module, device))
    if parked and torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        yield
    finally:
        for module, device in parked:
            module.to(device)


__all__ = ["EncodedPairBatch", "EncodedPairs", "encode_pairs", "encoded_inputs", "encoders_parked",
           "inputs_fingerprint", "model_identity", "pair_texts", "saved_inputs"]
