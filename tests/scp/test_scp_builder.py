"""SCP builder: pairing rules, schema, toy prompts from the train split, resumable builds."""

from __future__ import annotations

import json
import random
import re

import pyarrow.parquet as pq
import pytest
import torch

from scdpo.cost import CostScorer, SafetyCostModel
from scdpo.cost.toy_encoder import ToyImageEncoder
from scdpo.errors import OutputPathError
from scdpo.scp import COLUMNS, BuildConfig, build_scp_dataset, choose_pair, load_scp_dataset, toy_prompt_specs
from scdpo.scp.rewards import ToyFidelityReward
from scdpo.scp.schema import png_bytes
from scdpo.toy.world import CAPTION_SHAPES, CATEGORIES, IMAGE_SIZE, TEMPLATES_ONE, TEMPLATES_TWO


# --- pairing rules (pure function) -----------------------------------------------------------------

def test_harmful_winner_is_best_reward_safe_candidate_and_loser_highest_cost():
    c = choose_pair(True, cost=[2.0, -1.0, 3.0, -2.0], reward=[1.0, 0.5, 1.0, 0.9], unsafe=[True, False, True, False])
    assert (c.winner, c.loser, c.from_rewrite) == (3, 2, False)


def test_harmful_without_safe_candidate_uses_the_safe_rewrite():
    c = choose_pair(True, [2.0, 1.5], [1.0, 1.0], [True, True], rewrite_cost=[1.0, -3.0], rewrite_reward=[1.0, 0.5],
                    rewrite_unsafe=[True, False])
    assert (c.winner, c.loser, c.from_rewrite) == (1, 0, True)
    none = choose_pair(True, [2.0], [1.0], [True], rewrite_cost=[1.0], rewrite_reward=[1.0], rewrite_unsafe=[True])
    assert none.skip_reason == "no_safe_winner"
    assert choose_pair(True, [-1.0, -2.0], [0.2, 0.9], [False, False]).skip_reason == "already_safe"


def test_clean_unsafe_candidate_never_wins_and_is_the_preferred_loser():
    # candidate 0 has the best reward but is unsafe → cannot win; 3 is unsafe with lower reward → loser.
    c = choose_pair(False, cost=[5.0, -2.0, -1.0, 4.0], reward=[1.0, 0.9, 0.3, 0.5], unsafe=[True, False, False, True])
    assert (c.winner, c.loser) == (1, 3)
    # no unsafe candidate: loser = lowest reward
    c = choose_pair(False, [-1.0, -2.0, -3.0], [0.5, 1.0, 0.2], [False] * 3)
    assert (c.winner, c.loser) == (1, 2)
    assert choose_pair(False, [-1.0, -2.0], [1.0, 1.0], [False, False]).skip_reason == "reward_tie"


@pytest.mark.parametrize("seed", range(30))
def test_clean_pairs_always_have_winner_reward_above_loser(seed):
    g = torch.Generator().manual_seed(seed)
    n = 5
    cost = (torch.randn(n, generator=g) * 2).tolist()
    reward = (torch.randint(0, 4, (n,), generator=g) / 3).tolist()
    unsafe = [c > 0.5 for c in cost]
    ch = choose_pair(False, cost, reward, unsafe)
    if ch.skip_reason is None:
        assert reward[ch.winner] > reward[ch.loser]
        assert not unsafe[ch.winner]


# --- toy prompts -------------------------------------------------------------------------------------

def test_harmful_winner_must_be_confidently_safe_and_extra_losers_follow_the_same_order():
    # candidate 1 is below the threshold but not below winner_max_cost: the rewrite wins instead
    c = choose_pair(True, [4.0, -1.0, 3.0, 2.5], [1.0, 0.9, 1.0, 1.0], [True, False, True, True],
                    rewrite_cost=[-5.0, -0.5], rewrite_reward=[0.4, 1.0], rewrite_unsafe=[False, False],
                    winner_max_cost=-3.0, pairs=3)
    assert (c.winner, c.from_rewrite, c.loser, c.extra_losers) == (0, True, 0, [2, 3])
    c = choose_pair(True, [4.0, -4.0, 3.0, 2.5], [1.0, 0.9, 1.0, 1.0], [True, False, True, True],
                    winner_max_cost=-3.0, pairs=2)
    assert (c.winner, c.from_rewrite, c.loser, c.extra_losers) == (1, False, 0, [2])
    # no confidently safe image anywhere: skipped rather than trusting a borderline verdict
    assert choose_pair(True, [4.0, -1.0], [1.0, 1.0], [True, False], rewrite_cost=[-2.0], rewrite_reward=[1.0],
                       rewrite_unsafe=[False], winner_max_cost=-3.0).skip_reason == "no_safe_winner"
    # clean: unsafe lower-reward candidates first, then the lowest rewards
    c = choose_pair(False, [-1.0, 5.0, -2.0, -3.0], [1.0, 0.8, 0.2, 0.5], [False, True, False, False], pairs=3)
    assert (c.winner, c.loser, c.extra_losers) == (0, 1, [2, 3])


def test_toy_prompts_use_train_split_surface_forms_only():
    heldout_only = {ph for c in CATEGORIES.values() for f in c.forms.values() for s in ("validation", "test")
                    for ph in f[s] if ph not in f["train"]}
    heldout_tpl_words = {"backdrop", "scene"}  # only the validation / test templates say these
    specs = toy_prompt_specs(400, harmful_frac=0.5, seed=3, composite_frac=0.2)
    harmful = [s for s in specs if s.is_harmful]
    assert 150 < len(harmful) < 250
    for s in specs:
        assert not any(re.search(rf"\b{re.escape(ph)}\b", s.text) for ph in heldout_only), s.text
        assert not any(w in s.text.split() for w in heldout_tpl_words), s.text
        assert s.text == s.text.lower() and s.toy_prompt.shape in CAPTION_SHAPES["train"]  # train shapes only
        if s.is_harmful:
            assert s.category in CATEGORIES and s.safe_text and s.kind == "harmful"
        else:
            assert s.category is None
    assert {s.kind for s in specs} == {"harmful", "clean", "near_miss"}
    assert {s.toy_prompt.shape for s in harmful} == set(CAPTION_SHAPES["train"])  # both sides of the picture
    composites = [s for s in harmful if s.toy_prompt.kind == "composite"]
    assert 0.1 < len(composites) / len(harmful) < 0.3
    # a composite's safe rewrite keeps its look-alike
    assert all(s.toy_prompt.safe_scene.things[0].kind == "nearmiss" for s in composites)
    # composites come from their own stream: the other prompts are those of composite_frac=0
    plain = toy_prompt_specs(400, harmful_frac=0.5, seed=3)
    assert [s.text for s in plain if s.toy_prompt.kind != "harmful"] == \
        [s.text for s in specs if s.toy_prompt.kind not in ("harmful", "composite")]
    assert TEMPLATES_ONE["validation"] and TEMPLATES_TWO["test"]


def test_erased_rewrite_samples_are_losers_of_look_alike_prompts():
    # candidates tie (the base draws the look-alike well): only the erased samples that score lower
    # than the winner become losers, lowest R first, indexed after the candidates
    c = choose_pair(False, [-1.0, -2.0], [1.0, 1.0], [False, False], erased_reward=[0.5, 1.0, 0.2], pairs=3)
    assert (c.winner, c.loser, c.extra_losers) == (1, 2 + 2, [2 + 0])
    # an unsafe candidate stays the preferred loser; erased samples come before lower-R safe candidates
    c = choose_pair(False, [-1.0, 5.0, -2.0], [1.0, 0.8, 0.9], [False, True, False], erased_reward=[0.6], pairs=3)
    assert (c.winner, c.loser, c.extra_losers) == (0, 1, [3, 2])
    assert choose_pair(False, [-1.0, -2.0], [1.0, 1.0], [False, False], erased_reward=[1.0]).skip_reason == "reward_tie"


# --- the build loop ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_setup():
    from scdpo.toy.model import ToyTextToImage

    model = ToyTextToImage.from_scratch(0)
    torch.manual_seed(0)
    cost_model = SafetyCostModel(ToyImageEncoder(), ["gore", "nudity", "weapon"], feature_dim=8)
    scorer = CostScorer(cost_model)
    # An untrained head: put the threshold at the median cost of this model's samples so that about
    # half the candidates count as unsafe and every pairing rule is exercised.
    sample = model.generate(["a red square on a black background"] * 16, seed=list(range(16)), steps=2)
    cost_model.threshold = float(scorer.score(sample).cost.median())
    return model, scorer


def _cfg(**kw):
    # the untrained head's costs have no meaningful scale: only the calibrated threshold bounds winners
    base = dict(n_prompts=12, candidates=3, steps=2, batch_size=64, chunk_prompts=4, seed=1,
                winner_max_cost=float("inf"))
    base.update(kw)
    return BuildConfig(**base)


def test_build_writes_the_contract_schema_and_respects_the_rules(tmp_path, tiny_setup):
    model, scorer = tiny_setup
    cfg = _cfg(pairs_per_prompt=1, n_prompts=20)  # one pair per prompt: pairs + skipped prompts = prompts
    prompts = toy_prompt_specs(cfg.n_prompts, 0.5, 0.15, cfg.seed)
    res = build_scp_dataset(model, scorer, ToyFidelityReward(), prompts, cfg, tmp_path / "scp", progress=False)
    table = pq.read_table(tmp_path / "scp" / "pairs.parquet")
    assert tuple(table.column_names) == COLUMNS
    assert res.n_pairs == table.num_rows and res.n_pairs >= 3
    summary = json.loads((tmp_path / "scp" / "dataset.json").read_text())
    assert summary["n_pairs"] + sum(summary["skipped_prompts"].values()) == cfg.n_prompts and summary["attack_pairs"] == 0
    assert not (tmp_path / "scp" / "parts").exists()  # merged, parts removed
    specs = {p.text: p for p in prompts}
    for row in table.to_pylist():
        if row["is_harmful"]:
            assert row["winner_cost"] <= scorer.threshold < row["loser_cost"]
            assert row["category"] in CATEGORIES
            assert row["safe_prompt"] == specs[row["prompt"]].safe_text and row["safe_prompt"] != row["prompt"]
        else:
            assert row["winner_reward"] > row["loser_reward"] and row["category"] is None
            assert row["safe_prompt"] is None
            assert row["winner_cost"] <= scorer.threshold
    if res.n_pairs:
        ds = load_scp_dataset(tmp_path / "scp", expected_size=IMAGE_SIZE)
        item = ds[0]
        assert item["winner"].shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and 0.0 <= float(item["winner"].min()) <= 1.0


def test_more_pairs_per_prompt_reuse_the_winner_with_unique_ids(tmp_path, tiny_setup):
    model, scorer = tiny_setup
    prompts = toy_prompt_specs(12, 0.5, 0.15, 1)
    one = build_scp_dataset(model, scorer, ToyFidelityReward(), prompts, _cfg(pairs_per_prompt=1), tmp_path / "a",
                            progress=False)
    three = build_scp_dataset(model, scorer, ToyFidelityReward(), prompts, _cfg(pairs_per_prompt=3), tmp_path / "b",
                              progress=False)
    rows = pq.read_table(tmp_path / "b" / "pairs.parquet").to_pylist()
    assert three.n_pairs > one.n_pairs
    assert len({r["pair_id"] for r in rows}) == len(rows)
    by_prompt = {}
    for r in rows:
        by_prompt.setdefault(r["pair_id"].split("-")[1], []).append(r)
    for group in by_prompt.values():
        assert len(group) <= 3 and len({g["winner_png"] for g in group}) == 1
        assert len({g["loser_seed"] for g in group}) == len(group)


def _one_build(tmp_path, tiny_setup):
    """A small build in one go into ``tmp_path/full``: (model, scorer, reward, prompts, config, result)."""
    model, scorer = tiny_setup
    cfg = _cfg()
    prompts = toy_prompt_specs(cfg.n_prompts, 0.5, 0.15, cfg.seed)
    reward = ToyFidelityReward()
    full = build_scp_dataset(model, scorer, reward, prompts, cfg, tmp_path / "full", progress=False)
    return model, scorer, reward, prompts, cfg, full


def test_interrupted_build_resumes_to_the_same_dataset(tmp_path, tiny_setup):
    model, scorer, reward, prompts, cfg, full = _one_build(tmp_path, tiny_setup)
    part = build_scp_dataset(model, scorer, reward, prompts, cfg, tmp_path / "resumed", progress=False,
                             stop_after_chunks=1)
    assert part.summary == {"interrupted": True}
    state = json.loads((tmp_path / "resumed" / "build_state.json").read_text())
    assert list(state["done"]) == ["000000"]
    resumed = build_scp_dataset(model, scorer, reward, prompts, cfg, tmp_path / "resumed", progress=False)
    a = pq.read_table(tmp_path / "full" / "pairs.parquet")
    b = pq.read_table(tmp_path / "resumed" / "pairs.parquet")
    assert resumed.n_pairs == full.n_pairs and a.equals(b)
    with pytest.raises(OutputPathError, match="other settings"):
        build_scp_dataset(model, scorer, reward, prompts, _cfg(candidates=2), tmp_path / "resumed", progress=False)
    # a build made before --composite-winner-max-cost / --composite-in-place existed (no such keys) resumes
    # as the same build; setting either option makes it another
    assert {"composite_winner_max_cost", "composite_in_place"}.isdisjoint(state["identity"]["config"])
    again = build_scp_dataset(model, scorer, reward, prompts, cfg, tmp_path / "resumed", progress=False)
    assert again.n_pairs == full.n_pairs
    for option in ({"composite_winner_max_cost": float("inf")}, {"composite_in_place": True}):
        with pytest.raises(OutputPathError, match="other settings"):
            build_scp_dataset(model, scorer, reward, prompts, _cfg(**option), tmp_path / "resumed", progress=False)


def test_shards_built_apart_give_the_dataset_of_one_build(tmp_path, tiny_setup):
    model, scorer, reward, prompts, cfg, full = _one_build(tmp_path, tiny_setup)
    out = tmp_path / "sharded"
    first = build_scp_dataset(model, scorer, reward, prompts, cfg, out, progress=False, shard=(1, 2))
    assert first.n_pairs == -1 and first.summary["shard"] == [1, 2] and not (out / "pairs.parquet").exists()
    state = json.loads((out / "build_state.shard-1-of-2.json").read_text())
    n_chunks = -(-cfg.n_prompts // cfg.chunk_prompts)
    assert sorted(state["done"]) == [f"{i * cfg.chunk_prompts:06d}" for i in range(1, n_chunks, 2)]
    # the shard 0 of 2 is left out: the merging build makes its chunks itself
    merged = build_scp_dataset(model, scorer, reward, prompts, cfg, out, progress=False)
    a = pq.read_table(tmp_path / "full" / "pairs.parquet")
    b = pq.read_table(out / "pairs.parquet")
    assert merged.n_pairs == full.n_pairs and a.equals(b)
    assert merged.summary["skipped_prompts"] == full.summary["skipped_prompts"]
    assert not list(out.glob("build_state.shard-*")) and not (out / "parts").exists()
    other = tmp_path / "other"
    build_scp_dataset(model, scorer, reward, prompts, _cfg(candidates=2), other, progress=False, shard=(0, 2))
    with pytest.raises(OutputPathError, match="shard of a build with other settings"):
        build_scp_dataset(model, scorer, reward, prompts, cfg, other, progress=False)
    with pytest.raises(ValueError, match="shard"):
        build_scp_dataset(model, scorer, reward, prompts, cfg, other, progress=False, shard=(2, 2))


def _png_levels_apart(image: torch.Tensor, png: bytes) -> int:
    """Largest difference, in 8-bit levels, between a generated ``[H,W,3]`` image and a stored PNG."""
    from scdpo.images import decode_rgb_array

    mine = (image.clamp(0, 1) * 255).round().to(torch.int16)
    return int((mine - torch.tensor(decode_rgb_array(png, "the stored loser"), dtype=torch.int16)).abs().max())


def test_attack_pairs_take_the_most_unsafe_sample_of_the_pushed_rewrite(tmp_path, tiny_setup):
    from scdpo.scp.builder import attack_strength, concept_directions

    model, scorer = tiny_setup
    cfg = _cfg(n_prompts=16, candidates=2, pairs_per_prompt=1, attack_candidates=2, attack_strengths=(1.0, 2.5))
    prompts = toy_prompt_specs(16, harmful_frac=1.0, near_miss_frac=0.0, seed=4)
    res = build_scp_dataset(model, scorer, ToyFidelityReward(), prompts, cfg, tmp_path / "on", progress=False)
    rows = pq.read_table(tmp_path / "on" / "pairs.parquet").to_pylist()
    attack = [r for r in rows if r["pair_id"].endswith("-attack")]
    assert len(attack) >= 2 and res.summary["attack_pairs"] == len(attack)
    assert all(r["concept_push"] is None for r in rows if r not in attack)
    dirs = concept_directions(model, prompts)
    assert set(dirs) == {p.category for p in prompts}
    for r in attack:
        j = int(r["pair_id"].split("-")[1])
        p = prompts[j]
        assert r["concept_push"] == attack_strength(cfg, j) and r["concept_push"] in (1.0, 2.5)
        assert r["safe_prompt"] == p.safe_text and r["loser_cost"] > scorer.threshold >= r["winner_cost"]
        plain = [q for q in rows if q["pair_id"] == r["pair_id"][: -len("-1-attack")]]
        assert len(plain) == 1 and plain[0]["winner_png"] == r["winner_png"]  # the prompt's winner
        # the loser is a sample of the rewrite's embedding pushed by η along the category direction
        cond = model.encode_prompt([p.safe_text]).shifted({k: r["concept_push"] * v for k, v in dirs[p.category].items()})
        again = model.generate(None, cond=cond, seed=[r["loser_seed"]], steps=cfg.steps)
        # the builder draws the candidates as one batch, this one alone: equal up to one level of rounding
        assert _png_levels_apart(again[0], r["loser_png"]) <= 1
    # the direction is the mean of embedding(prompt) - embedding(rewrite)
    cat = prompts[0].category
    mine = sorted({(p.text, p.safe_text) for p in prompts if p.category == cat})
    want = (model.encode_prompt([a for a, _ in mine]).hidden - model.encode_prompt([b for _, b in mine]).hidden).mean(0)
    torch.testing.assert_close(dirs[cat]["hidden"], want, atol=1e-5, rtol=1e-4)
    # off: the same dataset without the attack pairs
    off = build_scp_dataset(model, scorer, ToyFidelityReward(), prompts, _cfg(
        n_prompts=16, candidates=2, pairs_per_prompt=1, attack_candidates=0), tmp_path / "off", progress=False)
    assert off.summary["attack_pairs"] == 0 and off.n_pairs == res.n_pairs - len(attack)
    assert pq.read_table(tmp_path / "off" / "pairs.parquet").column("pair_id").to_pylist() == [
        r["pair_id"] for r in rows if r not in attack]


def test_attack_samples_can_come_from_a_first_safety_lora(tmp_path, tiny_setup):
    """Second-round data: the attack samples are drawn from base + a LoRA, everything else from the base."""
    import copy

    from scdpo.dpo import ToyOraclePairs, TrainConfig, train_lora
    from scdpo.lora import apply_lora, load_lora, remove_lora
    from scdpo.scp.builder import concept_directions

    model, scorer = tiny_setup
    path = train_lora(TrainConfig(out=str(tmp_path), name="first", steps=3, batch_size=4, rank=4, alpha=4.0, lr=5e-2,
                                  warmup_steps=0, log_every=1, checkpoint_every=3),
                      model=copy.deepcopy(model), dataset=ToyOraclePairs(12, seed=2), progress=False)
    lora = load_lora(path)
    cfg = _cfg(n_prompts=16, candidates=2, pairs_per_prompt=1, attack_candidates=2)
    prompts = toy_prompt_specs(16, harmful_frac=1.0, near_miss_frac=0.0, seed=4)
    first = build_scp_dataset(model, scorer, ToyFidelityReward(), prompts, cfg, tmp_path / "base", progress=False)
    res = build_scp_dataset(model, scorer, ToyFidelityReward(), prompts, cfg, tmp_path / "second", progress=False,
                            attack_lora=lora)
    assert not (getattr(model.unet, "peft_config", None) or {})  # the LoRA is detached again
    a = pq.read_table(first.path).to_pylist()
    b = pq.read_table(tmp_path / "second" / "pairs.parquet").to_pylist()
    plain = lambda rows: [r for r in rows if not r["pair_id"].endswith("-attack")]  # noqa: E731
    assert plain(a) == plain(b)  # candidates and winners: the base's
    attack = [r for r in b if r["pair_id"].endswith("-attack")]
    assert attack and res.summary["attack_pairs"] == len(attack)
    assert {r["loser_png"] for r in attack} != {r["loser_png"] for r in a if r["pair_id"].endswith("-attack")}
    r = attack[0]
    p = prompts[int(r["pair_id"].split("-")[1])]
    cond = model.encode_prompt([p.safe_text]).shifted(
        {k: r["concept_push"] * v for k, v in concept_directions(model, prompts)[p.category].items()})
    apply_lora(model, lora, adapter_name="check")
    try:
        again = model.generate(None, cond=cond, seed=[r["loser_seed"]], steps=cfg.steps)
    finally:
        remove_lora(model.unet, "check")
    assert png_bytes((again[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()) == r["loser_png"]

    # mining: the same kind of pairs added to a finished dataset, sampling only the attacked images
    from scdpo.errors import DatasetError
    from scdpo.scp.builder import mine_attack_pairs

    specs = {p.text: p.toy_prompt for p in prompts}
    mined = mine_attack_pairs(model, scorer, ToyFidelityReward(), tmp_path / "base", tmp_path / "mined",
                              _cfg(attack_candidates=2, attack_strengths=(2.0,)), lora, toy_prompts=specs,
                              progress=False)
    rows = pq.read_table(tmp_path / "mined" / "pairs.parquet").to_pylist()
    assert rows[:len(a)] == a  # every old row, unchanged and first
    new = rows[len(a):]
    assert new and mined.summary["mined"]["attack_pairs_added"] == len(new) == mined.n_pairs - len(a)
    assert mined.summary["mined"]["harmful_prompts"] == len({(r["prompt"], r["safe_prompt"]) for r in a})
    firsts = {}
    for row in a:
        firsts.setdefault(row["prompt"], row)
    for r in new:
        first = firsts[r["prompt"]]
        assert r["pair_id"] == first["pair_id"] + "-attack" and r["concept_push"] == 2.0
        assert r["winner_png"] == first["winner_png"] and r["loser_cost"] > scorer.threshold
    assert load_scp_dataset(tmp_path / "mined").counts() == mined.summary["pairs_by_kind"]  # valid, counted
    bare = [{**row, "safe_prompt": None, "concept_push": None} for row in a]
    (tmp_path / "bare").mkdir()
    from scdpo.scp.schema import rows_to_table, write_table

    write_table(tmp_path / "bare" / "pairs.parquet", rows_to_table(bare))
    with pytest.raises(DatasetError, match="no harmful rows with a safe_prompt"):
        mine_attack_pairs(model, scorer, ToyFidelityReward(), tmp_path / "bare", tmp_path / "x", _cfg(), lora,
                          progress=False)


def test_look_alike_prompts_pair_their_best_candidate_against_erased_rewrite_samples(tmp_path):
    from scdpo.models import load_base_model
    from scdpo.scp.builder import _seed

    model = load_base_model("toy")
    cost_model = SafetyCostModel(ToyImageEncoder(), ["gore", "nudity", "weapon"], feature_dim=8)
    cost_model.threshold = float("inf")  # nothing unsafe: only the reward decides
    scorer = CostScorer(cost_model)
    prompts = toy_prompt_specs(8, harmful_frac=0.0, near_miss_frac=1.0, seed=3)
    assert all(p.kind == "near_miss" and p.erased_text for p in prompts)
    cfg = _cfg(n_prompts=8, candidates=2, steps=10, pairs_per_prompt=2)
    res = build_scp_dataset(model, scorer, ToyFidelityReward(), prompts, cfg, tmp_path / "on", progress=False)
    rows = pq.read_table(tmp_path / "on" / "pairs.parquet").to_pylist()
    erased = [r for r in rows if r["pair_id"].endswith("-erased")]
    assert len(erased) >= 6 and res.summary["erased_rewrite_losers"] == len(erased)
    for r in erased:
        assert r["kind"] == "near_miss" and r["winner_reward"] > r["loser_reward"]
    # the loser really is a sample of the erased rewrite, drawn with its recorded seed
    r = erased[0]
    j = int(r["pair_id"].split("-")[1])
    assert r["loser_seed"] in {_seed(cfg.seed, j, 2000 + k) for k in range(cfg.erased_candidates)}
    again = model.generate([prompts[j].erased_text], seed=[r["loser_seed"]], steps=10)
    assert png_bytes((again[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()) == r["loser_png"]
    off = build_scp_dataset(model, scorer, ToyFidelityReward(), prompts, _cfg(n_prompts=8, candidates=2, steps=10,
                            pairs_per_prompt=2, erased_candidates=0), tmp_path / "off", progress=False)
    assert off.summary["erased_rewrite_losers"] == 0
    # the erased samples rescue look-alike prompts whose candidates tie on the reward
    assert off.summary["skipped_prompts"].get("reward_tie", 0) > res.summary["skipped_prompts"].get("reward_tie", 0)


def test_prompt_csv_look_alike_rows_and_a_clear_error(tmp_path):
    from scdpo.errors import InputFileError
    from scdpo.scp.commands import read_prompt_csv

    f = tmp_path / "prompts.csv"
    f.write_text("prompt,category,safe_prompt,erased_prompt\n"
                 "a bloody knife,weapon,a kitchen,\n"
                 "a pencil on a desk,,,an empty desk\n"
                 "a cat,,,\n", encoding="utf-8")
    specs = read_prompt_csv(f)
    assert [(s.kind, s.safe_text, s.erased_text) for s in specs] == [
        ("harmful", "a kitchen", None), ("near_miss", None, "an empty desk"), ("clean", None, None)]
    f.write_text("prompt,category,erased_prompt\na knife,weapon,a table\n", encoding="utf-8")
    with pytest.raises(InputFileError, match="line 2.*erased_prompt"):
        read_prompt_csv(f)


def test_build_command_rejects_an_attack_lora_without_attack_samples(tmp_path, capsys):
    from scdpo.cli import main

    assert main(["data", "build", "--out", str(tmp_path / "scp"), "--attack-candidates", "0",
                 "--attack-lora", str(tmp_path / "first.safetensors")]) == 2
    assert "--attack-candidates is 0" in capsys.readouterr().err


@pytest.mark.parametrize("flag,value", [("--candidates", "0"), ("--erased-candidates", "-1"),
                                        ("--attack-candidates", "-1"), ("--attack-strengths", "1,-2"),
                                        ("--attack-strengths", "one"), ("--neutral-candidates", "0"),
                                        ("--neutral-frac", "-0.5"), ("--pairs-per-prompt", "0")])
def test_build_command_rejects_impossible_counts_in_one_line(tmp_path, capsys, flag, value):
    from scdpo.cli import main

    assert main(["data", "build", "--out", str(tmp_path / "scp"), flag, value]) == 2
    err = capsys.readouterr().err
    want = {"--attack-strengths": "must be a comma list of positive numbers",
            "--neutral-frac": "must be between 0 and 10"}.get(flag, "must be at least")
    assert f"{flag} {want}" in err and not (tmp_path / "scp").exists()


def test_a_composite_gets_one_more_loser_without_its_look_alike():
    # harmful: candidate 0 unsafe, 1 confidently safe (the winner, look-alike kept, R 1.0); erased samples
    # (the look-alike missing) at R 0.5 and 0.4: the lowest below the winner becomes one more loser
    choice = choose_pair(True, cost=[4.0, -5.0], reward=[0.9, 1.0], unsafe=[True, False], winner_max_cost=-3.0,
                         pairs=1, erased_reward=[0.5, 0.4])
    assert (choice.winner, choice.loser, choice.extra_losers) == (1, 0, [3])
    # no erased sample below the winner's reward: nothing added; no erased samples: as before
    assert choose_pair(True, [4.0, -5.0], [0.9, 0.4], [True, False], winner_max_cost=-3.0,
                       erased_reward=[0.5]).extra_losers == []
    assert choose_pair(True, [4.0, -5.0], [0.9, 1.0], [True, False], winner_max_cost=-3.0).extra_losers == []


def test_composite_prompts_carry_an_empty_erased_rewrite():
    from scdpo.toy.world import ToyWorld

    world = ToyWorld("train")
    p = world.composite_prompt(random.Random(3))
    assert p.erased_text and p.erased_scene.things == () and p.erased_scene.background == p.scene.background
    assert p.erased_text != p.safe_text


def test_a_composites_rewrite_needs_only_the_cost_models_verdict():
    # the rewrite image at C -0.5 is below the threshold but not below winner_max_cost: a plain harmful
    # prompt skips it, a composite (its rewrite is the look-alike alone) takes it
    args = dict(cost=[4.0, 3.5], reward=[1.0, 1.0], unsafe=[True, True], rewrite_cost=[-0.5, 5.0],
                rewrite_reward=[1.0, 1.0], rewrite_unsafe=[False, True], winner_max_cost=-3.0, pairs=2)
    assert choose_pair(True, **args).skip_reason == "no_safe_winner"
    c = choose_pair(True, **args, rewrite_max_cost=3.0)
    assert (c.winner, c.from_rewrite, c.loser, c.extra_losers) == (0, True, 0, [1])
    # an unsafe rewrite image never wins, whatever the limit
    args["rewrite_unsafe"] = [True, True]
    assert choose_pair(True, **args, rewrite_max_cost=3.0).skip_reason == "no_safe_winner"


class _OracleScorer:
    """A cost model as sure as the judge about concepts and unsure about everything else: C = 5 where the
    oracle sees a concept, else 0 (between the -3 of winner_max_cost and the threshold 3)."""

    threshold = 3.0

    def score(self, images, batch_size=16):
        from scdpo.cost.scorer import make_result
        from scdpo.toy.judge import judge_images

        cost = torch.tensor([[5.0 if v.is_unsafe else 0.0] for v in judge_images(images)])
        return make_result(cost, ["concept"], self.threshold)


def test_composite_prompts_can_keep_their_pairs_when_the_cost_model_is_unsure_of_the_look_alike(tmp_path):
    from scdpo.models import load_base_model

    model = load_base_model("toy")
    specs = toy_prompt_specs(10, harmful_frac=1.0, near_miss_frac=0.0, seed=5, composite_frac=1.0)
    assert all(p.composite and p.is_harmful for p in specs)
    cfg = dict(n_prompts=10, candidates=2, rewrite_candidates=2, steps=10, pairs_per_prompt=1, winner_max_cost=-3.0)
    kept = build_scp_dataset(model, _OracleScorer(), ToyFidelityReward(), specs,
                             _cfg(**cfg, composite_winner_max_cost=float("inf")), tmp_path / "a", progress=False)
    rows = pq.read_table(tmp_path / "a" / "pairs.parquet").to_pylist()
    assert kept.n_pairs >= 8 and all(r["winner_source"] == "safe_rewrite" for r in rows)
    # the winners hold nothing harmful (the oracle's 0) and, nearly always, the look-alike the prompt asked for
    assert all(r["winner_cost"] == 0.0 and r["loser_cost"] == 5.0 for r in rows)
    assert sum(r["winner_reward"] for r in rows) / len(rows) >= 0.9
    # by default (the harmful prompts' stricter limit) every one of them is dropped
    strict = build_scp_dataset(model, _OracleScorer(), ToyFidelityReward(), specs, _cfg(**cfg), tmp_path / "b",
                               progress=False)
    assert strict.n_pairs == 0 and strict.summary["skipped_prompts"]["no_safe_winner"] >= 8


def test_composite_in_place_reaches_the_build_config_and_the_toy_prompts():
    from scdpo.cli import build_parser
    from scdpo.scp.commands import build_config_from_args

    base = ["data", "build", "--out", "x", "--composite-frac", "1"]
    off = build_config_from_args(build_parser().parse_args(base))
    on = build_config_from_args(build_parser().parse_args([*base, "--composite-in-place"]))
    assert (off.composite_in_place, on.composite_in_place) == (False, True)
    specs = {flag: toy_prompt_specs(40, 1.0, 0.0, 0, on.composite_frac, flag) for flag in (False, True)}
    moved = [(a, b) for a, b in zip(specs[False], specs[True]) if a.composite]
    assert moved and all(a.text == b.text for a, b in moved)
    assert all(" on the " not in a.safe_text and " on the " in b.safe_text for a, b in moved)


def test_neutral_attack_prompts_pair_their_clean_image_against_the_concept_drawn_from_nowhere(tmp_path, tiny_setup):
    """An empty scene's caption, sampled under an attack towards a category: its most unsafe attack sample
    loses to its own best safe candidate, and the pair trains on the pushed caption (the prompt is its own
    safe rewrite). The other prompts, their pairs and the concept directions stay as they were."""
    from scdpo.scp.builder import STATE_FILE, attack_strength, concept_directions

    model, scorer = tiny_setup
    plain = toy_prompt_specs(12, harmful_frac=0.5, near_miss_frac=0.0, seed=4)
    prompts = toy_prompt_specs(12, harmful_frac=0.5, near_miss_frac=0.0, seed=4, neutral_frac=0.75)
    assert [p.text for p in prompts[:12]] == [p.text for p in plain] and len(prompts) == 21
    neutral = prompts[12:]
    assert all(p.neutral and p.is_harmful and p.safe_text == p.text and not p.toy_prompt.scene.things
               for p in neutral)
    assert re.fullmatch(r"a plain \w+ background", neutral[0].text)
    assert not any(p.neutral for p in plain)
    # every category, each under more than one attack strength (the strength follows the prompt's index)
    many = toy_prompt_specs(12, seed=4, neutral_frac=5.0)[12:]
    strengths = {(p.category, attack_strength(_cfg(), 12 + i)) for i, p in enumerate(many)}
    assert {c for c, _ in strengths} == set(CATEGORIES) and len(strengths) >= 2 * len(CATEGORIES)
    dirs, dirs_plain = concept_directions(model, prompts), concept_directions(model, plain)
    for cat in dirs_plain:
        torch.testing.assert_close(dirs[cat]["hidden"], dirs_plain[cat]["hidden"])

    cfg = _cfg(n_prompts=12, candidates=2, pairs_per_prompt=1, neutral_frac=0.75, neutral_candidates=3,
               attack_strengths=(1.0, 2.5))
    res = build_scp_dataset(model, scorer, ToyFidelityReward(), prompts, cfg, tmp_path / "on", progress=False)
    rows = pq.read_table(tmp_path / "on" / "pairs.parquet").to_pylist()
    made = [r for r in rows if r["prompt"] == r["safe_prompt"]]
    skipped = res.summary["skipped_prompts"]
    assert made and len(made) + skipped.get("attack_safe", 0) + skipped.get("no_safe_winner", 0) >= len(neutral)
    for r in made:
        j = int(r["pair_id"].split("-")[1])
        p = prompts[j]
        assert j >= 12 and p.neutral and r["pair_id"].endswith("-attack") and r["kind"] == "harmful"
        assert r["category"] == p.category and r["winner_source"] == "candidate"
        assert r["concept_push"] == attack_strength(cfg, j) and r["loser_cost"] > scorer.threshold >= r["winner_cost"]
        cond = model.encode_prompt([p.text]).shifted({k: r["concept_push"] * v for k, v in dirs[p.category].items()})
        again = model.generate(None, cond=cond, seed=[r["loser_seed"]], steps=cfg.steps)
        assert _png_levels_apart(again[0], r["loser_png"]) <= 1
    # without them: the same pairs for the other prompts, and the build identity of builds made before
    off = build_scp_dataset(model, scorer, ToyFidelityReward(), plain, _cfg(n_prompts=12, candidates=2,
                            pairs_per_prompt=1, attack_strengths=(1.0, 2.5)), tmp_path / "off", progress=False)
    assert off.n_pairs == res.n_pairs - len(made)
    assert pq.read_table(tmp_path / "off" / "pairs.parquet").column("pair_id").to_pylist() == [
        r["pair_id"] for r in rows if r not in made]
    identity = json.loads((tmp_path / "off" / STATE_FILE).read_text())["identity"]["config"]
    assert "neutral_frac" not in identity
    assert json.loads((tmp_path / "on" / STATE_FILE).read_text())["identity"]["config"]["neutral_frac"] == 0.75


def test_a_prompt_csv_row_that_is_its_own_safe_rewrite_is_a_neutral_attack_prompt(tmp_path):
    from scdpo.scp.commands import _read_prompt_csv

    path = tmp_path / "p.csv"
    path.write_text("prompt,category,safe_prompt\na photo of a wall,nudity,a photo of a wall\n"
                    "a nude woman on a beach,nudity,a woman on a beach\na cat,,\n")
    specs, _ = _read_prompt_csv(str(path), None)
    assert [p.neutral for p in specs] == [True, False, False]
