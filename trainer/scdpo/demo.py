"""``scdpo demo``: the whole method on the shipped toy base, end to end, in one command.

Stages (each prints one progress line, and each is the documented CLI command, run in-process):

1. ``train-cost``      safety cost model on base-model generations labelled by the oracle judge
2. ``build-dataset``   safety-constrained preference (SCP) pairs scored by that cost model
3. ``train``           the SC-DPO safety LoRA, round 1 (β, λ, γ per DESIGN.md §2, plus concept
                       augmentation): ``sc-dpo-one-round``
4. ``mine-attacks``    its failures under Ring-A-Bell-style attacked embeddings, as attack pairs
5. ``train``           round 2: that LoRA continued on the pairs plus the attack pairs: ``sc-dpo``
6. baselines           Diffusion-DPO (λ=0, γ=0) on the same pairs; SafetyDPO (one expert per
                       category, merged by activation and by averaging); the ablations
                       (no DFM / no safety margin / no clean pairs)
7. ``eval``            every method on the held-out and adversarial suites → report.json/.html

Outputs under ``--out``: ``cost_model.safetensors``, ``scp/``, ``scp_mined/``, ``loras/*.safetensors`` (+ resolved
configs and TensorBoard logs), ``report.json``, ``report.html``, ``tradeoff.png``, grids.
Re-running resumes: finished stages whose outputs exist are skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import ScdpoError
from .fileio import ensure_writable_dir


@dataclass
class DemoPlan:
    """Sizes of each stage; ``quick`` is the small variant the tests run."""

    cost_train: int = 1200
    cost_calib: int = 400
    cost_test: int = 400  # held-out images only measure the cost model; the report needs no more
    scp_prompts: int = 720
    scp_near_miss_frac: float = 0.15  # look-alike clean prompts (0.3 cost 11 points of clean fidelity)
    scp_candidates: int = 4
    scp_pairs_per_prompt: int = 3
    dpo_steps: int = 450  # with erased-rewrite pairs, 300 steps left seed-dependent safety (direct 5-20 %)
    dpo_lr: float = 1e-3  # the toy UNet is small and the run short; SD runs use scdpo train's default
    expert_steps: int = 100  # each SafetyDPO expert sees one category's pairs (about a third)
    concept_augment: float = 0.5  # SC-DPO rows: share of harmful pairs under a pushed embedding
    concept_scale: float = 4.0  # (two seeds, n=20, 600 steps: adversarial 27/32 -> 18/27 % unsafe)
    attack_candidates: int = 2  # round 2: attacked samples per harmful prompt drawn from the round-1 LoRA
    round2_steps: int = 150  # round 2 continues the round-1 LoRA on the data plus those attack pairs
    eval_n: int = 10
    gen_steps: int = 10  # DDIM steps for every generation (the toy base is as good at 10 as at 20)
    threads: int = 0  # torch threads per stage (0 = all cores)
    ablations: bool = True
    extra_train_args: list = field(default_factory=list)

    @classmethod
    def quick(cls) -> "DemoPlan":
        return cls(cost_train=480, cost_calib=200, cost_test=240, scp_prompts=160, scp_candidates=3,
                   dpo_steps=80, expert_steps=20, eval_n=3, gen_steps=10, ablations=True, round2_steps=30)


class StageRunner:
    def __init__(self, total: int, verbose: bool = False):
        self.total = total
        self.index = 0
        self.verbose = verbose
        self.timings: dict[str, float] = {}
        self.skipped: set[str] = set()

    def run(self, name: str, fn: Callable[[], object], skip: bool = False) -> object:
        self.index += 1
        prefix = f"[{self.index}/{self.total}] {name}"
        if skip:
            print(f"{prefix}: already done, skipped", flush=True)
            self.timings[name] = 0.0
            self.skipped.add(name)
            return None
        print(f"{prefix} ...", flush=True)
        t0 = time.time()
        result = fn()
        self.timings[name] = round(time.time() - t0, 1)
        print(f"{prefix}: done in {self.timings[name]:.0f}s", flush=True)
        return result


def _cli(argv: list[str], verbose: bool = False) -> str:
    """Run an ``scdpo`` sub-command in-process; raise on failure; return what it printed."""
    from .cli import build_parser

    parser = build_parser()
    args = parser.parse_args(argv)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf) if not verbose else contextlib.nullcontext():
        rc = args.func(args)
    out = buf.getvalue()
    if rc:
        raise ScdpoError(f"`scdpo {' '.join(argv)}` failed (exit {rc}):\n{out}")
    return out


def run_demo(out: str | Path, plan: DemoPlan, dfm: bool = True, safety_margin: bool = True,
             clean_pairs: bool = True, verbose: bool = False) -> dict:
    out = ensure_writable_dir(out)
    cost = out / "cost_model.safetensors"
    scp = out / "scp"
    loras = out / "loras"
    cache = str(out / "cache")
    steps = str(plan.gen_steps)
    categories = _categories()
    augment = ["--concept-augment", f"{plan.concept_augment:g}", "--concept-scale", f"{plan.concept_scale:g}"]
    ablations = {"sc-dpo-no-dfm": [*augment, "--gamma", "0"], "sc-dpo-no-margin": [*augment, "--lam", "0"],
                 "sc-dpo-no-clean-pairs": [*augment, "--no-clean-pairs"]} if plan.ablations else {}
    # cost model, SCP data, sc-dpo round 1, mining, sc-dpo round 2, diffusion-dpo, ablations, one expert per
    # category, 2 merges, eval
    stages = 6 + len(ablations) + len(categories) + 3
    runner = StageRunner(stages, verbose)
    quiet = [] if verbose else ["--quiet"]

    runner.run("train-cost: safety cost model", lambda: _cli([
        "train-cost", "--out", str(cost), "--n-train", str(plan.cost_train), "--n-calib", str(plan.cost_calib),
        "--n-test", str(plan.cost_test), "--steps", steps, "--cache-dir", cache, "--threads", str(plan.threads)],
        verbose), skip=cost.exists())
    runner.run("build-dataset: SCP preference pairs", lambda: _cli([
        "build-dataset", "--out", str(scp), "--cost-model", str(cost), "--n-prompts", str(plan.scp_prompts),
        "--candidates", str(plan.scp_candidates), "--pairs-per-prompt", str(plan.scp_pairs_per_prompt),
        "--near-miss-frac", f"{plan.scp_near_miss_frac:g}",
        "--steps", steps, "--threads", str(plan.threads)], verbose),
        skip=(scp / "pairs.parquet").exists() and (scp / "dataset.json").exists())

    def train(name: str, *extra: str, steps_: int = plan.dpo_steps, data: Path = scp) -> None:
        target = loras / f"{name}.safetensors"
        runner.run(f"train: {name}", lambda: _cli([
            "train", "--data", str(data), "--out", str(loras), "--name", name, "--steps", str(steps_),
            "--cost-model", str(cost), "--lr", f"{plan.dpo_lr:g}", *plan.extra_train_args, *extra, *quiet], verbose),
            skip=target.exists())

    main_flags = list(augment)
    if not dfm:
        main_flags += ["--gamma", "0"]
    if not safety_margin:
        main_flags += ["--lam", "0"]
    if not clean_pairs:
        main_flags += ["--no-clean-pairs"]
    # Two rounds: the one-round LoRA's own failures under attacked embeddings become losers, and
    # round 2 continues that LoRA on the data plus those pairs (see scdpo mine-attacks).
    one_round = loras / "sc-dpo-one-round.safetensors"
    mined = out / "scp_mined"
    train("sc-dpo-one-round", *main_flags)
    runner.run("mine-attacks: attack pairs from the one-round LoRA", lambda: _cli([
        "mine-attacks", "--data", str(scp), "--lora", str(one_round), "--out", str(mined), "--cost-model", str(cost),
        "--attack-candidates", str(plan.attack_candidates), "--steps", steps, "--threads", str(plan.threads)],
        verbose), skip=(mined / "pairs.parquet").exists() and (mined / "dataset.json").exists())
    train("sc-dpo", *main_flags, "--init-lora", str(one_round), steps_=plan.round2_steps, data=mined)
    train("diffusion-dpo", "--lam", "0", "--gamma", "0")
    for name, flags in ablations.items():
        train(name, *flags)
    experts = []
    for cat in categories:
        name = f"safetydpo-expert-{cat}"
        train(name, "--lam", "0", "--gamma", "0", "--categories", cat, "--no-clean-pairs",
              steps_=plan.expert_steps)
        experts.append(str(loras / f"{name}.safetensors"))
    for method in ("activation", "average"):
        target = loras / f"safetydpo-{method}.safetensors"
        runner.run(f"merge SafetyDPO experts ({method})", lambda m=method, t=target: _cli(
            ["merge", *experts, "--method", m, "--out", str(t), "--base", "toy", "--data", str(scp)], verbose),
            skip=target.exists())

    lora_args = [f"sc-dpo={loras / 'sc-dpo.safetensors'}", f"sc-dpo-one-round={one_round}",
                 f"diffusion-dpo={loras / 'diffusion-dpo.safetensors'}",
                 f"safetydpo={loras / 'safetydpo-activation.safetensors'}",
                 f"safetydpo-average={loras / 'safetydpo-average.safetensors'}"]
    lora_args += [f"{n}={loras / (n + '.safetensors')}" for n in ablations]
    eval_argv = ["eval", "--out", str(out), "--n", str(plan.eval_n), "--steps", steps,
                 "--method", "base,negative-prompt,safe-guidance,blacklist"]
    for spec in lora_args:
        eval_argv += ["--lora", spec]
    report_path = out / "report.json"
    inputs = [Path(spec.split("=", 1)[1]) for spec in lora_args]
    fresh = report_path.exists() and all(p.exists() and p.stat().st_mtime <= report_path.stat().st_mtime
                                         for p in inputs)
    runner.run("eval: all methods on held-out + adversarial suites", lambda: _cli(eval_argv, verbose), skip=fresh)
    report = json.loads(report_path.read_text())
    earlier = report.get("timings", {})  # a re-run keeps the seconds of the stages it skipped
    report["timings"] = {k: (earlier.get(k, v) if k in runner.skipped else v) for k, v in runner.timings.items()}
    report["demo"] = {"plan": plan.__dict__, "dfm": dfm, "safety_margin": safety_margin, "clean_pairs": clean_pairs}
    from .fileio import write_json_atomic

    write_json_atomic(report_path, report)
    return report


def _categories() -> list[str]:
    from .toy.world import CATEGORIES

    return list(CATEGORIES)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole method on the toy world: cost model, SCP data, SC-DPO LoRA, baselines, report",
        description="Train the cost model, build the SCP preference data, train the SC-DPO safety LoRA in two "
        "rounds (the second on its own failures under attacked embeddings), run the baselines (Diffusion-DPO, "
        "SafetyDPO, training-free) and the ablations, evaluate everything and write report.json / report.html "
        "to --out. About 12-15 minutes on a 2-core CPU; --quick is a smaller run. Re-running with the same "
        "--out skips finished stages.",
    )
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--quick", action="store_true", help="a much smaller run (used by the tests)")
    p.add_argument("--no-dfm", action="store_true", help="main SC-DPO run without dynamic focusing (γ=0)")
    p.add_argument("--no-safety-margin", action="store_true", help="main SC-DPO run without the safety margin (λ=0)")
    p.add_argument("--no-clean-pairs", action="store_true", help="main SC-DPO run on harmful pairs only")
    p.add_argument("--verbose", action="store_true", help="show every stage's own output")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from .evaluation.commands import format_table

    plan = DemoPlan.quick() if args.quick else DemoPlan()
    t0 = time.time()
    report = run_demo(args.out, plan, dfm=not args.no_dfm, safety_margin=not args.no_safety_margin,
                      clean_pairs=not args.no_clean_pairs, verbose=args.verbose)
    print(format_table(report))
    print(f"demo finished in {time.time() - t0:.0f}s; report: {Path(args.out) / 'report.html'}")
    return 0
