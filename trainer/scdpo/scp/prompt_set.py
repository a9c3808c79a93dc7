"""The shipped prompt set: harmful, look-alike and clean prompts for ``scdpo data build --prompts scdpo``.

Composes ``trainer/scdpo/data/scdpo_prompts_v1.csv`` from the hand-written vocabularies of
:mod:`scdpo.scp.prompt_vocab` (concepts, look-alikes) and :mod:`scdpo.scp.prompt_clean` (clean
subjects, caption dressing), seeded and deterministic. The datasheet is docs/prompts.md.

Columns (the prompt CSV of ``scdpo data build``, docs/training.md, plus two):

- ``prompt``;
- ``category``: ``gore`` | ``weapon`` | ``nudity`` for a harmful prompt, empty for a clean one;
- ``safe_prompt``: harmful rows, the same caption without the concept;
- ``erased_prompt``: look-alike (near-miss) rows, the same caption without the look-alike;
- ``resembles``: the category a row's look-alike resembles (near-miss rows, and composite harmful rows,
  whose safe rewrite keeps a look-alike); informational, ``scdpo data build`` does not read it;
- ``split``: ``train`` | ``validation`` | ``test``.

Surface forms, look-alikes and caption templates are split (as the toy world splits its own), so a
validation or test prompt is never a training prompt, and its wording is partly new.

Regenerate with ``python -m scdpo.scp.prompt_set`` (``--check`` compares instead of writing).
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..fileio import write_text_atomic
from .prompt_clean import DOMAINS, LIGHTS, MODIFIERS, MOVEMENTS, STYLES
from .prompt_vocab import (CATEGORY_NAMES, CLOTHING, CONCEPT_WORDS, CONCEPTS, CONTEXTS, FORM_WEIGHTS, FORMS,
                           LOOK_ALIKES, PEOPLE, PLACES, POSES, SPLITS, THING_PLACES, Concept, LookAlike, Place)

COLUMNS = ("prompt", "category", "safe_prompt", "erased_prompt", "resembles", "split")
SEED = 20250601
PROMPT_DIR = Path(__file__).resolve().parent.parent / "data"
SHIPPED_FILE = PROMPT_DIR / "scdpo_prompts_v1.csv"
# `scdpo data build --prompts NAME` accepts these names for the shipped set.
BUILTIN_PROMPT_SETS = {"scdpo": SHIPPED_FILE, "scdpo-v1": SHIPPED_FILE}

# Rows per split: harmful per category, look-alike per category (by the category it resembles), clean.
QUOTAS = {"train": (120, 78, 336), "validation": (40, 26, 112), "test": (40, 26, 112)}
COMPOSITE_SHARE = 0.15  # harmful rows that also hold a look-alike their safe rewrite keeps
THING_SCENE_SHARE = 0.25  # weapon rows whose weapon lies in a place with no person
PLACE_SHARE = 0.75  # clean rows with a place or time phrase


@dataclass(frozen=True)
class Row:
    """One prompt with how it was made (``kind``, ``form``, ``shape``: for the datasheet and tests)."""

    prompt: str
    split: str
    kind: str  # harmful | composite | near_miss | clean
    category: str = ""
    safe_prompt: str = ""
    erased_prompt: str = ""
    resembles: str = ""
    form: str = ""
    shape: str = ""

    def csv_record(self) -> dict:
        return {c: getattr(self, c) for c in COLUMNS}


@dataclass(frozen=True)
class Scene:
    """A caption's content: a subject noun phrase (None: the place alone), where, and a look-alike beside."""

    subject: Optional[str]
    place: Optional[Place] = None
    beside: Optional[str] = None

    def head(self) -> str:
        subject, beside = (self.subject, self.beside) if self.subject else (self.beside, None)
        if subject is None:
            return self.place.bare
        text = subject + (f" {self.place.prep}" if self.place else "")
        return text + (f" beside {beside}" if beside else "")

    def tags(self) -> list[str]:
        subject, beside = (self.subject, self.beside) if self.subject else (self.beside, None)
        if subject is None:
            return [self.place.bare]
        place = (self.place.bare or self.place.prep) if self.place else None
        return [t for t in (subject, place, beside) if t]


@dataclass(frozen=True)
class Dressing:
    """The style words of one row, drawn once so a prompt and its rewrite share them."""

    style: str
    movement: str
    mods: tuple
    light: str


def article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


Shape = Callable[[Scene, Dressing], str]
# Caption templates and shapes, split like the toy world's: validation and test use wordings and
# shapes (pipes, "style: ..." prefixes, A1111 emphasis weights, "masterpiece" prefixes, instructions)
# no train row has. Not case: CLIP's tokenizer lowercases, so an upper-case shape (validation's until
# 2026-12-07) reached the model as the train shape it was written from.
SHAPES: dict[str, dict[str, Shape]] = {
    "train": {
        "sentence": lambda s, d: f"{s.head()}, {d.style}",
        "sentence_mods": lambda s, d: f"{s.head()}, {d.style}, {d.mods[0]}, {d.mods[1]}",
        "image_of": lambda s, d: f"an image of {s.head()}, {d.style}",
        "tags": lambda s, d: ", ".join([*s.tags(), d.style, d.mods[0]]),
        "caption": lambda s, d: f"{_cap(s.head())}. {_cap(d.style)}, {d.light}.",
        "artist": lambda s, d: f"{s.head()}, {d.movement} style, {d.style}, {', '.join(d.mods)}",
    },
    "validation": {
        "picture_showing": lambda s, d: f"a picture showing {s.head()}, {d.style}",
        "pipes": lambda s, d: " | ".join([s.head(), d.movement, d.mods[0], d.mods[1]]),
        "detailed_caption": lambda s, d: f"A detailed {d.style} of {s.head()}, {d.light}, {d.mods[0]}.",
        "style_colon": lambda s, d: f"{d.style}: {s.head()}, {d.light}",
    },
    "test": {
        "weighted": lambda s, d: ", ".join([f"({s.tags()[0]}:1.3)", *s.tags()[1:], d.style, d.mods[0]]),
        "quality_prefix": lambda s, d: f"masterpiece, best quality, {s.head()}, {d.style}, {d.mods[0]}",
        "depicting": lambda s, d: (f"{_cap(d.style)} depicting {s.head()}. {_cap(d.light)}. "
                                   f"{_cap(d.mods[0])}, {d.mods[1]}."),
        "draw": lambda s, d: f"draw {s.head()} as {article(d.movement + ' ' + d.style)}",
    },
}


def _dressing(rng: random.Random) -> Dressing:
    return Dressing(rng.choice(STYLES), rng.choice(MOVEMENTS), tuple(rng.sample(MODIFIERS, 3)), rng.choice(LIGHTS))


def mentions(text: str, phrases) -> list[str]:
    """The phrases of ``phrases`` that occur in ``text`` as whole words, any case."""
    low = text.lower()
    return [p for p in phrases if re.search(rf"(?<![\w-]){re.escape(p.lower())}(?![\w-])", low)]


def _composable(la: LookAlike) -> bool:
    """A look-alike that can stand beside a harmful thing: it names no concept itself."""
    return not any(mentions(la.thing, words) for words in CONCEPT_WORDS.values())


def _harmful_scenes(rng: random.Random, category: str, concept: Concept) -> tuple[Scene, Scene]:
    """(harmful scene, its safe rewrite) for one concept phrase."""
    who = article(rng.choice(PEOPLE[category]))
    if concept.role == "thing" or (concept.role in POSES and rng.random() < THING_SCENE_SHARE):
        place = rng.choice(THING_PLACES[category])
        return Scene(concept.text, place), Scene(None, place)
    place = rng.choice(PLACES[category])
    if concept.role in POSES:
        harmful, safe = rng.choice(POSES[concept.role])
        return Scene(harmful.format(who=who, w=concept.text), place), Scene(safe.format(who=who), place)
    if concept.role in ("pre", "post"):  # nudity: the safe rewrite dresses the same person
        person = rng.choice(PEOPLE[category])
        text = article(f"{concept.text} {person}") if concept.role == "pre" else f"{article(person)} {concept.text}"
        return Scene(text, place), Scene(f"{article(person)} in {rng.choice(CLOTHING)}", place)
    return (Scene(f"{who} {concept.text}", place),
            Scene(f"{who} {concept.safe}".strip(), place))


def _near_miss_scenes(rng: random.Random, la: LookAlike) -> tuple[Scene, Scene]:
    """(look-alike scene, the scene without the look-alike)."""
    ctx = CONTEXTS[la.context]
    if la.person and rng.random() < 0.5:
        who, place = article(rng.choice(ctx.people)), rng.choice(ctx.places)
        return Scene(la.person.format(who=who), place), Scene(who, place)
    place = rng.choice(ctx.places + ctx.surfaces)
    return Scene(la.thing, place), Scene(None, place)


class _Composer:
    """Draws rows for one split, never repeating a prompt of any split (compared case- and
    punctuation-blind, so an upper-case validation caption cannot repeat a training one)."""

    def __init__(self, split: str, seen: set, seed: int):
        self.split, self.seen, self.seed = split, seen, seed
        self.shapes = SHAPES[split]

    def _rng(self, *parts) -> random.Random:
        return random.Random("-".join(map(str, (self.seed, self.split, *parts))))

    def _claim(self, text: str) -> bool:
        key = " ".join(re.findall(r"[a-z0-9]+", text.lower()))
        if key in self.seen:
            return False
        self.seen.add(key)
        return True

    def _draw(self, n: int, rng: random.Random, make: Callable[[random.Random, str, Dressing], Optional[Row]]) -> list:
        rows, tries = [], 0
        while len(rows) < n:
            tries += 1
            if tries > 200 * n:
                raise RuntimeError(f"{self.split}: the vocabularies cannot make {n} distinct prompts")
            shape = rng.choice(sorted(self.shapes))
            row = make(rng, shape, _dressing(rng))
            if row is not None and self._claim(row.prompt):
                rows.append(row)
        return rows

    def harmful(self, category: str, n: int) -> list:
        rng = self._rng("harmful", category)
        beside = [la for la in LOOK_ALIKES[self.split] if _composable(la)]

        def make(rng, shape, dress):
            form = rng.choices(FORMS, FORM_WEIGHTS)[0]
            scene, safe = _harmful_scenes(rng, category, rng.choice(CONCEPTS[category][form][self.split]))
            kind, resembles = "harmful", ""
            if rng.random() < COMPOSITE_SHARE:
                la = rng.choice(beside)
                kind, resembles = "composite", la.resembles
                scene, safe = Scene(scene.subject, scene.place, la.thing), Scene(safe.subject, safe.place, la.thing)
            render = self.shapes[shape]
            return Row(render(scene, dress), self.split, kind, category, safe_prompt=render(safe, dress),
                       resembles=resembles, form=form, shape=shape)

        return self._draw(n, rng, make)

    def near_miss(self, category: str, n: int) -> list:
        rng = self._rng("near_miss", category)
        items = [la for la in LOOK_ALIKES[self.split] if la.resembles == category]
        order = []  # every look-alike of the split about equally often

        def make(rng, shape, dress):
            if not order:
                order.extend(rng.sample(items, len(items)))
            la = order.pop()
            scene, erased = _near_miss_scenes(rng, la)
            render = self.shapes[shape]
            return Row(render(scene, dress), self.split, "near_miss", erased_prompt=render(erased, dress),
                       resembles=la.resembles, form="grey" if la.grey else "look-alike", shape=shape)

        return self._draw(n, rng, make)

    def clean(self, n: int) -> list:
        rng = self._rng("clean")
        names = sorted(DOMAINS)
        drawn = [0]  # domains in turn, so every subject area is about equally common

        def make(rng, shape, dress):
            name = names[drawn[0] % len(names)]
            drawn[0] += 1
            domain = DOMAINS[name]
            place = rng.choice(domain.places) if rng.random() < PLACE_SHARE else None
            return Row(self.shapes[shape](Scene(rng.choice(domain.subjects), place), dress), self.split, "clean",
                       form=name, shape=shape)

        return self._draw(n, rng, make)


def generate(seed: int = SEED) -> list[Row]:
    """Every row of the set, in file order: split, then harmful / composite, look-alike, clean rows."""
    seen: set = set()
    rows = []
    for split in SPLITS:
        harmful_n, near_n, clean_n = QUOTAS[split]
        comp = _Composer(split, seen, seed)
        for category in CATEGORY_NAMES:
            rows += comp.harmful(category, harmful_n)
        for category in CATEGORY_NAMES:
            rows += comp.near_miss(category, near_n)
        rows += comp.clean(clean_n)
    return rows


def to_csv(rows: list[Row]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(r.csv_record() for r in rows)
    return buf.getvalue()


def row_kind(record: dict) -> str:
    """The kind of a CSV record: harmful | composite | near_miss | clean."""
    if record.get("category"):
        return "composite" if record.get("resembles") else "harmful"
    return "near_miss" if record.get("erased_prompt") else "clean"


def counts_table(records: list[dict]) -> str:
    """Markdown table of rows per kind and category (near-miss: the category resembled) and split."""
    keys = [(k, c) for k in ("harmful", "composite", "near_miss") for c in CATEGORY_NAMES] + [("clean", "")]
    count = {}
    for r in records:
        key = (row_kind(r), r.get("category") or r.get("resembles") or "")
        count[key, r["split"]] = count.get((key, r["split"]), 0) + 1
    lines = ["| kind | category | " + " | ".join(SPLITS) + " | all |", "| --- | --- |" + " ---: |" * (len(SPLITS) + 1)]
    for key in keys:
        per = [count.get((key, s), 0) for s in SPLITS]
        cells = [key[0].replace("_", "-"), key[1] or "—", *map(str, per), str(sum(per))]
        lines.append("| " + " | ".join(cells) + " |")
    per = [sum(1 for r in records if r["split"] == s) for s in SPLITS]
    lines.append("| **all** | | " + " | ".join(f"**{n}**" for n in per) + f" | **{sum(per)}** |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scdpo.scp.prompt_set", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(SHIPPED_FILE), help="where to write the CSV (default: the shipped file)")
    ap.add_argument("--check", action="store_true", help="compare with --out instead of writing; exit 1 if it differs")
    ap.add_argument("--counts", action="store_true", help="print the datasheet's count table")
    args = ap.parse_args(argv)
    rows = generate()
    text = to_csv(rows)
    out = Path(args.out)
    if args.check:
        same = out.is_file() and out.read_text(encoding="utf-8") == text
        print(f"{out}: {'up to date' if same else 'differs from the generator: run python -m scdpo.scp.prompt_set'}")
        return 0 if same else 1
    if args.counts:
        print(counts_table([r.csv_record() for r in rows]))
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, text)
    print(f"wrote {len(rows)} prompts to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
