"""``scdpo data build|mine-attacks|import|validate``."""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

from ..cost.commands import add_threads_arg, apply_threads
from ..errors import InputFileError, ScdpoError
from ..fileio import write_json_atomic

PROMPT_SPLITS = ("train", "validation", "test")  # the `split` column of a prompt CSV


def register(sub: argparse._SubParsersAction) -> None:
    """``scdpo data build|mine-attacks|import|validate``."""
    b = sub.add_parser(
        "build", help="build a safety-constrained preference (SCP) dataset from base-model samples",
        description="Sample N candidates per prompt from the base model, score them with the cost model and a "
        "preference reward, and pair them: harmful instruction -> safe winner (or the prompt's safe rewrite), "
        "unsafe loser; clean instruction -> preference by reward, an unsafe candidate never wins. Resumable: "
        "re-run the same command after an interruption. Default: the toy world (train-split surface forms only).")
    b.add_argument("--out", default="out/scp_toy", help="output folder (default out/scp_toy)")
    b.add_argument("--base", default=None, help="base model (default: the shipped toy base)")
    b.add_argument("--cost-model", default="toy", help="cost model .safetensors, `toy` (default), `nudenet`, "
                   "`clip-zero-shot:CLIP` or `nudenet+clip-zero-shot:CLIP` (CLIP: a full CLIP folder or file)")
    b.add_argument("--backbone", default=None, help="CLIP vision file/folder for a CLIP-based cost model")
    b.add_argument("--reward", default=None,
                   help="preference reward: toy fidelity (default), clip:PATH (CLIP score with a full CLIP folder "
                        "or open_clip file) or package.module:function for your own")
    b.add_argument("--prompts", default=None,
                   help="CSV with columns prompt, category (empty = clean), optional safe_prompt (harmful "
                        "rows: the prompt made safe), erased_prompt (clean rows that resemble a category: the "
                        "prompt without the look-alike, sampled as losers) and split; or `scdpo` for the shipped "
                        "set of harmful, look-alike and clean prompts (docs/prompts.md) (default: toy prompts)")
    b.add_argument("--split", default=None, choices=PROMPT_SPLITS + ("all",),
                   help="with --prompts: keep the rows of this split when the CSV has a `split` column (default "
                        "train; all = every row); a CSV without one is used whole")
    b.add_argument("--n-prompts", type=int, default=800, help="toy prompts (default 800)")
    b.add_argument("--harmful-frac", type=float, default=0.5, help="share of harmful toy instructions (default 0.5)")
    b.add_argument("--near-miss-frac", type=float, default=0.15, help="share of near-miss clean toy instructions")
    b.add_argument("--composite-frac", type=float, default=0.2,
                   help="share of harmful toy instructions that also hold a look-alike, whose safe rewrite keeps "
                        "it (default 0.2)")
    b.add_argument("--candidates", type=int, default=4, help="samples per prompt (default 4)")
    b.add_argument("--pairs-per-prompt", type=int, default=3,
                   help="pairs per prompt: the winner against up to this many losers (default 3; 1 = docs/method.md's "
                        "one pair per prompt)")
    b.add_argument("--winner-max-cost", type=float, default=-3.0,
                   help="a harmful pair's winner must score C <= min(threshold, this): confidently safe "
                        "(default -3, P(unsafe) about 5%%); otherwise the prompt's safe rewrite is sampled")
    b.add_argument("--composite-winner-max-cost", type=float, default=None,
                   help="a composite prompt's safe-rewrite winner (its look-alike alone) must score C <= "
                        "min(threshold, this) (default: --winner-max-cost's value; inf: the cost model's verdict "
                        "alone, which keeps the composites whose look-alike the cost model is unsure of)")
    b.add_argument("--erased-candidates", type=int, default=2,
                   help="samples of each look-alike prompt's erased rewrite (the prompt without the look-alike), "
                        "paired as losers against its best candidate so the LoRA learns to keep look-alikes "
                        "(default 2; 0 = off)")
    b.add_argument("--composite-in-place", action="store_true",
                   help="toy prompts: a composite prompt's safe rewrite names its look-alike's side (\"a pencil on "
                        "the left\"), where the composite draws it, instead of the look-alike alone in the centre")
    b.add_argument("--composite-erased", action="store_true",
                   help="also sample each composite prompt's safe rewrite without its look-alike (an empty scene) "
                        "and pair it as one more loser against the prompt's winner, so the LoRA keeps look-alikes "
                        "while it removes the harmful thing beside them")
    b.add_argument("--attack-candidates", type=int, default=0,
                   help="samples of each harmful prompt's safe rewrite pushed along its concept direction "
                        "(a Ring-A-Bell-style attack); the most unsafe one is the loser of one more pair, which "
                        "the trainer conditions on the same pushed embedding (default 0 = off; see "
                        "docs/training.md#build-it-scdpo-data-build)")
    b.add_argument("--neutral-frac", type=float, default=0.0,
                   help="toy prompts: add this share of --n-prompts neutral attack prompts (an empty scene's caption, "
                        "a drawn category each), each sampled --neutral-candidates times under an attack towards "
                        "its category; the most unsafe sample is the loser against the prompt's own clean image. "
                        "A --prompts CSV marks them as harmful rows whose safe_prompt is the prompt itself "
                        "(default 0 = none)")
    b.add_argument("--neutral-candidates", type=int, default=4,
                   help="attack samples per neutral attack prompt (default 4)")
    b.add_argument("--attack-strengths", default="1,2,3",
                   help="comma list of push strengths η, one drawn per prompt (default 1,2,3)")
    b.add_argument("--attack-lora", default=None,
                   help="draw the attack samples from the base plus this safety LoRA (one trained on a first "
                        "dataset), so the attack pairs show that LoRA's own failures: a second training round "
                        "on the new dataset fixes them")
    b.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    b.add_argument("--guidance-scale", type=float, default=None)
    b.add_argument("--batch-size", type=int, default=128, help="images per generation batch (default 128)")
    b.add_argument("--chunk-prompts", type=int, default=64,
                   help="prompts per resumable part (default 64); smaller parts share out more evenly over --shard "
                        "processes")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--device", default="auto")
    add_threads_arg(b)
    b.add_argument("--overwrite", action="store_true", help="replace an existing build in --out")
    b.add_argument("--shard", default=None, metavar="K/N",
                   help="build only chunk K of every N (K from 0) into --out, e.g. one process per GPU with 0/2 and "
                        "1/2; then the same command without --shard takes the finished shards over and writes "
                        "the dataset")
    b.add_argument("--json", action="store_true", help="print the summary as one JSON line at the end")
    b.set_defaults(func=_build)

    m = sub.add_parser(
        "mine-attacks", help="second-round data: add attack pairs drawn from a first safety LoRA to a dataset",
        description="For each harmful prompt of --data that has a safe_prompt, sample --attack-candidates images "
        "from the base plus --lora under a Ring-A-Bell-style attacked embedding (the safe rewrite pushed along the "
        "category's concept direction); the most unsafe one, if unsafe, is the loser of a new pair with the "
        "prompt's winner. Writes the old rows plus these to --out. Then continue that LoRA on it: "
        "scdpo lora train --data OUT --init-lora LORA.")
    m.add_argument("--data", required=True, help="SCP dataset folder (with safe_prompt on harmful rows)")
    m.add_argument("--lora", required=True, help="the first-round safety LoRA whose failures to mine")
    m.add_argument("--out", required=True, help="output folder for the extended dataset")
    m.add_argument("--base", default=None, help="base model (default: the shipped toy base)")
    m.add_argument("--cost-model", default="toy", help="cost model .safetensors, `toy` (default), `nudenet`, "
                   "`clip-zero-shot:CLIP` or `nudenet+clip-zero-shot:CLIP` (CLIP: a full CLIP folder or file)")
    m.add_argument("--backbone", default=None, help="CLIP vision file/folder for a CLIP-based cost model")
    m.add_argument("--reward", default=None, help="preference reward, as for `scdpo data build` (records R of losers)")
    m.add_argument("--attack-candidates", type=int, default=2, help="samples per harmful prompt (default 2)")
    m.add_argument("--attack-strengths", default="1,2,3", help="push strengths η, one drawn per prompt (default 1,2,3)")
    m.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    m.add_argument("--guidance-scale", type=float, default=None)
    m.add_argument("--batch-size", type=int, default=128, help="images per generation batch (default 128)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--device", default="auto")
    add_threads_arg(m)
    m.set_defaults(func=_mine)

    i = sub.add_parser("import", help="import Pick-a-Pic or CoProV2 pairs into the SCP format",
                       description="Convert an existing preference dataset (Pick-a-Pic parquet layout, CoProV2 "
                       "CSV layout) into an SCP dataset folder, optionally scoring images with a cost model.")
    i.add_argument("format", choices=["pickapic", "coprov2"])
    i.add_argument("source", help="Pick-a-Pic .parquet shard or folder; CoProV2 .csv")
    i.add_argument("--out", required=True, help="output folder")
    i.add_argument("--safe-dir", default=None, help="CoProV2: folder with the safe images (same file names)")
    i.add_argument("--cost-model", default=None, help="score both images with this cost model (or `nudenet`)")
    i.add_argument("--backbone", default=None)
    i.add_argument("--resize", type=int, default=None, help="centre-crop and resize images to this square size")
    i.add_argument("--limit", type=int, default=None, help="import at most this many pairs")
    i.set_defaults(func=_import)

    v = sub.add_parser("validate", help="check every row of an SCP dataset",
                       description="Decode every image and check every field of an SCP dataset; report counts.")
    v.add_argument("path", help="dataset folder or pairs.parquet")
    v.add_argument("--skip-bad", action="store_true", help="count broken rows instead of failing on the first")
    v.add_argument("--size", type=int, default=None, help="expected square image size")
    v.set_defaults(func=_validate)


def resolve_prompt_file(name: str | Path) -> Path:
    """A prompt CSV path, or the shipped set for a built-in name (``scdpo``; ``./scdpo`` is a file)."""
    from .prompt_set import BUILTIN_PROMPT_SETS

    return BUILTIN_PROMPT_SETS.get(str(name), Path(name))


def read_prompt_csv(path: str | Path, split: str | None = None):
    """User prompts: CSV ``prompt, category[, safe_prompt][, erased_prompt][, split]`` → list of PromptSpec.

    ``path``: a file, or ``scdpo`` for the shipped set. ``split``: when the CSV has a ``split`` column,
    keep the rows of this split (``train`` | ``validation`` | ``test``; ``all``: every row; None:
    ``train``). A CSV without the column is used whole; asking it for one split is an error, so a held-out
    evaluation cannot silently run on training prompts."""
    return _read_prompt_csv(path, split)[0]


def read_csv_rows(path: Path) -> tuple[list[dict], list[str]]:
    """The rows and column names of a UTF-8 CSV (a BOM allowed); one clear error if it is not one."""
    try:
        reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig")))
        records = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputFileError(f"{path} is not a readable UTF-8 CSV ({exc})") from None
    return records, list(reader.fieldnames or [])


def _read_prompt_csv(path: str | Path, split: str | None) -> tuple[list, str]:
    """(prompt specs, a name for the source: the file name, with the split when one was applied)."""
    from .builder import PromptSpec
    from .prompt_set import BUILTIN_PROMPT_SETS

    path = resolve_prompt_file(path)
    if not path.is_file():
        raise InputFileError(f"prompt CSV not found: {path} (built-in prompt sets: {', '.join(BUILTIN_PROMPT_SETS)})")
    records, columns = read_csv_rows(path)
    if "prompt" not in columns:
        raise InputFileError(f"{path} needs a header with a `prompt` column (and `category`, optional `safe_prompt`)")
    split_column = "split" in columns
    if split is not None and split not in (*PROMPT_SPLITS, "all"):
        raise ScdpoError(f"split must be one of {', '.join(PROMPT_SPLITS)} or all (got {split!r})")
    if not split_column and split not in (None, "all"):
        raise InputFileError(f"{path} has no `split` column, so it has no {split} rows: leave --split out (or "
                             "pass all) to use every row, or add the column")
    keep = (split or "train") if split_column else "all"
    out = []
    for line, rec in enumerate(records, start=2):
        text = (rec.get("prompt") or "").strip()
        if not text:
            continue
        cat = (rec.get("category") or "").strip() or None
        erased = (rec.get("erased_prompt") or "").strip() or None
        if cat and erased:
            raise InputFileError(f"{path} line {line}: erased_prompt belongs to clean look-alike prompts, but this "
                                 f"row has category {cat!r}; clear one of the two (a harmful row takes safe_prompt)")
        row_split = (rec.get("split") or "").strip().lower()
        if split_column and row_split not in PROMPT_SPLITS:
            raise InputFileError(f"{path} line {line}: split is {row_split or 'empty'!r}; write one of "
                                 f"{', '.join(PROMPT_SPLITS)}")
        if keep != "all" and row_split != keep:
            continue
        kind = "harmful" if cat else ("near_miss" if erased else "clean")
        # a harmful row that is its own safe rewrite is a neutral attack prompt (PromptSpec.neutral)
        out.append(PromptSpec(text, cat is not None, cat, kind, (rec.get("safe_prompt") or "").strip() or None,
                              erased, composite=bool(cat and (rec.get("resembles") or "").strip())))
    if not out:
        raise InputFileError(f"{path} contains no prompts" + (f" of split {keep}" if keep != "all" else ""))
    return out, path.name + (f" (split {keep})" if split_column else "")


def audit_toy_dataset(path: str | Path) -> dict:
    """Oracle-judge audit of a toy SCP set: unsafe winners of harmful pairs, clean reward order."""
    import torch

    from ..toy.judge import judge_images
    from .dataset import load_scp_dataset

    ds = load_scp_dataset(path)
    harmful = [ds[i] for i in range(len(ds)) if ds.rows[i]["is_harmful"]]
    clean = [ds.rows[i] for i in range(len(ds)) if not ds.rows[i]["is_harmful"]]
    out = {"n_harmful_pairs": len(harmful), "n_clean_pairs": len(clean)}
    if harmful:
        w = judge_images(torch.stack([h["winner"] for h in harmful]))
        lo = judge_images(torch.stack([h["loser"] for h in harmful]))
        out["harmful_winner_unsafe_rate"] = sum(v.is_unsafe for v in w) / len(w)
        out["harmful_loser_unsafe_rate"] = sum(v.is_unsafe for v in lo) / len(lo)
    if clean:
        out["clean_winner_reward_higher_rate"] = sum(r["winner_reward"] > r["loser_reward"] for r in clean) / len(clean)
    return out


def _attack_strengths(text: str) -> tuple:
    try:
        strengths = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        strengths = ()
    if not strengths or not all(0 < x < float("inf") for x in strengths):
        raise ScdpoError(f"--attack-strengths must be a comma list of positive numbers such as 1,2,3 (got {text!r})")
    return strengths


def _load_attack_lora(path: str, model):
    from ..lora import check_compatible, load_lora

    lora = load_lora(path)
    check_compatible(model.unet, lora, model.base_model_version)
    return lora


def _mine(args) -> int:
    from ..cost.scorer import load_cost_model
    from ..models import load_base_model
    from .builder import BuildConfig, mine_attack_pairs, toy_prompt_specs
    from .dataset import resolve_pairs_file
    from .rewards import ToyFidelityReward, make_reward

    apply_threads(args.threads)
    if args.attack_candidates < 1:
        raise ScdpoError(f"--attack-candidates must be at least 1 (got {args.attack_candidates})")
    cfg = BuildConfig(steps=args.steps, guidance_scale=args.guidance_scale, batch_size=args.batch_size,
                      attack_candidates=args.attack_candidates, attack_strengths=_attack_strengths(args.attack_strengths),
                      seed=args.seed)
    reward = make_reward(args.reward, device=args.device)
    toy_prompts = None
    if isinstance(reward, ToyFidelityReward):  # the toy reward scores against the toy prompts the data came from
        summary_file = resolve_pairs_file(args.data).parent / "dataset.json"
        try:
            built = json.loads(summary_file.read_text(encoding="utf-8"))["config"]
            specs = toy_prompt_specs(built["n_prompts"], built["harmful_frac"], built["near_miss_frac"], built["seed"],
                                     built.get("composite_frac", 0.0), built.get("composite_in_place", False),
                                     built.get("neutral_frac", 0.0))
        except (OSError, ValueError, KeyError, TypeError):
            raise ScdpoError(f"{args.data} was not built from toy prompts by scdpo data build (its dataset.json "
                             "has no build config), so the toy reward cannot score it; pass --reward "
                             "package.module:function") from None
        toy_prompts = {p.text: p.toy_prompt for p in specs}
    scorer = load_cost_model(args.cost_model, backbone=args.backbone, device=args.device)
    model = load_base_model(args.base, device=args.device)
    lora = _load_attack_lora(args.lora, model)
    result = mine_attack_pairs(model, scorer, reward, args.data, args.out, cfg, lora, toy_prompts=toy_prompts)
    mined = result.summary["mined"]
    print(f"wrote {result.n_pairs} pairs to {result.path} ({mined['attack_pairs_added']} attack pairs added from "
          f"{mined['harmful_prompts']} harmful prompts in {mined['seconds']:.0f}s)")
    return 0


def build_dataset(out: str | Path, config, *, prompts_csv: str | None = None, cost_model: str = "toy",
                  backbone: str | None = None, reward: str | None = None, base: str | None = None,
                  device: str = "auto", attack_lora: str | None = None, overwrite: bool = False,
                  prompt_split: str | None = None, shard: tuple[int, int] | None = None):
    """Build (or resume) an SCP dataset in ``out`` with ``config`` (a ``BuildConfig``): toy prompts unless
    ``prompts_csv`` is given (a file or ``scdpo``; ``prompt_split`` as :func:`read_prompt_csv`'s ``split``).
    Returns the ``BuildResult``; a toy build's summary gains the oracle audit."""
    from ..cost.scorer import load_cost_model
    from ..models import load_base_model
    from .builder import build_scp_dataset, toy_prompt_specs
    from .rewards import make_reward

    for flag, value, least in (("--candidates", config.candidates, 1),
                               ("--pairs-per-prompt", config.pairs_per_prompt, 1),
                               ("--erased-candidates", config.erased_candidates, 0),
                               ("--n-prompts", config.n_prompts, 1), ("--chunk-prompts", config.chunk_prompts, 1),
                               ("--attack-candidates", config.attack_candidates, 0),
                               ("--neutral-candidates", config.neutral_candidates, 1)):
        if value < least:
            raise ScdpoError(f"{flag} must be at least {least} (got {value})")
    if not 0.0 <= config.neutral_frac <= 10.0:
        raise ScdpoError(f"--neutral-frac must be between 0 and 10 (got {config.neutral_frac})")
    toy = prompts_csv is None
    if toy and prompt_split is not None:
        raise ScdpoError("--split selects rows of a --prompts CSV; the toy prompts are always the train split")
    if toy:
        prompts = toy_prompt_specs(config.n_prompts, config.harmful_frac, config.near_miss_frac, config.seed,
                                   config.composite_frac, config.composite_in_place, config.neutral_frac)
    else:
        prompts, prompt_source = _read_prompt_csv(prompts_csv, prompt_split)
    preference = make_reward(reward, device=device)
    scorer = load_cost_model(cost_model, backbone=backbone, device=device)
    model = load_base_model(base, device=device)
    attacker = None
    if attack_lora:
        if config.attack_candidates <= 0:
            raise ScdpoError("--attack-lora draws the attack samples, but --attack-candidates is 0: set it to 1 or more")
        attacker = _load_attack_lora(attack_lora, model)
    describe = {"base_model": getattr(model, "model_id", "?"), "base_model_version": model.base_model_version,
                "cost_model": str(cost_model), "cost_threshold": scorer.threshold, "reward": preference.name,
                "prompt_source": "toy ToyWorld('train') surface forms" if toy else prompt_source}
    if attacker is not None:
        from ..manifest import sha256_of

        describe["attack_lora"] = {"file": str(attack_lora), "sha256": sha256_of(attack_lora)}
    result = build_scp_dataset(model, scorer, preference, prompts, config, out, describe=describe,
                               overwrite=overwrite, attack_lora=attacker, shard=shard)
    if toy and shard is None and "oracle_audit" not in result.summary:
        result.summary["oracle_audit"] = audit_toy_dataset(out)
        write_json_atomic(Path(out) / "dataset.json", result.summary)
    return result


def build_config_from_args(args):
    """The ``BuildConfig`` that ``scdpo data build`` arguments ask for."""
    from .builder import BuildConfig

    return BuildConfig(n_prompts=args.n_prompts, candidates=args.candidates, harmful_frac=args.harmful_frac,
                       near_miss_frac=args.near_miss_frac, composite_frac=args.composite_frac, steps=args.steps,
                       guidance_scale=args.guidance_scale,
                       batch_size=args.batch_size, chunk_prompts=args.chunk_prompts, seed=args.seed,
                       source="toy" if args.prompts is None else "generated",
                       winner_max_cost=args.winner_max_cost, pairs_per_prompt=args.pairs_per_prompt,
                       composite_winner_max_cost=args.composite_winner_max_cost,
                       erased_candidates=args.erased_candidates, composite_erased=args.composite_erased,
                       composite_in_place=args.composite_in_place,
                       attack_candidates=args.attack_candidates,
                       attack_strengths=_attack_strengths(args.attack_strengths),
                       neutral_frac=args.neutral_frac, neutral_candidates=args.neutral_candidates)


def _build(args) -> int:
    apply_threads(args.threads)
    cfg = build_config_from_args(args)
    result = build_dataset(args.out, cfg, prompts_csv=args.prompts, cost_model=args.cost_model,
                           backbone=args.backbone, reward=args.reward, base=args.base, device=args.device,
                           attack_lora=args.attack_lora, overwrite=args.overwrite, prompt_split=args.split,
                           shard=_shard(args.shard))
    summary = result.summary
    if args.shard:
        print(f"built shard {args.shard}: {summary['chunks']} chunks, {summary['pairs']} pairs in {args.out}; run the "
              "same command without --shard once every shard is done")
        return 0
    print(f"wrote {result.n_pairs} pairs to {result.path}  (by kind: {summary.get('pairs_by_kind')}; "
          f"skipped prompts: {summary.get('skipped_prompts')})")
    if "oracle_audit" in summary:
        a = summary["oracle_audit"]
        print(f"oracle audit: harmful winners unsafe {a.get('harmful_winner_unsafe_rate', 0):.2%}, "
              f"clean winners with higher reward {a.get('clean_winner_reward_higher_rate', 0):.2%}")
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "config"}))
    return 0


def _shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    k, sep, n = text.partition("/")
    if not (sep and k.strip().isdigit() and n.strip().isdigit() and int(k) < int(n)):
        raise ScdpoError(f"--shard {text!r}: write K/N with 0 <= K < N, e.g. 0/2 and 1/2")
    return int(k), int(n)


def _import(args) -> int:
    from .importers import import_coprov2, import_pickapic

    scorer = None
    if args.cost_model:
        from ..cost.scorer import load_cost_model

        scorer = load_cost_model(args.cost_model, backbone=args.backbone)
    if args.format == "pickapic":
        summary = import_pickapic(args.source, args.out, scorer=scorer, resize=args.resize, limit=args.limit)
    else:
        summary = import_coprov2(args.source, args.out, safe_dir=args.safe_dir, scorer=scorer, resize=args.resize,
                                 limit=args.limit)
    print(f"imported {summary['n_pairs']} pairs into {args.out}: " +
          ", ".join(f"{k} {v}" for k, v in summary.items() if k.endswith(("_dropped", "_skipped"))))
    return 0


def _validate(args) -> int:
    from .dataset import load_scp_dataset

    ds = load_scp_dataset(args.path, skip_bad=args.skip_bad, expected_size=args.size)
    print(f"{ds.path}: {len(ds)} valid pairs {ds.counts()}; {ds.skipped} broken rows skipped"
          + (f" {ds.skip_reasons}" if ds.skip_reasons else ""))
    return 0
