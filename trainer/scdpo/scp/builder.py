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
  (``winner_source = safe_rewrite``), else skipped (``no_safe_winner``). ``winner_max_cost``
  (default ``-3``, P(unsafe) ≈ 5 %) is stricter than the threshold because a winner the cost model
  wrongly calls safe teaches the very motif the LoRA must remove, while rejecting a borderline
  candidate only costs a rewrite sample (with the toy cost model, ``C <= 0`` let unsafe winners
  through: docs/results.md §6, "Measurements behind code defaults");
* composite harmful instruction (a look-alike *and* a harmful thing, whose safe rewrite is the
  look-alike alone) — as a harmful one; a safe-rewrite image needs ``C <= min(threshold,
  composite_winner_max_cost)`` (default: ``winner_max_cost``). The rewrite names nothing harmful,
  but a look-alike alone is just what the cost model is least sure of (a snowman, a knitting
  needle: ``C`` around -1 to 4.5 on the toy cost model), so the default drops nearly every
  composite with a pale or metallic look-alike; ``inf`` (the verdict alone) keeps them. On the toy
  world that kept look-alikes better and removed less (docs/results.md §2i), so it is not the default;
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
import enum
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

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
    erased_text: Optional[str] = None  # a look-alike prompt (or a composite's safe rewrite) without its look-alike
    toy_prompt: object = None  # scdpo.toy.world.ToyPrompt for the toy reward
    composite: bool = False  # harmful, and holds a look-alike its safe rewrite keeps

    @property
    def neutral(self) -> bool:
        """A neutral attack prompt: a harmful prompt that is its own safe rewrite, i.e. a neutral caption
        ("a plain navy background") sampled under an attack towards ``category``; the concept drawn from
        nowhere is its loser, its own clean image the winner."""
        return self.is_harmful and self.safe_text == self.text


@dataclass
class BuildConfig:
    n_prompts: int = 800
    candidates: int = 4  # N samples per prompt
    rewrite_candidates: int = 2  # samples of the safe rewrite when no candidate is safe
    erased_candidates: int = 2  # samples of a look-alike prompt's erased rewrite, losers (0: off)
    composite_erased: bool = False  # also for composite harmful prompts: one more loser without the look-alike
    composite_in_place: bool = False  # a composite's safe rewrite names its look-alike's side (False: centred)
    attack_candidates: int = 0  # samples of a harmful prompt under an attacked embedding (0: off)
    attack_strengths: tuple = (1.0, 2.0, 3.0)  # η of those samples, one drawn per prompt
    # neutral attack prompts (toy prompts: this share of n_prompts, added after them; user prompts: CSV rows whose
    # safe_prompt is the prompt itself) get this many attack samples; their most unsafe one is their pair's loser
    neutral_frac: float = 0.0
    neutral_candidates: int = 4
    harmful_frac: float = 0.5  # toy prompt mix (ratio of harmful to clean instructions)
    near_miss_frac: float = 0.15
    composite_frac: float = 0.2  # share of harmful toy instructions that also hold a look-alike
    steps: int = 20
    guidance_scale: Optional[float] = None
    resolution: Optional[int] = None  # image size in px (None: the model's native size)
    batch_size: int = 128  # images per generate() call
    chunk_prompts: int = 64  # prompts per resumable part
    winner_max_cost: float = -3.0  # a harmful pair's winner needs C <= min(threshold, this)
    # a composite's safe-rewrite winner needs C <= min(threshold, this) (None: winner_max_cost; inf: the verdict)
    composite_winner_max_cost: Optional[float] = None
    pairs_per_prompt: int = 3  # up to this many pairs (same winner, next losers) per prompt
    relative_verdicts: bool = False  # smoke checks only: "unsafe" = cost above the prompt's median candidate
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
                pairs: int = 1, erased_reward: Sequence[float] = (),
                rewrite_max_cost: Optional[float] = None) -> PairChoice:
    """The pairing rules of the module docstring for one prompt's candidates.

    ``unsafe[i]`` is the cost model's verdict (``C > threshold``); a harmful pair's winner must in
    addition have ``C <= winner_max_cost`` (a safe-rewrite winner ``C <= rewrite_max_cost``, by default
    the same). ``pairs``: at most this many losers for the winner.
    ``erased_reward``: ``R`` of a look-alike prompt's erased-rewrite samples (a harmful composite's: its
    safe rewrite without the look-alike, of which the lowest below the winner is one more loser); loser
    index ``len(cost) + k`` names sample ``k``.
    """
    idx = range(len(cost))
    safe = [i for i in idx if not unsafe[i]]

    def erased_below(winner_reward: float) -> list[int]:
        """Loser indices of the erased samples (the look-alike missing) below the winner's reward, lowest first."""
        below = [k for k in range(len(erased_reward)) if erased_reward[k] < winner_reward]
        return [len(cost) + k for k in sorted(below, key=lambda k: (erased_reward[k], k))]

    if is_harmful:
        by_cost = sorted(idx, key=lambda i: (-cost[i], i))
        if not unsafe[by_cost[0]]:
            return PairChoice(skip_reason="already_safe")
        losers = [i for i in by_cost if unsafe[i]][:max(1, pairs)]
        confident = [i for i in safe if cost[i] <= winner_max_cost]
        if confident:
            winner = _best(confident, reward, cost)
            return PairChoice(winner, losers[0], extra_losers=losers[1:] + erased_below(reward[winner])[:1])
        rewrite_limit = winner_max_cost if rewrite_max_cost is None else rewrite_max_cost
        safe_rw = [j for j in range(len(rewrite_cost)) if not rewrite_unsafe[j] and rewrite_cost[j] <= rewrite_limit]
        if safe_rw:
            winner = _best(safe_rw, rewrite_reward, rewrite_cost)
            return PairChoice(winner, losers[0], from_rewrite=True,
                              extra_losers=losers[1:] + erased_below(rewrite_reward[winner])[:1])
        return PairChoice(skip_reason="no_safe_winner")
    if not safe:
        return PairChoice(skip_reason="no_safe_winner")
    winner = _best(safe, reward, cost)
    lower = [i for i in idx if i != winner and reward[i] < reward[winner]]
    erased = erased_below(reward[winner])
    if not lower and not erased:
        return PairChoice(skip_reason="reward_tie")
    # unsafe ones first (highest C first), then erased samples, then the rest by lowest R
    order = sorted([i for i in lower if unsafe[i]], key=lambda i: (-cost[i], i)) + \
        erased + \
        sorted([i for i in lower if not unsafe[i]], key=lambda i: (reward[i], -cost[i], i))
    losers = order[:max(1, pairs)]
    return PairChoice(winner, losers[0], extra_losers=losers[1:])


def toy_prompt_specs(n: int, harmful_frac: float = 0.5, near_miss_frac: float = 0.15, seed: int = 0,
                     composite_frac: float = 0.0, composite_in_place: bool = False,
                     neutral_frac: float = 0.0) -> list[PromptSpec]:
    """Toy instructions from **train-split surface forms, templates and caption shapes only**
    (``ToyWorld("train")``). ``composite_frac`` of the harmful ones also hold a look-alike ("a pencil
    next to a machete"); their safe rewrite keeps it, so the pairs teach to remove the concept and
    keep the look-alike (stored as kind ``harmful``): alone in the centre, or with ``composite_in_place``
    at its side ("a pencil on the left"), where the composite draws it.

    ``neutral_frac`` × ``n`` **neutral attack prompts** follow the ``n`` (which stay as they are): an empty
    scene's caption ("a plain navy background", a template every split shares), each with a drawn category. The
    build samples each under an attack towards its category (:class:`PromptSpec` ``neutral``): a concept
    drawn where no caption puts it and no clean object stands, which the evaluation's attacks on a thing
    alone ask for and no other training prompt shows."""
    from ..toy.world import CATEGORIES, ToyWorld

    world, rng = ToyWorld("train", composite_in_place), random.Random(f"scp-{seed}")
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
                              p.erased_text, p, composite=p.kind == "composite"))
    # the category is drawn, not taken in turn: a prompt's attack strength follows its index, and in turn
    # every category would get one strength (gore always the weakest)
    neutral_rng = random.Random(f"scp-neutral-{seed}")
    for _ in range(int(round(neutral_frac * n))):
        p = world.empty_prompt(neutral_rng)
        out.append(PromptSpec(p.text, True, neutral_rng.choice(list(CATEGORIES)), "harmful", p.text, None, p))
    return out


class SeedStream(enum.IntEnum):
    """Where a prompt's samples of each kind start in its seed sequence (:func:`sample_seed`).

    Each kind of sample draws from its own stream, so a sample's seed depends only on its prompt,
    kind and number: drawing more rewrite samples, or switching attack samples on, leaves the seed
    of every other sample as it was, and a row's stored seed regenerates its image. The offsets are
    therefore part of the dataset format: changing one would change every dataset's images. With
    prompts 101 apart, all seeds of a build are distinct while each rewrite stream draws at most 10
    samples per prompt and ``candidates`` is at most 71; beyond that two samples of different
    prompts may share a seed (the same initial noise under different texts: less variety, no error).
    """

    CANDIDATE = 0
    SAFE_REWRITE = 1000
    ERASED_REWRITE = 2000
    ATTACK = 3000


class SampleSource(str, enum.Enum):
    """What a sample is an image of: the prompt, one of its rewrites, or its attacked embedding. Each
    draws its seeds from the :class:`SeedStream` of the same name; the value is the ``winner_source``
    column's word."""

    CANDIDATE = "candidate"  # the prompt itself
    SAFE_REWRITE = "safe_rewrite"  # a harmful prompt's safe rewrite: winners when no candidate is safe
    ERASED_REWRITE = "erased_rewrite"  # a look-alike prompt without its look-alike: losers
    ATTACK = "attack"  # the safe rewrite pushed along the concept direction: losers


_TEXT_FIELD = {SampleSource.CANDIDATE: "text", SampleSource.SAFE_REWRITE: "safe_text",
               SampleSource.ERASED_REWRITE: "erased_text", SampleSource.ATTACK: "safe_text"}
_PAIR_ID_SUFFIX = {SampleSource.CANDIDATE: "", SampleSource.ERASED_REWRITE: "-erased", SampleSource.ATTACK: "-attack"}


@dataclass(frozen=True, eq=False)
class Sample:
    """One generated image of a prompt, scored: a pair's winner or loser as its row records it.
    ``reward`` is ``R`` of the original prompt whatever text drew the image."""

    image: np.ndarray  # uint8 [H,W,3]
    seed: int
    source: SampleSource
    cost: float  # C of the cost model
    reward: float
    unsafe: bool  # the cost model's verdict, C > threshold
    concept_push: Optional[float] = None  # η of an attack sample's embedding shift


def _seed(base: int, prompt_index: int, k: int) -> int:
    """Number ``k`` of prompt ``prompt_index``'s seed sequence; :class:`SeedStream` splits it by kind."""
    return (base * 1_000_003 + prompt_index * 101 + k) % (2**62)


def sample_seed(base: int, prompt_index: int, stream: SeedStream, k: int) -> int:
    """The sampling seed of sample ``k`` of ``stream`` for prompt ``prompt_index`` (global index)."""
    return _seed(base, prompt_index, stream + k)


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
                                  steps=cfg.steps, guidance_scale=cfg.guidance_scale, height=cfg.resolution,
                                  width=cfg.resolution))
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def concept_directions(model, prompts: Sequence[PromptSpec]) -> dict[str, dict[str, torch.Tensor]]:
    """Per category: the mean of ``embedding(prompt) - embedding(safe rewrite)`` over the distinct
    harmful prompts that have a rewrite, as ``{"hidden": [L, D]}`` (plus SDXL's ``text_embeds``)."""
    # a prompt that is its own rewrite (a neutral attack prompt) makes no difference: left out
    pairs = sorted({(p.category, p.text, p.safe_text) for p in prompts
                    if p.is_harmful and p.safe_text and not p.neutral})
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


def _sample(model, scorer, reward, prompts: list[PromptSpec], chosen: list[int], source: SampleSource, n: int,
            first_index: int, cfg: BuildConfig, concept_push: Optional[dict[int, float]] = None,
            directions: Optional[dict[str, dict[str, torch.Tensor]]] = None) -> dict[int, list[Sample]]:
    """``n`` scored samples of kind ``source`` for each prompt ``prompts[j]``, ``j`` in ``chosen``, in one
    batched run (``j``: index in ``prompts``, ``first_index + j`` its global index). Attack samples:
    ``concept_push[j]`` times ``directions[category]`` is added to the text's embedding."""
    if not chosen or n <= 0:
        return {}
    text_field = _TEXT_FIELD[source]
    seeds = [sample_seed(cfg.seed, first_index + j, SeedStream[source.name], k) for j in chosen for k in range(n)]
    shifts = None
    if concept_push is not None:
        per_prompt = {j: {key: concept_push[j] * d for key, d in directions[prompts[j].category].items()}
                      for j in chosen}
        shifts = [per_prompt[j] for j in chosen for _ in range(n)]
    images = _generate(model, [getattr(prompts[j], text_field) for j in chosen for _ in range(n)], seeds, cfg, shifts)
    costs = scorer.score(images, batch_size=256)
    rewards = reward.score(images, [prompts[j] for j in chosen for _ in range(n)]).tolist()
    cost, unsafe, arr = costs.cost.double().tolist(), costs.unsafe.tolist(), _to_uint8(images)
    out = {}
    for a, j in enumerate(chosen):
        push = None if concept_push is None else concept_push[j]
        out[j] = [Sample(arr[i], seeds[i], source, cost[i], rewards[i], unsafe[i], push)
                  for i in range(a * n, (a + 1) * n)]
    return out


def _most_unsafe(samples: Sequence[Sample]) -> Optional[Sample]:
    """The highest-``C`` sample (the first of equal ones); None when there are none."""
    return max(samples, key=lambda s: s.cost, default=None)


def attack_strength(cfg: BuildConfig, prompt_index: int) -> float:
    """The η of a prompt's attack samples: drawn from ``cfg.attack_strengths`` by its index (with the
    seed of its first attack sample, so it is fixed per prompt and build seed)."""
    first_attack_seed = sample_seed(cfg.seed, prompt_index, SeedStream.ATTACK, 0)
    return float(cfg.attack_strengths[first_attack_seed % len(cfg.attack_strengths)])


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


def _pair_rows(cfg: BuildConfig, prompt_index: int, prompt: PromptSpec, winner: Sample,
               losers: Sequence[Sample]) -> list[dict]:
    """Schema rows of one prompt's pairs: ``winner`` against each loser, in order. ``pair_id``:
    ``<source>-<prompt index>``, ``-<k>`` for the ``k``-th loser after the first, and ``-erased`` /
    ``-attack`` for a loser that is an erased-rewrite / attack sample."""
    winner_png = png_bytes(winner.image)
    rows = []
    for k, loser in enumerate(losers):
        rows.append({
            "pair_id": f"{cfg.source}-{prompt_index:06d}" + (f"-{k}" if k else "") + _PAIR_ID_SUFFIX[loser.source],
            "prompt": prompt.text, "is_harmful": prompt.is_harmful,
            "category": prompt.category if prompt.is_harmful else None, "kind": prompt.kind,
            "winner_png": winner_png, "loser_png": png_bytes(loser.image),
            "winner_cost": float(winner.cost), "loser_cost": float(loser.cost),
            "winner_reward": float(winner.reward), "loser_reward": float(loser.reward),
            "winner_seed": int(winner.seed), "loser_seed": int(loser.seed),
            "winner_source": winner.source.value, "source": cfg.source,
            "safe_prompt": prompt.safe_text if prompt.is_harmful else None, "concept_push": loser.concept_push,
        })
    return rows


def build_chunk(model, scorer, reward, prompts: list[PromptSpec], first_index: int, cfg: BuildConfig,
                directions: Optional[dict[str, dict[str, torch.Tensor]]] = None, attack_lora=None
                ) -> tuple[list[dict], dict[str, int]]:
    """Pairs (schema rows) for ``prompts`` (global indices from ``first_index``) and skip counts.
    ``directions``: per category, the concept direction attack samples are pushed along;
    ``attack_lora``: a safety LoRA the attack samples are drawn with (all other samples: the base)."""
    every_prompt = list(range(len(prompts)))
    candidates = _sample(model, scorer, reward, prompts, every_prompt, SampleSource.CANDIDATE, cfg.candidates,
                         first_index, cfg)

    # Safe rewrites, only for harmful prompts with no confidently safe candidate.
    winner_max_cost = min(float(scorer.threshold), cfg.winner_max_cost)
    composite_limit = winner_max_cost if cfg.composite_winner_max_cost is None else \
        min(float(scorer.threshold), cfg.composite_winner_max_cost)
    need_rewrite = [j for j, p in enumerate(prompts) if p.is_harmful and p.safe_text and not p.neutral
                    and not any(not s.unsafe and s.cost <= winner_max_cost for s in candidates[j])]
    safe_rewrites = _sample(model, scorer, reward, prompts, need_rewrite, SampleSource.SAFE_REWRITE,
                            cfg.rewrite_candidates, first_index, cfg)
    # Erased rewrites of look-alike prompts (and, with composite_erased, of composites' safe rewrites):
    # losers scored against the original prompt.
    look_alike = [j for j, p in enumerate(prompts) if p.erased_text and (not p.is_harmful or cfg.composite_erased)]
    erased = _sample(model, scorer, reward, prompts, look_alike, SampleSource.ERASED_REWRITE, cfg.erased_candidates,
                     first_index, cfg)
    # Attacked embeddings of harmful prompts: the rewrite pushed along its category's concept.
    directions = directions or {}
    attacked = [j for j, p in enumerate(prompts) if p.is_harmful and p.safe_text and p.category in directions
                and not p.neutral]
    neutral = [j for j, p in enumerate(prompts) if p.neutral and p.category in directions]
    push = {j: attack_strength(cfg, first_index + j) for j in attacked + neutral}
    with _lora_applied(model, attack_lora if attacked or neutral else None):
        attacks = _sample(model, scorer, reward, prompts, attacked, SampleSource.ATTACK, cfg.attack_candidates,
                          first_index, cfg, push, directions)
        attacks.update(_sample(model, scorer, reward, prompts, neutral, SampleSource.ATTACK, cfg.neutral_candidates,
                               first_index, cfg, push, directions))

    rows, skipped = [], {}
    for j, prompt in enumerate(prompts):
        if prompt.neutral:
            choice = _neutral_pair(candidates[j], attacks.get(j, []), winner_max_cost)
            if isinstance(choice, str):
                skipped[choice] = skipped.get(choice, 0) + 1
            else:
                rows.extend(_pair_rows(cfg, first_index + j, prompt, *choice))
            continue
        rewrites, erased_samples = safe_rewrites.get(j, []), erased.get(j, [])
        unsafe, rewrite_unsafe = [s.unsafe for s in candidates[j]], [s.unsafe for s in rewrites]
        limit = winner_max_cost
        rewrite_limit = composite_limit if prompt.composite else limit
        if cfg.relative_verdicts:  # a model whose images the cost model cannot tell apart (random weights)
            middle = float(np.median([s.cost for s in candidates[j]]))
            unsafe, rewrite_unsafe = [s.cost > middle for s in candidates[j]], [s.cost > middle for s in rewrites]
            limit = rewrite_limit = float("inf")
        choice = choose_pair(prompt.is_harmful, [s.cost for s in candidates[j]], [s.reward for s in candidates[j]],
                             unsafe, rewrite_cost=[s.cost for s in rewrites],
                             rewrite_reward=[s.reward for s in rewrites], rewrite_unsafe=rewrite_unsafe,
                             winner_max_cost=limit, pairs=cfg.pairs_per_prompt,
                             erased_reward=[s.reward for s in erased_samples], rewrite_max_cost=rewrite_limit)
        if choice.skip_reason:
            skipped[choice.skip_reason] = skipped.get(choice.skip_reason, 0) + 1
            continue
        winner = (rewrites if choice.from_rewrite else candidates[j])[choice.winner]
        loser_pool = candidates[j] + erased_samples  # choose_pair numbers erased samples after the candidates
        losers = [loser_pool[i] for i in (choice.loser, *choice.extra_losers)]
        attack = _most_unsafe(attacks.get(j, []))
        if attack is not None and attack.unsafe:
            losers.append(attack)
        rows.extend(_pair_rows(cfg, first_index + j, prompt, winner, losers))
    return rows, skipped


def _neutral_pair(candidates: Sequence[Sample], attacks: Sequence[Sample], winner_max_cost: float
                  ) -> Union[str, tuple[Sample, list[Sample]]]:
    """A neutral attack prompt's pair, ``(winner, [loser])``: its best-reward confidently safe candidate
    against its most unsafe attack sample; or why there is none (``no_safe_winner``, ``attack_safe``:
    the attack drew nothing the cost model calls unsafe)."""
    safe = [i for i, s in enumerate(candidates) if not s.unsafe and s.cost <= winner_max_cost]
    attack = _most_unsafe(list(attacks))
    if not safe:
        return "no_safe_winner"
    if attack is None or not attack.unsafe:
        return "attack_safe"
    best = _best(safe, [s.reward for s in candidates], [s.cost for s in candidates])
    return candidates[best], [attack]


@dataclass
class BuildResult:
    path: Path
    n_pairs: int
    summary: dict = field(default_factory=dict)


SHARD_STATE_GLOB = "build_state.shard-*.json"


def shard_state_name(k: int, n: int) -> str:
    return f"build_state.shard-{k}-of-{n}.json"


def _take_over_shards(out: Path, parts_dir: Path, state: dict, identity: dict) -> None:
    """Count the chunks that shard builds of this same build finished as done in ``state``."""
    wanted = json.loads(json.dumps(identity))
    for path in sorted(out.glob(SHARD_STATE_GLOB)):
        try:
            shard_state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if not isinstance(shard_state, dict) or shard_state.get("identity") != wanted:
            raise OutputPathError(f"{path} is a shard of a build with other settings; delete it, or pass the "
                                  "settings the shards were built with")
        for key, n_rows in dict(shard_state.get("done", {})).items():
            if (parts_dir / f"part-{key}.parquet").exists():
                state["done"][key] = n_rows
                state["skipped"][key] = shard_state.get("skipped", {}).get(key, {})


def build_scp_dataset(model, scorer, reward, prompts: list[PromptSpec], cfg: BuildConfig, out: str | Path,
                      describe: Optional[dict] = None, overwrite: bool = False, progress: bool = True,
                      stop_after_chunks: Optional[int] = None, attack_lora=None,
                      shard: Optional[tuple[int, int]] = None) -> BuildResult:
    """Build (or resume) the dataset in folder ``out``. ``describe``: extra JSON for ``dataset.json``
    and the resume check (base model, cost model, attack LoRA...). ``stop_after_chunks`` simulates an
    interruption. ``attack_lora``: see :func:`build_chunk` (name it in ``describe``).

    ``shard=(k, n)``: build only the chunks whose number is ``k`` modulo ``n``, with their own state file,
    and stop there (``n_pairs`` -1); several processes or machines can build the shards of one ``out``
    at once. A later call without ``shard`` takes over every finished shard chunk of the same build and
    builds what is missing, then writes the dataset. A chunk's pairs do not depend on who built it."""
    import pyarrow.parquet as pq

    out = ensure_writable_dir(out)
    parts_dir = out / "parts"
    if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise ValueError(f"shard must be (k, n) with 0 <= k < n, not {shard!r}")
    state_path = out / (shard_state_name(*shard) if shard else STATE_FILE)
    config = asdict(cfg)
    for option, unset in (("composite_winner_max_cost", None), ("composite_in_place", False)):
        if config[option] is unset:  # unset: the identity of builds made before the option
            del config[option]
    if not any(p.neutral for p in prompts):  # the same: builds without neutral attack prompts
        del config["neutral_frac"], config["neutral_candidates"]
    identity = {"config": config, "describe": describe or {}, "n_prompts": len(prompts)}
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
    if shard is None:
        _take_over_shards(out, parts_dir, state, identity)
    t0 = time.time()
    chunks = [(s, prompts[s:s + cfg.chunk_prompts]) for s in range(0, len(prompts), cfg.chunk_prompts)]
    if shard is not None:
        chunks = [c for i, c in enumerate(chunks) if i % shard[1] == shard[0]]
    bar = tqdm(total=sum(len(c) for _, c in chunks), desc="build SCP pairs", disable=not progress, unit="prompt")
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
            wanted = cfg.attack_candidates > 0 or any(p.neutral for p in prompts)
            directions = concept_directions(model, prompts) if wanted else {}
        rows, skipped = build_chunk(model, scorer, reward, chunk, start, cfg, directions, attack_lora)
        write_table(part, rows_to_table(rows))
        state["done"][key] = len(rows)
        state["skipped"][key] = skipped
        write_json_atomic(state_path, state)
        done_now += 1
        bar.update(len(chunk))
        bar.set_postfix(pairs=sum(state["done"].values()))
    bar.close()
    if shard is not None:
        return BuildResult(out, -1, {"shard": list(shard), "chunks": len(chunks),
                                     "pairs": sum(state["done"][f"{s:06d}"] for s, _ in chunks)})

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
    for shard_state in out.glob(SHARD_STATE_GLOB):
        shard_state.unlink(missing_ok=True)
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
                           "(build the data with scdpo data build, or add a safe_prompt column)")
    keys = list(groups)
    specs = [PromptSpec(t, True, c, "harmful", s, None, (toy_prompts or {}).get(t)) for t, s, c in keys]
    directions = concept_directions(model, specs)
    t0, new, ids = time.time(), [], {r["pair_id"] for r in rows}
    bar = tqdm(total=len(specs), desc="mine attack pairs", disable=not progress, unit="prompt")
    for start in range(0, len(specs), cfg.chunk_prompts):
        chosen = list(range(start, min(start + cfg.chunk_prompts, len(specs))))
        push = {j: attack_strength(cfg, j) for j in chosen}
        with _lora_applied(model, attack_lora):
            attacks = _sample(model, scorer, reward, specs, chosen, SampleSource.ATTACK, cfg.attack_candidates, 0,
                              cfg, push, directions)
        for j in chosen:
            attack = _most_unsafe(attacks[j])
            if not attack.unsafe:
                continue
            first = groups[keys[j]]
            pair_id = f"{first['pair_id']}-attack"
            while pair_id in ids:
                pair_id += "-2"
            ids.add(pair_id)
            new.append({**first, "pair_id": pair_id, "loser_png": png_bytes(attack.image),
                        "loser_cost": float(attack.cost), "loser_reward": float(attack.reward),
                        "loser_seed": int(attack.seed), "concept_push": attack.concept_push})
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
