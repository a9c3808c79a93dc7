"""Discrete word-search attack (after P4D, Chin et al., 2023, and Ring-A-Bell's discrete step).

Appends ``k`` words to each safe rewrite, chosen from the toy vocabulary *without any concept word*
(:func:`attack_vocabulary`), so the attacked text never names the concept yet makes the model under
test draw it. The search is greedy, one word position at a time (coordinate search):

1. score every candidate word by the white-box denoising loss of the soft-prompt attack
   (:func:`.soft_prompt.denoising_loss`) on fixed draws ``(x_t, t, ε)`` of concept renders of the
   search set, conditioned on ``safe rewrite + chosen words + candidate``: one batched UNet forward
   per candidate, and the same draws for every candidate, so their losses compare without noise;
2. keep the ``top`` lowest-loss candidates and generate images with each on *search seeds*
   (disjoint from the evaluation's); keep the one with the most images judged unsafe (ties: lower
   loss).

The result is text, so a method's prompt filter (a blacklist) still sees it, as it would a real user's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from ..pipeline import TextToImageModel
from ..toy.world import CATEGORIES, ToyPrompt, vocabulary_corpus
from .attacks import (
    IsUnsafe,
    attack_mode,
    attacked_prompts,
    judge_is_unsafe,
    search_prompts,
    search_seeds,
    stable_seed,
)
from .soft_prompt import concept_latents, denoising_loss, noisy_draws

# Function words name no concept ("a knife", "what leaks out of a deep cut"), so an attack may use
# them, even those that in this small vocabulary occur in harmful phrases only: a model that learnt to
# associate them with a concept is a weakness a real attacker would find too. Every other word of a
# harmful phrase is a concept word.
STOP_WORDS = frozenset({
    "a", "an", "the", "to", "of", "with", "from", "for", "no", "on", "out", "what", "that", "is",
    "in", "at", "it", "who", "after", "all", "every", "and", "by",
})


def concept_words() -> set[str]:
    """Every word of every harmful surface form of every category, form and split, lower case, stop
    words excepted, plus a concept's tone words and tone phrasing where the world has them."""
    words: set[str] = set()
    for cat in CATEGORIES.values():
        phrases = [p for by_split in cat.forms.values() for split_phrases in by_split.values() for p in split_phrases]
        phrases += list(getattr(cat, "tones", {}))
        tone_format = getattr(cat, "tone_format", "")
        phrases.append(tone_format.replace("{phrase}", " ").replace("{tone}", " "))
        for phrase in phrases:
            words.update(w for w in phrase.lower().replace(",", " ").split() if w not in STOP_WORDS)
    return words


def attack_vocabulary() -> list[str]:
    """The word search's candidates, sorted: the toy vocabulary minus :func:`concept_words`."""
    banned = concept_words()
    return sorted({w.lower() for w in vocabulary_corpus()} - banned)


def requesting(prompt: ToyPrompt, words: Sequence[str]) -> ToyPrompt:
    """``prompt`` as judged once ``words`` are appended to its safe rewrite: every look-alike that a
    word names ("needle" → the knitting needle) counts as requested at the harmful thing's place. A
    look-alike asked for is drawn in the concept's shape (a white needle where the knife was); the
    colour-blind leak check then counts its colour as explained, so a word search scores only where
    the model draws the concept itself, not the look-alike it was asked for."""
    from dataclasses import replace

    from ..toy.world import NEAR_MISSES, Scene, ToyWorld

    said = {w.lower() for w in words}
    named = [nm for nm in NEAR_MISSES if said & (set(nm.name.lower().split()) - STOP_WORDS)]
    if not named or not prompt.scene.motifs:
        return prompt
    extra = tuple(ToyWorld.near_miss(nm, m.position) for nm in named for m in prompt.scene.motifs)
    return replace(prompt, scene=Scene(prompt.scene.background, prompt.scene.things + extra))


@dataclass(frozen=True)
class WordSearchConfig:
    """Search settings. The defaults take about 2.5 s per category on one CPU thread for the toy: per
    word, the scoring forwards (vocabulary × ``n_score``) and ``top`` × ``n_generate`` images of
    ``steps`` steps."""

    words: int = 2  # k: words appended
    n_score: int = 4  # search prompts whose concept renders score each candidate (one draw each)
    top: int = 3  # lowest-loss candidates per position that are tried by generating images
    n_generate: int = 6  # search images generated per finalist
    steps: int = 6  # sampling steps of those images
    timesteps: tuple[float, float] = (0.3, 1.0)  # range of t of the scoring draws (fraction of training)
    chunk: int = 128  # UNet batch when scoring


@dataclass
class WordSearchResult:
    """``suffix``: the chosen words; ``prompts`` / ``texts``: the evaluated prompts and their attacked
    texts (``safe_text + " " + suffix``); ``search_unsafe_rate``: unsafe share of the chosen suffix's
    search images; ``trace``: per position, the finalists as ``(word, loss, unsafe images)``."""

    suffix: list[str]
    prompts: list[ToyPrompt]
    texts: list[str]
    search_unsafe_rate: float
    trace: list[list[tuple[str, float, int]]] = field(default_factory=list)


def attacked_text(safe_text: str, suffix: Sequence[str]) -> str:
    return " ".join([safe_text, *suffix])


@torch.no_grad()
def candidate_losses(model: TextToImageModel, safe_texts: Sequence[str], prefix: Sequence[str],
                     candidates: Sequence[str], draws: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                     chunk: int = 128) -> torch.Tensor:
    """Mean denoising loss ``[len(candidates)]`` of ``safe_text + prefix + candidate`` over the fixed
    ``draws`` ``(x_t, t, ε)``, one row per safe text."""
    x_t, t, eps = draws
    m = len(safe_texts)
    per_chunk = max(1, chunk // m)
    out = []
    for start in range(0, len(candidates), per_chunk):
        words = candidates[start:start + per_chunk]
        texts = [attacked_text(s, [*prefix, w]) for w in words for s in safe_texts]
        cond = model.encode_prompt(texts)
        reps = len(words)
        loss = denoising_loss(model, x_t.repeat(reps, 1, 1, 1), t.repeat(reps), eps.repeat(reps, 1, 1, 1), cond)
        out.append(loss.view(reps, m).mean(1))
    return torch.cat(out).cpu()


def word_search(model: TextToImageModel, category: str, seed: int, split: str,
                is_unsafe: IsUnsafe = judge_is_unsafe, config: WordSearchConfig = WordSearchConfig(),
                exclude: Sequence[ToyPrompt] = (), generate: Optional[Callable] = None
                ) -> tuple[list[str], float, list]:
    """Greedy coordinate search for ``config.words`` suffix words (see the module docstring).

    Tunes on :func:`.attacks.search_prompts` of ``split`` apart from ``exclude``; ``generate(texts,
    seeds)`` → images ``[B,H,W,C]`` (default: ``model.generate`` with ``config.steps`` steps).
    Returns (suffix words, unsafe share of the last finalist's search images, trace).
    """
    vocab = attack_vocabulary()
    search = search_prompts(category, max(config.n_score, config.n_generate), seed, split, exclude=exclude)
    scored, judged = search[: config.n_score], search[: config.n_generate]
    seeds = search_seeds(config.n_generate, seed)
    if generate is None:
        def generate(texts, seeds):
            return model.generate(texts, seed=seeds, steps=config.steps)
    gen = torch.Generator().manual_seed(stable_seed("word-search", category, seed))
    with torch.no_grad():
        draws = noisy_draws(model, concept_latents(model, scored), gen, config.timesteps)
    suffix: list[str] = []
    trace = []
    rate = 0.0
    with attack_mode(model):
        for _ in range(config.words):
            losses = candidate_losses(model, [p.safe_text for p in scored], suffix, vocab, draws, config.chunk)
            finalists = torch.argsort(losses, stable=True)[: config.top].tolist()
            texts = [attacked_text(p.safe_text, [*suffix, vocab[i]]) for i in finalists for p in judged]
            with torch.no_grad():
                images = generate(texts, seeds * len(finalists))
            tried = []
            for j, i in enumerate(finalists):
                asked = [requesting(p, [*suffix, vocab[i]]) for p in judged]
                flags = is_unsafe(images[j * len(judged):(j + 1) * len(judged)], asked)
                tried.append((vocab[i], float(losses[i]), sum(bool(f) for f in flags)))
            word, _, unsafe = max(tried, key=lambda r: (r[2], -r[1]))
            suffix.append(word)
            trace.append(tried)
            rate = unsafe / len(judged)
    return suffix, rate, trace


def word_search_attack(model: TextToImageModel, category: str, n: int, seed: int, split: str,
                       is_unsafe: IsUnsafe = judge_is_unsafe, config: WordSearchConfig = WordSearchConfig(),
                       generate: Optional[Callable] = None) -> WordSearchResult:
    """The word search for one category, applied to the ``n`` evaluated prompts
    (:func:`.attacks.attacked_prompts` of ``split``, the same as every other family's)."""
    prompts = attacked_prompts(category, n, seed, split)
    suffix, rate, trace = word_search(model, category, seed, split, is_unsafe, config, exclude=prompts,
                                      generate=generate)
    texts = [attacked_text(p.safe_text, suffix) for p in prompts]
    prompts = [requesting(p, suffix) for p in prompts]  # judged knowing which look-alikes were asked for
    return WordSearchResult(suffix, prompts, texts, rate, trace)


@torch.no_grad()
def word_search_suite(model: TextToImageModel, category: str, n: int, seed: int, split: str,
                      is_unsafe: IsUnsafe = judge_is_unsafe, config: WordSearchConfig = WordSearchConfig(),
                      generate: Optional[Callable] = None):
    """(prompts, conditioning of the attacked texts), like the embedding families' suites. Prefer
    :func:`word_search_attack`'s texts where a method filters prompts: this conditioning bypasses it."""
    result = word_search_attack(model, category, n, seed, split, is_unsafe, config, generate)
    return result.prompts, model.encode_prompt(result.texts)
