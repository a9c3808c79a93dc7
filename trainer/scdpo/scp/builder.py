"""Building an SCP dataset: sample candidates, score cost and reward, pair them (docs/method.md).

Read top to bottom: prompts → chunks → per chunk: generate ``N`` candidates per prompt (batched,
one seed per image) → cost ``C`` and reward ``R`` → safe rewrites where a harmful prompt has no
safe candidate, erased rewrites of look-alike prompts → :func:`choose_pair` → one parquet part
file. Parts are written atomically and
a ``build_state.json`` lists the finished ones, so a killed build re-run with the same command
continues at the first unfinished chunk and ends with the same dataset (every random draw is a
function of the prompt index and candidate number). Finally the parts are merged into
``pairs.parquet`` and ``dataset.json`` is written.

Pairing rules (:func:`choose_pair`), "safe" meaning ``C <= threshold`` of the cost model:

* harmful instruction — loser = the highest-``C`` candidate, which must be unsafe (else the base
  model already behaves on this prompt: skipped as ``already_safe``); winner = the best-``R``
  *confidently* safe candidate (``C <= min(threshold, winner_max_cost)``), or the best-``R``
  confidently safe image of the prompt's safe rewrite when no candidate is
  (``winner_source = safe_rewrite``), else skipped (``no_safe_winner``). docs/method.md asks for
  ``C <= 0``; the stricter bound exists because a winner the cost model wrongly calls safe teaches
  the very motif the LoRA must remove, while rejecting a borderline candidate only costs a rewrite
  sample. With the toy cost model, ``C <= 0`` let 10.6 % of harmful winners be unsafe (oracle);
  ``C <= -3`` (P(unsafe) ≈ 5 %) let none through;
* clean instruction — winner = the best-``R`` safe candidate (an unsafe candidate never wins);
  loser = among candidates with a strictly lower ``R``, the highest-``C`` unsafe one if any (the
  preferred loser), else the lowest-``R`` one; skipped as ``reward_tie`` if no candidate scores
  below the winner. So a clean pair's winner always beats its loser on ``R``;
* clean instruction with an **erased rewrite** (a look-alike prompt, ``kind = near_miss``: the same
  prompt without the look-alike, e.g. "a pencil and a red ring" → "a red ring on the left") —
  ``erased_candidates`` samples of the rewrite, scored with ``R`` *of the original prompt*, join
  the losers: after unsafe candidates, before lower-``R`` candidates, and only where their ``R`` is
  strictly lower than the winner's. They show what an over-erasing LoRA would draw, and keep the
  look-alike pairs that would otherwise be skipped as ``reward_tie`` (on the toy world, nearly all
  of them: the base draws look-alikes well). Their ``pair_id`` ends in ``-erased``.

**Attack pairs** (``attack_candidates`` > 0): a harmful prompt with a safe rewrite is also sampled
``attack_candidates`` times under a Ring-A-Bell-style attacked embedding, ``embedding(safe rewrite)
+ η · d_category`` with ``η`` drawn per prompt from ``attack_strengths`` and ``d_category`` the mean
of ``embedding(prompt) - embedding(rewrite)`` over the harmful prompts of the build
(:func:`concept_directions`). The highest-``C`` attacked sample, if unsafe, is the loser of one more
pair with the prompt's winner (``pair_id`` ending in ``-attack``, ``concept_push = η``); the
trainer conditions that pair on the same attacked embedding. Without them the LoRA only sees the
base model's unsafe images of plain prompts and learns the cheapest way to avoid those (on the toy
world: shifting a motif's colour), which an attacked embedding — where the base draws the motif in
another shade — gets through. With ``attack_lora`` (``build-dataset --attack-lora``: a safety LoRA
trained on a first dataset) the attack samples are drawn from base + that LoRA instead, so the
losers are the failures of the policy itself (its motif in a new shade, say) rather than of the
base: a second round of training on such data fixes what the first LoRA gets wrong.

``pairs_per_prompt > 1`` adds, with the same winner, the next losers in the same order (harmful:
further unsafe candidates by ``C``; clean: further lower-``R`` candidates), so the N samples drawn
per prompt yield more pairs for the same sampling cost.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..errors import DatasetError, OutputPathError
from ..fileio import ensure_writable_dir, write_json_atomic
from .schema import PAIRS_FILE, SUMMARY_FILE, png_bytes, rows_to_table, write_table

STATE_FILE = "build_state.json"


@dataclass
class PromptSpec:
    text: str
    is_harmful: bool
    category: Optional[str] = None
    kind: str = "clean"  # harmful | clean | near_miss
    safe_text: Optional[str] = None  # the safe rewrite (toy: given by the world's generator)
    erased_text: Optional[str] = None  # a look-alike prompt without its look-alike (clean prompts only)
    toy_prompt: object = None  # scdpo.toy.world.ToyPrompt for the toy reward


@dataclass
class BuildConfig:
    n_prompts: int = 800
    candidates: int = 4  # N samples per prompt
    rewrite_candidates: int = 2  # samples of the safe rewrite when no candidate is safe
    erased_candidates: int = 2  # samples of a look-alike prompt's erased rewrite, losers (0: off)
    attack_candidates: int = 0  # samples of a harmful prompt under an attacked embedding (0: off)
    attack_strengths: tuple = (1.0, 2.0, 3.0)  # η of those samples, one drawn per prompt
    harmful_frac: float = 0.5  # toy prompt mix (ratio of harmful to clean instructions)
    near_miss_frac: float = 0.15
    composite_frac: float = 0.2  # share of harmful toy instructions that also hold a look-alike
    steps: int = 20
    guidance_scale: Optional[float] = None
    batch_size: int = 128  # images per generate() call
    chunk_prompts: int = 64  # prompts per resumable part
    winner_max_cost: float = -3.0  # a harmful pair's winner needs C <= min(threshold, this)
    pairs_per_prompt: int = 3  # up to this many pairs (same winner, next losers) per prompt
    seed: int = 0
    source: str = "toy"


@dataclass
class PairChoice:
    winner: Optional[int] = None  # index into candidates (or into rewrites when from_rewrite)
    loser: Optional[int] = None  # index into candidates, then erased samples (index - len(candidates))
    from_rewrite: bool = False
    skip_reason: Optional[str] = None
    extra_losers: list = field(default_factory=list)  # further losers for the same winner, in order


def _best(indices: Sequence[int], reward, cost) -> int:
    """Highest reward; ties → lower cost; then lower index."""
    return max(indices, key=lambda i: (reward[i], -cost[i], -i))


def choose_pair(is_harmful: bool, cost: Sequence[float], reward: Sequence[float], unsafe: Sequence[bool],
                rewrite_cost: Sequence[float] = (), rewrite_reward: Sequence[float] = (),
                rewrite_unsafe: Sequence[bool] = (), winner_max_cost: float = float("inf"),
                pairs: int = 1, erased_reward: Sequence[float] = ()) -> PairChoice:
    """The pairing rules of the module docstring for one prompt's candidates.

    ``unsafe[i]`` is the cost model's verdict (``C > threshold``); a harmful pair's winner must in
    addition have ``C <= winner_max_cost``. ``pairs``: at most this many losers for the winner.
    ``erased_reward``: ``R`` of a clean prompt's erased-rewrite samples; loser index
    ``len(cost) + k`` names sample ``k``.
    """
    idx = range(len(cost))
    safe = [i for i in idx if not unsafe[i]]
    if is_harmful:
        by_cost = sorted(idx, key=lambda i: (-cost[i], i))
        if not unsafe[by_cost[0]]:
            return PairChoice(skip_reason="already_safe")
        losers = [i for i in by_cost if unsafe[i]][:max(1, pairs)]
        confident = [i for i in safe if cost[i] <= winner_max_cost]
        if confident:
            return PairChoice(_best(confident, reward, cost), losers[0], extra_losers=losers[1:])
        safe_rw = [j for j in range(len(rewrite_cost)) if not rewrite_unsafe[j] and rewrite_cost[j] <= winner_max_cost]
        if safe_rw:
            return PairChoice(_best(safe_rw, rewrite_reward, rewrite_cost), losers[0], from_rewrite=True,
                              extra_losers=losers[1:])
        return PairChoice(skip_reason="no_safe_winner")
    if not safe:
        return PairChoice(skip_reason="no_safe_winner")
    winner = _best(safe, reward, cost)
    lower = [i for i in idx if i != winner and reward[i] < reward[winner]]
    erased = sorted((k for k in range(len(erased_reward)) if erased_reward[k] < reward[winner]),
                    key=lambda k: (erased_reward[k], k))
    if not lower and not erased:
        return PairChoice(skip_reason="reward_tie")
    # unsafe ones first (highest C first), then erased samples, then the rest by lowest R
    order = sorted([i for i in lower if unsafe[i]], key=lambda i: (-cost[i], i)) + \
        [len(cost) + k for k in erased] + \
        sorted([i for i in lower if not unsafe[i]], key=lambda i: (reward[i], -cost[i], i))
    losers = order[:max(1, pairs)]
    return PairChoice(winner, losers[0], extra_losers=losers[1:])


def toy_prompt_specs(n: int, harmful_frac: float = 0.5, near_miss_frac: float = 0.15, seed: int = 0,
                     composite_frac: float = 0.0) -> list[PromptSpec]:
    """Toy instructions from **train-split surface forms, templates and caption shapes only**
    (``ToyWorld("train")``). ``composite_frac`` of the harmful ones also hold a look-alike ("a pencil
    next to a machete"); their safe rewrite keeps it, so the pairs teach to remove the concept and
    keep the look-alike (stored as kind ``harmful``)."""
    from ..toy.world import ToyWorld

    world, rng = ToyWorld("train"), random.Random(f"scp-{seed}")
    # composites draw from their own stream, so the rest of the prompts do not depend on composite_frac
    composite_rng = random.Random(f"scp-composite-{seed}")
    out = []
    for _ in range(n):
        u = rng.random()
        if u < harmful_frac and composite_frac > 0 and composite_rng.random() < composite_frac:
            world.harmful_prompt(rng)  # drawn and replaced, so the other prompts are those of composite_frac=0
            p = world.composite_prompt(composite_rng)
        elif u < harmful_frac:
            p = world.harmful_prompt(rng)
        elif u < harmful_frac + near_miss_frac:
            p = world.near_miss_prompt(rng)
        else:
            p = world.clean_prompt(rng)
        kind = "harmful" if p.kind == "composite" else p.kind
        out.append(PromptSpec(p.text, p.is_harmful, p.category if p.is_harmful else None, kind, p.safe_text,
                              p.erased_text, p))
    return out


def _seed(base: int, prompt_index: int, k: int) -> int:
    return (base * 1_000_003 + prompt_index * 101 + k) % (2**62)


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def _generate(model, texts: list[str], seeds: list[int], cfg: BuildConfig,
              shifts: Optional[list[dict]] = None) -> torch.Tensor:
    """Images of ``texts``; ``shifts[i]`` (optional) is added to text ``i``'s embedding first."""
    out = []
    for s in range(0, len(texts), cfg.batch_size):
        batch = texts[s:s + cfg.batch_size]
        cond = None
        if shifts is not None:
            part = shifts[s:s + cfg.batch_size]
            cond = model.encode_prompt(batch).shifted({k: torch.stack([d[k] for d in part]) for k in part[0]})
        out.append(model.generate(None if cond is not None else batch, cond=cond, seed=seeds[s:s + cfg.batch_size],
                                  steps=cfg.steps, guidance_scale=cfg.guidance_scale))
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def concept_directions(model, prompts: Sequence[PromptSpec]) -> dict[str, dict[str, torch.Tensor]]:
    """Per category: the mean of ``embedding(prompt) - embedding(safe rewrite)`` over the distinct
    harmful prompts that have a rewrite, as ``{"hidden": [L, D]}`` (plus SDXL's ``text_embeds``)."""
    pairs = sorted({(p.category, p.text, p.safe_text) for p in prompts if p.is_harmful and p.safe_text})
    out: dict[str, dict[str, torch.Tensor]] = {}
    for cat in sorted({c for c, _, _ in pairs}):
        mine = [(t, r) for c, t, r in pairs if c == cat]
        sums: dict[str, torch.Tensor] = {}
        for s in range(0, len(mine), 64):
            a = model.encode_prompt([t for t, _ in mine[s:s + 64]])
            b = model.encode_prompt([r for _, r in mine[s:s + 64]])
            for key, x, y in [("hidden", a.hidden, b.hidden)] + [
                    (k, a.added[k], b.added[k]) for k in a.added if k == "text_embeds"]:
                sums[key] = sums.get(key, 0) + (x.float() - y.float()).sum(0).cpu()
        out[cat] = {k: v / len(mine) for k, v in sums.items()}
    return out


class RewriteSamples(NamedTuple):
    """``n`` samples of one prompt's rewrite, scored with the cost model and ``R`` of the original prompt."""

    images: np.ndarray  # uint8 [n,H,W,3]
    cost: list[float]
    reward: list[float]
    unsafe: list[bool]
    seeds: list[int]


def _rewrite_samples(model, scorer, reward, prompts: list[PromptSpec], chosen: list[int], text_field: str, n: int,
                     seed_offset: int, first_index: int, cfg: BuildConfig,
                     shifts: Optional[dict[int, dict]] = None) -> dict[int, RewriteSamples]:
    """Sample ``n`` images of ``prompts[j].<text_field>`` for each ``j`` in ``chosen`` (one batched run),
    with ``shifts[j]`` added to the text's embedding when given."""
    if not chosen or n <= 0:
        return {}
    seeds = [_seed(cfg.seed, first_index + j, seed_offset + k) for j in chosen for k in range(n)]
    images = _generate(model, [getattr(prompts[j], text_field) for j in chosen for _ in range(n)], seeds, cfg,
                       [shifts[j] for j in chosen for _ in range(n)] if shifts is not None else None)
    costs = scorer.score(images, batch_size=256)
    rewards = reward.score(images, [prompts[j] for j in chosen for _ in range(n)]).tolist()
    cost, unsafe, arr = costs.cost.double().tolist(), costs.unsafe.tolist(), _to_uint8(images)
    out = {}
    for a, j in enumerate(chosen):
        sl = slice(a * n, (a + 1) * n)
        out[j] = RewriteSamples(arr[sl], cost[sl], rewards[sl], unsafe[sl], seeds[sl])
    return out


def attack_strength(cfg: BuildConfig, prompt_index: int) -> float:
    """The η of a prompt's attack samples: drawn from ``cfg.attack_strengths`` by its index."""
    return float(cfg.attack_strengths[_seed(cfg.seed, prompt_index, 3000) % len(cfg.attack_strengths)])


@contextlib.contextmanager
def _lora_applied(model, lora):
    """``model`` with ``lora`` (a loaded safety LoRA, or None: unchanged) for the duration."""
    if lora is None:
        yield
        return
    from ..lora import apply_lora, remove_lora

    apply_lora(model, lora, adapter_name="scdpo_attack_policy")
    try:
        yield
    finally:
        remove_lora(model.unet, "scdpo_attack_policy")


def build_chunk(model, scorer, reward, prompts: list[PromptSpec], first_index: int, cfg: BuildConfig,
                directions: Optional[dict[str, dict[str, torch.Tensor]]] = None, attack_lora=None
                ) -> tuple[list[dict], dict[str, int]]:
    """Pairs (schema rows) for ``prompts`` (global indices from ``first_index``) and skip counts.
    ``directions``: per category, the concept direction attack samples are pushed along;
    ``attack_lora``: a safety LoRA the attack samples are drawn with (all other samples: the base)."""
    n_cand = cfg.candidates
    texts = [p.text for p in prompts for _ in range(n_cand)]
    seeds = [_seed(cfg.seed, first_index + j, k) for j in range(len(prompts)) for k in range(n_cand)]
    images = _generate(model, texts, seeds, cfg)
    costs = scorer.score(images, batch_size=256)
    rewards = reward.score(images, [p for p in prompts for _ in range(n_cand)])
    cost = costs.cost.view(len(prompts), n_cand).double()
    unsafe = costs.unsafe.view(len(prompts), n_cand)
    rew = rewards.view(len(prompts), n_cand)

    # Safe rewrites, only for harmful prompts with no safe candidate.
    winner_max = min(float(scorer.threshold), cfg.winner_max_cost)
    confident = (~unsafe) & (cost <= winner_max)
    need = [j for j, p in enumerate(prompts) if p.is_harmful and p.safe_text and not confident[j].any()]
    rw = _rewrite_samples(model, scorer, reward, prompts, need, "safe_text", cfg.rewrite_candidates, 1000,
                          first_index, cfg)
    # Erased rewrites of look-alike prompts: losers scored against the original prompt.
    look_alike = [j for j, p in enumerate(prompts) if not p.is_harmful and p.erased_text]
    er = _rewrite_samples(model, scorer, reward, prompts, look_alike, "erased_text", cfg.erased_candidates, 2000,
                          first_index, cfg)
    # Attacked embeddings of harmful prompts: the rewrite pushed along its category's concept.
    directions = directions or {}
    attacked = [j for j, p in enumerate(prompts) if p.is_harmful and p.safe_text and p.category in directions]
    eta = {j: attack_strength(cfg, first_index + j) for j in attacked}
    with _lora_applied(model, attack_lora if attacked else None):
        at = _rewrite_samples(model, scorer, reward, prompts, attacked, "safe_text", cfg.attack_candidates, 3000,
                              first_index, cfg,
                              {j: {k: eta[j] * d for k, d in directions[prompts[j].category].items()} for j in attacked})

    arr = _to_uint8(images)
    rows, skipped = [], {}
    for j, p in enumerate(prompts):
        r = rw.get(j)
        e = er.get(j)
        choice = choose_pair(p.is_harmful, cost[j].tolist(), rew[j].tolist(), unsafe[j].tolist(),
                             *((r.cost, r.reward, r.unsafe) if r else ((), (), ())), winner_max_cost=winner_max,
                             pairs=cfg.pairs_per_prompt, erased_reward=e.reward if e else ())
        if choice.skip_reason:
            skipped[choice.skip_reason] = skipped.get(choice.skip_reason, 0) + 1
            continue
        if choice.from_rewrite:
            w = choice.winner
            w_img, w_cost, w_rew, w_seed = r.images[w], r.cost[w], r.reward[w], r.seeds[w]
        else:
            gw = j * n_cand + choice.winner
            w_img, w_seed = arr[gw], seeds[gw]
            w_cost, w_rew = float(cost[j, choice.winner]), float(rew[j, choice.winner])
        w_png = png_bytes(w_img)
        losers = [choice.loser, *choice.extra_losers]
        a = at.get(j)
        if a is not None and choice.winner is not None:
            q = max(range(len(a.cost)), key=lambda i: (a.cost[i], -i))
            if a.unsafe[q]:
                losers.append(("attack", q))
        for k, loser in enumerate(losers):
            push = None
            if isinstance(loser, tuple):  # the attack sample
                q = loser[1]
                l_img, l_cost, l_rew, l_seed, suffix = a.images[q], a.cost[q], a.reward[q], a.seeds[q], "-attack"
                push = eta[j]
            elif loser < n_cand:
                gl = j * n_cand + loser
                l_img, l_cost, l_rew, l_seed, suffix = arr[gl], cost[j, loser], rew[j, loser], seeds[gl], ""
            else:  # an erased-rewrite sample
                q = loser - n_cand
                l_img, l_cost, l_rew, l_seed, suffix = e.images[q], e.cost[q], e.reward[q], e.seeds[q], "-erased"
            rows.append({
                "pair_id": f"{cfg.source}-{first_index + j:06d}" + (f"-{k}" if k else "") + suffix, "prompt": p.text,
                "is_harmful": p.is_harmful, "category": p.category if p.is_harmful else None, "kind": p.kind,
                "winner_png": w_png, "loser_png": png_bytes(l_img),
                "winner_cost": float(w_cost), "loser_cost": float(l_cost),
                "winner_reward": float(w_rew), "loser_reward": float(l_rew),
                "winner_seed": int(w_seed), "loser_seed": int(l_seed),
                "winner_source": "safe_rewrite" if choice.from_rewrite else "candidate", "source": cfg.source,
                "safe_prompt": p.safe_text if p.is_harmful else None, "concept_push": push,
            })
    return rows, skipped


@dataclass
class BuildResult:
    path: Path
    n_pairs: int
    summary: dict = field(default_factory=dict)


def build_scp_dataset(model, scorer, reward, prompts: list[PromptSpec], cfg: BuildConfig, out: str | Path,
                      describe: Optional[dict] = None, overwrite: bool = False, progress: bool = True,
                      stop_after_chunks: Optional[int] = None, attack_lora=None) -> BuildResult:
    """Build (or resume) the dataset in folder ``out``. ``describe``: extra JSON for ``dataset.json``
    and the resume check (base model, cost model, attack LoRA...). ``stop_after_chunks`` simulates an
    interruption. ``attack_lora``: see :func:`build_chunk` (name it in ``describe``)."""
    import pyarrow.parquet as pq

    out = ensure_writable_dir(out)
    parts_dir = out / "parts"
    state_path = out / STATE_FILE
    identity = {"config": asdict(cfg), "describe": describe or {}, "n_prompts": len(prompts)}
    state = {"identity": identity, "done": {}, "skipped": {}}
    if state_path.exists() and not overwrite:
        try:
            old = json.loads(state_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            old = None
        if not isinstance(old, dict) or old.get("identity") != json.loads(json.dumps(identity)):
            raise OutputPathError(f"{out} holds a dataset build with other settings; pass --overwrite to replace it "
                                  "or choose another --out")
        state = old
    elif (out / PAIRS_FILE).exists() and not overwrite:
        raise OutputPathError(f"{out} already holds {PAIRS_FILE}; pass --overwrite or choose another --out")
    if state.get("complete"):
        return BuildResult(out / PAIRS_FILE, state["summary"]["n_pairs"], state["summary"])
    ensure_writable_dir(parts_dir)
    t0 = time.time()
    chunks = [(s, prompts[s:s + cfg.chunk_prompts]) for s in range(0, len(prompts), cfg.chunk_prompts)]
    bar = tqdm(total=len(prompts), desc="build SCP pairs", disable=not progress, unit="prompt")
    done_now = 0
    directions = None  # computed once, before the first chunk that needs building
    for start, chunk in chunks:
        key = f"{start:06d}"
        part = parts_dir / f"part-{key}.parquet"
        if key in state["done"] and part.exists():
            bar.update(len(chunk))
            continue
        if stop_after_chunks is not None and done_now >= stop_after_chunks:
            bar.close()
            return BuildResult(out, -1, {"interrupted": True})
        if directions is None:
            directions = concept_directions(model, prompts) if cfg.attack_candidates > 0 else {}
        rows, skipped = build_chunk(model, scorer, reward, chunk, start, cfg, directions, attack_lora)
        write_table(part, rows_to_table(rows))
        state["done"][key] = len(rows)
        state["skipped"][key] = skipped
        write_json_atomic(state_path, state)
        done_now += 1
        bar.update(len(chunk))
        bar.set_postfix(pairs=sum(state["done"].values()))
    bar.close()

    tables = [pq.read_table(parts_dir / f"part-{s:06d}.parquet") for s, _ in chunks]
    import pyarrow as pa

    table = pa.concat_tables(tables) if tables else rows_to_table([])
    write_table(out / PAIRS_FILE, table)
    skipped_total: dict[str, int] = {}
    for per_chunk in state["skipped"].values():
        for k, v in per_chunk.items():
            skipped_total[k] = skipped_total.get(k, 0) + v
    kinds = table.column("kind").to_pylist()
    sources = table.column("winner_source").to_pylist()
    summary = {
        "format": "scdpo SCP preference dataset v1 (see scdpo.scp.schema)",
        "n_pairs": table.num_rows,
        "pairs_by_kind": {k: kinds.count(k) for k in sorted(set(kinds))},
        "safe_rewrite_winners": sources.count("safe_rewrite"),
        "erased_rewrite_losers": sum(pid.endswith("-erased") for pid in table.column("pair_id").to_pylist()),
        "attack_pairs": sum(pid.endswith("-attack") for pid in table.column("pair_id").to_pylist()),
        "prompts": len(prompts),
        "skipped_prompts": skipped_total,
        "config": asdict(cfg),
        **(describe or {}),
        "seconds_this_run": round(time.time() - t0, 1),
    }
    write_json_atomic(out / SUMMARY_FILE, summary)
    state.update(complete=True, summary=summary)
    write_json_atomic(state_path, state)
    for s, _ in chunks:  # the merged file holds everything; parts were only for resuming
        (parts_dir / f"part-{s:06d}.parquet").unlink(missing_ok=True)
    try:
        parts_dir.rmdir()
    except OSError:
        pass
    return BuildResult(out / PAIRS_FILE, table.num_rows, summary)


def mine_attack_pairs(model, scorer, reward, data: str | Path, out: str | Path, cfg: BuildConfig, attack_lora,
                      toy_prompts: Optional[dict] = None, progress: bool = True) -> BuildResult:
    """Second-round data: every row of the dataset ``data`` plus attack pairs drawn with ``attack_lora``.

    For each distinct harmful (prompt, safe rewrite, category) of ``data`` (rows with a
    ``safe_prompt``), ``cfg.attack_candidates`` images are sampled from base + ``attack_lora`` under
    ``embedding(safe rewrite) + η · d_category`` (η from ``cfg.attack_strengths``, ``d`` from these
    prompts, as in :func:`build_chunk`). The most unsafe one, if unsafe, becomes the loser of a new
    pair with the prompt's winner (taken from its first row): ``pair_id`` = that row's id +
    ``-attack``. Only the attack samples are generated, so this costs ``attack_candidates`` images
    per harmful prompt. ``toy_prompts``: ``{text: ToyPrompt}`` for the toy reward.
    """
    from .dataset import load_scp_dataset

    dataset = load_scp_dataset(data)  # validates every row first: mining never extends a broken dataset
    source, rows = dataset.path, dataset.rows
    groups: dict[tuple, dict] = {}
    for row in rows:
        if row.get("is_harmful") and row.get("safe_prompt"):
            groups.setdefault((row["prompt"], row["safe_prompt"], row["category"]), row)
    if not groups:
        raise DatasetError(f"{source} has no harmful rows with a safe_prompt; attack pairs push the safe rewrite "
                           "(build the data with scdpo build-dataset, or add a safe_prompt column)")
    keys = list(groups)
    specs = [PromptSpec(t, True, c, "harmful", s, None, (toy_prompts or {}).get(t)) for t, s, c in keys]
    directions = concept_directions(model, specs)
    t0, new, ids = time.time(), [], {r["pair_id"] for r in rows}
    bar = tqdm(total=len(specs), desc="mine attack pairs", disable=not progress, unit="prompt")
    for start in range(0, len(specs), cfg.chunk_prompts):
        chosen = list(range(start, min(start + cfg.chunk_prompts, len(specs))))
        eta = {j: attack_strength(cfg, j) for j in chosen}
        with _lora_applied(model, attack_lora):
            at = _rewrite_samples(model, scorer, reward, specs, chosen, "safe_text", cfg.attack_candidates, 3000, 0,
                                  cfg, {j: {k: eta[j] * d for k, d in directions[specs[j].category].items()}
                                        for j in chosen})
        for j in chosen:
            a = at[j]
            q = max(range(len(a.cost)), key=lambda i: (a.cost[i], -i))
            if not a.unsafe[q]:
                continue
            first = groups[keys[j]]
            pair_id = f"{first['pair_id']}-attack"
            while pair_id in ids:
                pair_id += "-2"
            ids.add(pair_id)
            new.append({**first, "pair_id": pair_id, "loser_png": png_bytes(a.images[q]),
                        "loser_cost": float(a.cost[q]), "loser_reward": float(a.reward[q]),
                        "loser_seed": int(a.seeds[q]), "concept_push": eta[j]})
        bar.update(len(chosen))
        bar.set_postfix(pairs=len(new))
    bar.close()
    out = ensure_writable_dir(out)
    table = rows_to_table(rows + new)
    write_table(out / PAIRS_FILE, table)
    kinds = table.column("kind").to_pylist()
    summary = {**dataset.summary, "n_pairs": table.num_rows,
               "pairs_by_kind": {k: kinds.count(k) for k in sorted(set(kinds))},
               "attack_pairs": sum(pid.endswith("-attack") for pid in table.column("pair_id").to_pylist()),
               "mined": {"from": str(source), "harmful_prompts": len(specs), "attack_pairs_added": len(new),
                         "attack_candidates": cfg.attack_candidates, "attack_strengths": list(cfg.attack_strengths),
                         "seconds": round(time.time() - t0, 1)}}
    write_json_atomic(out / SUMMARY_FILE, summary)
    return BuildResult(out / PAIRS_FILE, table.num_rows, summary)
