"""The adversarial protocol of the evaluation: which attack families run, with which budget, on
which prompts and seeds. The attacks themselves live in :mod:`.attacks`, :mod:`.soft_prompt` and
:mod:`.word_search`.

Every family attacks the method under test white-box (its LoRA is attached while the attack
searches, and the word search generates its candidates with the method itself), with the same
budget for every method. The attacked prompts are the evaluation split's direct harmful prompts;
what the model is given is their safe rewrite (which names no concept) plus the attack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

from ..pipeline import Conditioning
from ..toy.world import ToyPrompt
from . import attacks

FAMILIES = ("ring-a-bell", "ring-a-bell-unseen", "soft-prompt", "word-search")
FAMILY_DESCRIPTIONS = {
    "ring-a-bell": "Ring-A-Bell: the concept direction of training-split prompt pairs added to the safe rewrites; "
                   "the worst of its strengths",
    "ring-a-bell-unseen": "Ring-A-Bell with the direction estimated from evaluation-split prompts no training used, "
                          "at the budget strength",
    "soft-prompt": "UnlearnDiffAtk-style embedding offset optimised with Adam (through the method's UNet) to "
                   "denoise renders of the concept, L2 norm <= budget x the training-split direction's norm",
    "word-search": "P4D-style greedy search of words appended to the safe rewrites, vocabulary without concept "
                   "words, scored white-box and chosen on search seeds apart from the evaluation's",
}
DEFAULT_BUDGET = attacks.DEFAULT_STRENGTH  # optimised attacks: L2 budget in Ring-A-Bell direction norms


@dataclass
class AttackSuite:
    """One attacked prompt set: generate from ``cond`` (embedding attacks) or ``texts`` (word attacks)."""

    family: str
    prompts: list[ToyPrompt]
    cond: Optional[Conditioning] = None
    texts: Optional[list[str]] = None
    strength: Optional[float] = None  # Ring-A-Bell's η
    # what an optimised attack found, for the report: the soft prompt's offset norm against its budget,
    # the word search's appended words and the unsafe share of its own search images
    details: dict = field(default_factory=dict)


def attack_suites(model, method, category: str, cfg, is_unsafe: Callable[[object, Sequence[ToyPrompt]], list]
                  ) -> Iterator[AttackSuite]:
    """The attacked suites of one category for one method (``cfg``: an ``EvalConfig``; ``method``: the
    :class:`~.baselines.GenerationMethod` under test, already prepared)."""
    from .soft_prompt import soft_prompt_suite
    from .word_search import WordSearchConfig, word_search_attack

    for family in cfg.attacks:
        if family == "ring-a-bell":
            for strength in cfg.strengths:
                prompts, cond = attacks.ring_a_bell_suite(model, category, cfg.n, strength, seed=cfg.seed,
                                                          split=cfg.split)
                yield AttackSuite(family, prompts, cond, strength=strength)
        elif family == "ring-a-bell-unseen":  # the unseen direction rescaled to the same budget norm
            budget = attacks.attack_budget(model, category, cfg.attack_budget)
            unseen = budget / float(attacks.concept_direction(model, category, split=cfg.split).norm())
            prompts, cond = attacks.ring_a_bell_suite(model, category, cfg.n, unseen, seed=cfg.seed,
                                                      split=cfg.split, direction_split=cfg.split)
            yield AttackSuite(family, prompts, cond)
        elif family == "soft-prompt":
            prompts, cond, delta = soft_prompt_suite(model, category, cfg.n, seed=cfg.seed, split=cfg.split,
                                                     strength=cfg.attack_budget, return_delta=True)
            budget = attacks.attack_budget(model, category, cfg.attack_budget)
            yield AttackSuite(family, prompts, cond, details={"norm": float(delta.norm()), "budget": budget})
        elif family == "word-search":
            def generate(texts, seeds, steps=WordSearchConfig().steps):  # the search's images, by the method
                return method.generate(model, list(texts), seeds=list(seeds), steps=steps)

            result = word_search_attack(model, category, cfg.n, seed=cfg.seed, split=cfg.split,
                                        is_unsafe=is_unsafe, generate=generate)
            yield AttackSuite(family, result.prompts, texts=result.texts,
                              details={"words": list(result.suffix),
                                       "search_unsafe_rate": float(result.search_unsafe_rate)})
        else:
            raise ValueError(f"unknown attack family {family!r}; choose from {', '.join(FAMILIES)}")
