"""The shipped prompt set (scdpo_prompts_v1.csv): regenerated exactly by its generator, valid rows,
held-out splits that share no prompt with train, and `--prompts scdpo --split` selecting its rows."""

from __future__ import annotations

import csv
import fnmatch
import re
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

from scdpo.errors import InputFileError
from scdpo.scp.commands import read_prompt_csv
from scdpo.scp.prompt_clean import DOMAINS, LIGHTS, MODIFIERS, MOVEMENTS, STYLES
from scdpo.scp.prompt_set import (COLUMNS, SHAPES, SHIPPED_FILE, Dressing, Scene, counts_table, generate, mentions,
                                  row_kind, to_csv)
from scdpo.scp.prompt_vocab import CATEGORY_NAMES, CONCEPT_WORDS, CONCEPTS, FORMS, LOOK_ALIKES, SPLITS
from scdpo.toy.world import CATEGORIES

REPO = Path(__file__).resolve().parents[2]
ALL_CONCEPT_WORDS = [w for words in CONCEPT_WORDS.values() for w in words]


@pytest.fixture(scope="module")
def shipped() -> list[dict]:
    with SHIPPED_FILE.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def rows():
    return generate()


def _key(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def test_the_shipped_csv_is_what_the_generator_writes_and_generation_is_deterministic(rows):
    assert SHIPPED_FILE.read_text(encoding="utf-8") == to_csv(rows), \
        "scdpo_prompts_v1.csv is stale: run python -m scdpo.scp.prompt_set"
    assert to_csv(generate()) == to_csv(rows)
    assert to_csv(generate(seed=1)) != to_csv(rows)  # the seed drives every draw


def test_the_csv_ships_as_package_data():
    globs = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["package-data"]
    relative = SHIPPED_FILE.relative_to(REPO / "trainer" / "scdpo").as_posix()
    assert any(fnmatch.fnmatch(relative, g) for g in globs["scdpo"]), relative


def test_schema_of_every_row(shipped):
    assert list(shipped[0]) == list(COLUMNS)
    assert set(CATEGORY_NAMES) == set(CATEGORIES)  # the toy world's category names
    for r in shipped:
        assert r["prompt"].strip() and r["split"] in SPLITS
        kind = row_kind(r)
        if kind in ("harmful", "composite"):
            assert r["category"] in CATEGORY_NAMES and r["safe_prompt"] and not r["erased_prompt"]
            # the rewrite names nothing of the concept, in no wording of any split
            phrases = [c.text for form in CONCEPTS[r["category"]].values() for cs in form.values() for c in cs]
            assert not mentions(r["safe_prompt"], [*CONCEPT_WORDS[r["category"]], *phrases]), r
            assert r["safe_prompt"] != r["prompt"]
        elif kind == "near_miss":
            assert r["resembles"] in CATEGORY_NAMES and not r["safe_prompt"] and r["erased_prompt"] != r["prompt"]
        else:
            assert not (r["safe_prompt"] or r["resembles"]), r
            assert not mentions(r["prompt"], ALL_CONCEPT_WORDS), r
        if kind == "composite":
            assert r["resembles"] in CATEGORY_NAMES


def test_rewrites_keep_the_scene_and_drop_only_the_concept_or_look_alike(rows):
    names = {la.thing for items in LOOK_ALIKES.values() for la in items}
    for r in rows:
        rewrite = r.safe_prompt or r.erased_prompt
        if not rewrite:
            continue
        # the caption's tail (style and modifiers) is the same words in both
        assert _key(r.prompt).split()[-2:] == _key(rewrite).split()[-2:], r
        if r.kind == "near_miss":
            assert not mentions(rewrite, [n for n in names if mentions(r.prompt, [n])]), r
        if r.kind == "composite":  # the look-alike stays next to where the concept was
            assert any(mentions(r.safe_prompt, [n]) for n in names if mentions(r.prompt, [n])), r


def test_counts_per_split_category_and_kind(shipped):
    assert len(shipped) >= 1000
    by = {}
    for r in shipped:
        key = (r["split"], row_kind(r) if row_kind(r) != "composite" else "harmful", r["category"] or r["resembles"])
        by[key] = by.get(key, 0) + 1
    for category in CATEGORY_NAMES:
        assert by[("train", "harmful", category)] >= 100
        assert by[("train", "near_miss", category)] >= 60
        for split in ("validation", "test"):
            assert by[(split, "harmful", category)] >= 30 and by[(split, "near_miss", category)] >= 20
    for split in SPLITS:
        assert by[(split, "clean", "")] >= 100
    assert sum(r["split"] == "train" for r in shipped) >= 0.55 * len(shipped)


def test_every_subject_area_form_and_caption_shape_is_used(rows):
    assert {r.form for r in rows if r.kind == "clean"} == set(DOMAINS)
    assert {r.form for r in rows if r.kind in ("harmful", "composite")} == set(FORMS)
    for split in SPLITS:
        assert {r.shape for r in rows if r.split == split} == set(SHAPES[split])
    assert sum(r.kind == "composite" for r in rows) >= 30


def test_no_prompt_is_in_two_splits(shipped):
    keys = {s: {_key(r["prompt"]) for r in shipped if r["split"] == s} for s in SPLITS}
    assert sum(map(len, keys.values())) == len(shipped)  # no duplicate either, not even by case
    assert not keys["train"] & keys["validation"] and not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]


def test_held_out_wordings_look_alikes_and_shapes_are_not_in_train(shipped):
    train_text = "\n".join(r["prompt"].lower() for r in shipped if r["split"] == "train")
    for category, forms in CONCEPTS.items():
        for form, by_split in forms.items():
            if form == "direct":  # the plain word is in every split, as in the toy world
                continue
            for split in ("validation", "test"):
                for c in by_split[split]:
                    assert c.text.lower() not in train_text, (category, split, c.text)
    items = {s: {la.thing for la in LOOK_ALIKES[s]} for s in SPLITS}
    assert not items["train"] & items["validation"] and not items["train"] & items["test"]
    assert not set(SHAPES["train"]) & (set(SHAPES["validation"]) | set(SHAPES["test"]))
    # nor as CLIP's tokenizer reads them (it lowercases): no held-out shape writes a train shape's caption
    scene, dressing = Scene("a knight"), Dressing("oil painting", "baroque", ("sharp focus", "8k", "grain"), "at dusk")
    train_captions = {shape(scene, dressing).lower() for shape in SHAPES["train"].values()}
    for split in ("validation", "test"):
        assert not {shape(scene, dressing).lower() for shape in SHAPES[split].values()} & train_captions, split
    # and the held-out splits really use them: most of their harmful rows have a wording train never has
    for split in ("validation", "test"):
        held = [r for r in shipped if r["split"] == split and r["category"]]
        new = [r for r in held if any(mentions(r["prompt"], [c.text]) for f in FORMS if f != "direct"
                                      for c in CONCEPTS[r["category"]][f][split])]
        assert len(new) >= 0.5 * len(held), (split, len(new), len(held))


def test_every_grey_case_is_in_the_set_as_the_datasheet_decides(rows):
    for split, items in LOOK_ALIKES.items():
        for la in (la for la in items if la.grey):
            hits = [r for r in rows if r.split == split and (la.thing in r.prompt or
                                                              (la.person and la.person.split("{who} ")[1] in r.prompt))]
            assert hits and all(r.kind in ("near_miss", "composite") for r in hits), la.thing
    # stage blood is still blood on the picture: harmful, and its rewrite keeps the costume
    fake = [r for r in rows if "fake blood" in r.prompt]
    assert fake and all(r.category == "gore" and "halloween costume" in r.safe_prompt for r in fake)
    datasheet = (REPO / "docs" / "prompts.md").read_text(encoding="utf-8")
    assert counts_table([r.csv_record() for r in rows]) in datasheet, \
        "docs/prompts.md's count table is stale: python -m scdpo.scp.prompt_set --counts"
    texts = {t for r in rows for t in (r.prompt, r.safe_prompt, r.erased_prompt)}
    table = datasheet.split("| kind | prompt | rewrite |")[1].split("\n\n")[0]  # its examples are real rows
    examples = [t for line in table.splitlines() for t in re.findall(r"\| `([^`]+)`", line)]
    assert len(examples) >= 10 and not [t for t in examples if t not in texts]


def test_no_minors_and_nothing_sexual_beyond_nudity(rows):
    banned = ("child", "children", "kid", "kids", "girl", "girls", "boy", "boys", "teen", "teens", "teenage",
              "teenager", "baby", "toddler", "infant", "schoolgirl", "schoolboy", "minor", "young", "little",
              "loli", "sexy", "sexual", "erotic", "seductive", "lingerie", "aroused", "breasts", "genitals",
              "porn", "explicit", "lust")
    for r in rows:
        for text in (r.prompt, r.safe_prompt, r.erased_prompt):
            assert not mentions(text, banned), text
        if r.category == "nudity":  # nude people are posed in studios, by windows, outdoors: never in bed
            assert not mentions(r.prompt, ("bed", "bedroom", "bath", "shower")), r.prompt
    for word in (*STYLES, *MOVEMENTS, *MODIFIERS, *LIGHTS):
        assert not mentions(word, ALL_CONCEPT_WORDS), word


# --- reading it: read_prompt_csv and `scdpo data build --prompts scdpo --split` ----------------------

def test_the_builtin_name_reads_the_train_split_by_default_and_others_on_request(shipped):
    for split in (None, "train", "validation", "test", "all"):
        specs = read_prompt_csv("scdpo", split)
        want = [r for r in shipped if split == "all" or r["split"] == (split or "train")]
        assert [s.text for s in specs] == [r["prompt"] for r in want]
        assert [s.kind for s in specs] == [{"composite": "harmful"}.get(row_kind(r), row_kind(r)) for r in want]
        assert [s.composite for s in specs] == [row_kind(r) == "composite" for r in want]
        assert all((s.category, s.is_harmful) == (r["category"] or None, bool(r["category"]))
                   for s, r in zip(specs, want))
        assert all(s.erased_text == (r["erased_prompt"] or None) and s.safe_text == (r["safe_prompt"] or None)
                   for s, r in zip(specs, want))
    assert len(read_prompt_csv(SHIPPED_FILE, "all")) == len(shipped)


def test_a_user_csv_with_and_without_a_split_column(tmp_path):
    f = tmp_path / "mine.csv"
    f.write_text("prompt,category,safe_prompt,erased_prompt,split\n"
                 "a man holding a pistol,weapon,a man,,train\n"
                 "a red rose on a table,,,a table,Validation\n"
                 "a cat,,,,test\n", encoding="utf-8")
    assert [s.text for s in read_prompt_csv(f)] == ["a man holding a pistol"]
    assert [s.kind for s in read_prompt_csv(f, "validation")] == ["near_miss"]
    assert len(read_prompt_csv(f, "all")) == 3
    f.write_text("prompt,category,split\na cat,,train\na dog,,\n", encoding="utf-8")
    with pytest.raises(InputFileError, match="line 3: split is 'empty'"):
        read_prompt_csv(f)
    f.write_text("prompt,category,split\na cat,,holdout\n", encoding="utf-8")
    with pytest.raises(InputFileError, match="line 2: split is 'holdout'.*train, validation, test"):
        read_prompt_csv(f)
    f.write_text("prompt,category,split\na cat,,train\n", encoding="utf-8")
    with pytest.raises(InputFileError, match="no prompts of split test"):
        read_prompt_csv(f, "test")
    f.write_text("prompt,category\na cat,\na knife,weapon\n", encoding="utf-8")  # no split column: every row
    assert len(read_prompt_csv(f)) == len(read_prompt_csv(f, "all")) == 2
    with pytest.raises(InputFileError, match="no `split` column.*leave --split out"):
        read_prompt_csv(f, "validation")
    with pytest.raises(InputFileError, match="not found: .*scdpo-v9.*built-in prompt sets: scdpo"):
        read_prompt_csv("scdpo-v9")


def test_data_build_passes_the_chosen_split_to_the_builder(tmp_path, monkeypatch, capsys):
    import scdpo.cost.scorer
    import scdpo.models
    import scdpo.scp.builder
    import scdpo.scp.rewards
    from scdpo.cli import main

    seen = {}

    def fake_build(model, scorer, reward, prompts, cfg, out, describe=None, **kw):
        seen.update(prompts=prompts, describe=describe)
        return SimpleNamespace(summary={"pairs_by_kind": {}, "skipped_prompts": {}}, n_pairs=0, path=out)

    monkeypatch.setattr(scdpo.cost.scorer, "load_cost_model", lambda *a, **k: SimpleNamespace(threshold=0.0))
    monkeypatch.setattr(scdpo.models, "load_base_model",
                        lambda *a, **k: SimpleNamespace(model_id="sd15", base_model_version="sd_v1"))
    monkeypatch.setattr(scdpo.scp.rewards, "make_reward", lambda *a, **k: SimpleNamespace(name="mine"))
    monkeypatch.setattr(scdpo.scp.builder, "build_scp_dataset", fake_build)
    out = str(tmp_path / "scp")
    assert main(["data", "build", "--prompts", "scdpo", "--split", "validation", "--out", out]) == 0
    assert [p.text for p in seen["prompts"]] == [s.text for s in read_prompt_csv("scdpo", "validation")]
    assert seen["describe"]["prompt_source"] == "scdpo_prompts_v1.csv (split validation)"
    assert main(["data", "build", "--prompts", "scdpo", "--out", out]) == 0
    assert seen["describe"]["prompt_source"] == "scdpo_prompts_v1.csv (split train)"
    capsys.readouterr()
    assert main(["data", "build", "--split", "test", "--out", out]) == 2  # the toy prompts have no split to pick
    assert "--split selects rows of a --prompts CSV" in capsys.readouterr().err
