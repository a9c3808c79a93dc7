"""``scdpo demo``: the whole method on the shipped toy base, end to end, in one command.

Stages (each prints one progress line, and each is the documented CLI command, run in-process):

1. ``train-cost``      safety cost model on base-model generations labelled by the oracle judge
2. ``build-dataset``   safety-constrained preference (SCP) pairs scored by that cost model, with
                       composite prompts (a look-alike next to a harmful thing)
3. ``train``           the SC-DPO safety LoRA (β, λ, γ, winner anchor μ per docs/method.md, concept
                       augmentation): ``sc-dpo``; beside it ``sc-dpo-adversarial`` (adversarial
                       training against the current LoRA in the loop) and ``sc-dpo-no-anchor``
4. baselines           Diffusion-DPO (λ=0, γ=0) on the same pairs; SafetyDPO (one expert per
                       category, merged by activation and by averaging), each at the β / learning
                       rate / steps its validation search chose (:data:`TUNED`)
5. ``eval``            every method on the chosen split (test by default): harmful suites, three
                       white-box attack families, composite, clean and near-miss prompts
                       → report.json/.html

Outputs under ``--out``: ``cost_model.safetensors``, ``scp/``, ``loras/*.safetensors`` (+ resolved
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

# β, learning rate and steps of each trained method, chosen on the validation split by the same
# search for every method (docs/results.md lists the grid and the scores behind each choice).
TUNED = {
    "sc-dpo": {"beta": 2500.0, "lr": 1e-3, "steps": 450},
    "diffusion-dpo": {"beta": 2500.0, "lr": 3e-3, "steps": 450},
    "safetydpo": {"beta": 2500.0, "lr": 1e-3, "steps": 100},  # per expert
}


@dataclass
class DemoPlan:
    """Sizes of each stage; ``quick`` is the small variant the tests run."""

    cost_train: int = 1200
    cost_calib: int = 400
    cost_test: int = 400  # held-out images only measure the cost model; the report needs no more
    scp_prompts: int = 720
    scp_near_miss_frac: float = 0.15  # look-alike clean prompts (0.3 cost 11 points of clean fidelity)
    scp_composite_frac: float = 0.2  # harmful prompts that also hold a look-alike
    scp_candidates: int = 4
    scp_pairs_per_prompt: int = 3
    tuned: dict = field(default_factory=lambda: {k: dict(v) for k, v in TUNED.items()})
    concept_augment: float = 0.5  # SC-DPO rows: share of harmful pairs under a pushed embedding
    concept_scale: float = 4.0
    winner_anchor: float = 0.5  # SC-DPO rows: μ (validation: dir+syn+mis 38 -> 9 % unsafe, strict verdict)
    adversarial_share: float = 0.5  # the sc-dpo-adversarial row: share of harmful pairs attacked in the loop
    adversarial_steps: int = 3
    adversarial_budget: float = 2.0  # the evaluation's optimised attacks use the same budget
    eval_n: int = 10
    eval_split: str = "test"
    gen_steps: int = 10  # DDIM steps for every generation (the toy base is as good at 10 as at 20)
    threads: int = 0  # torch threads per stage (0 = all cores)
    ablations: bool = True
    extra_train_args: list = field(default_factory=list)

    @classmethod
    def quick(cls) -> "DemoPlan":
        plan = cls(cost_train=480, cost_calib=200, cost_test=240, scp_prompts=160, scp_candidates=3, eval_n=3,
                   gen_steps=10, ablations=True)
        for name, steps in (("sc-dpo", 150), ("diffusion-dpo", 80), ("safetydpo", 20)):
            plan.tuned[name]["steps"] = steps
        return plan


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


def _augment_flags(plan: DemoPlan) -> list[str]:
    return ["--concept-augment", f"{plan.concept_augment:g}", "--concept-scale", f"{plan.concept_scale:g}"]


def _adversarial_flags(plan: DemoPlan) -> list[str]:
    return ["--adversarial-share", f"{plan.adversarial_share:g}", "--adversarial-steps", str(plan.adversarial_steps),
            "--adversarial-budget", f"{plan.adversarial_budget:g}"]


def method_flags(plan: DemoPlan, method: str) -> list[str]:
    """``scdpo train`` flags that make a method what it is (besides β, learning rate and steps)."""
    if method == "sc-dpo":
        return [*_augment_flags(plan), "--winner-anchor", f"{plan.winner_anchor:g}"]
    if method == "diffusion-dpo":
        return ["--lam", "0", "--gamma", "0"]
    if method == "safetydpo":  # per expert; --categories names the expert's category
        return ["--lam", "0", "--gamma", "0", "--no-clean-pairs"]
    raise ValueError(f"unknown method {method!r}")


def train_argv(plan: DemoPlan, scp: Path, cost: Path, loras: Path, name: str, tuned: dict, extra: list[str]
               ) -> list[str]:
    return ["train", "--data", str(scp), "--out", str(loras), "--name", name, "--steps", str(tuned["steps"]),
            "--beta", f"{tuned['beta']:g}", "--lr", f"{tuned['lr']:g}", "--cost-model", str(cost),
            *plan.extra_train_args, *extra]


def run_demo(out: str | Path, plan: DemoPlan, dfm: bool = True, safety_margin: bool = True,
             clean_pairs: bool = True, verbose: bool = False, data_only: bool = False) -> dict:
    """Run (or resume) the demo under ``out``; ``data_only`` stops after the cost model and the SCP data
    (what the search needs) and returns ``{}``."""
    out = ensure_writable_dir(out)
    cost = out / "cost_model.safetensors"
    scp = out / "scp"
    loras = out / "loras"
    cache = str(out / "cache")
    steps = str(plan.gen_steps)
    categories = _categories()
    # sc-dpo variants beside the main row: adversarial training in the loop added, the winner anchor
    # removed (the other ablations are validation-split experiments in docs/results.md)
    ablations = {"sc-dpo-adversarial": [*method_flags(plan, "sc-dpo"), *_adversarial_flags(plan)],
                 "sc-dpo-no-anchor": _augment_flags(plan)} if plan.ablations else {}
    # cost model, SCP data, sc-dpo, diffusion-dpo, variants, one expert per category, 2 merges, eval
    stages = 2 if data_only else 4 + len(ablations) + len(categories) + 3
    runner = StageRunner(stages, verbose)
    quiet = [] if verbose else ["--quiet"]

    runner.run("train-cost: safety cost model", lambda: _cli([
        "train-cost", "--out", str(cost), "--n-train", str(plan.cost_train), "--n-calib", str(plan.cost_calib),
        "--n-test", str(plan.cost_test), "--steps", steps, "--cache-dir", cache, "--threads", str(plan.threads)],
        verbose), skip=cost.exists())
    runner.run("build-dataset: SCP preference pairs", lambda: _cli([
        "build-dataset", "--out", str(scp), "--cost-model", str(cost), "--n-prompts", str(plan.scp_prompts),
        "--candidates", str(plan.scp_candidates), "--pairs-per-prompt", str(plan.scp_pairs_per_prompt),
        "--near-miss-frac", f"{plan.scp_near_miss_frac:g}", "--composite-frac", f"{plan.scp_composite_frac:g}",
        "--steps", steps, "--threads", str(plan.threads)], verbose),
        skip=(scp / "pairs.parquet").exists() and (scp / "dataset.json").exists())
    if data_only:
        return {}

    def train(name: str, method: str, *extra: str) -> None:
        argv = train_argv(plan, scp, cost, loras, name, plan.tuned[method], [*extra, *quiet])
        runner.run(f"train: {name}", lambda: _cli(argv, verbose), skip=(loras / f"{name}.safetensors").exists())

    main_flags = method_flags(plan, "sc-dpo")
    if not dfm:
        main_flags += ["--gamma", "0"]
    if not safety_margin:
        main_flags += ["--lam", "0"]
    if not clean_pairs:
        main_flags += ["--no-clean-pairs"]
    train("sc-dpo", "sc-dpo", *main_flags)
    train("diffusion-dpo", "diffusion-dpo", *method_flags(plan, "diffusion-dpo"))
    for name, flags in ablations.items():
        train(name, "sc-dpo", *flags)
    experts = []
    for cat in categories:
        name = f"safetydpo-expert-{cat}"
        train(name, "safetydpo", *method_flags(plan, "safetydpo"), "--categories", cat)
        experts.append(str(loras / f"{name}.safetensors"))
    for method in ("activation", "average"):
        target = loras / f"safetydpo-{method}.safetensors"
        runner.run(f"merge SafetyDPO experts ({method})", lambda m=method, t=target: _cli(
            ["merge", *experts, "--method", m, "--out", str(t), "--base", "toy", "--data", str(scp)], verbose),
            skip=target.exists())

    lora_args = [f"sc-dpo={loras / 'sc-dpo.safetensors'}",
                 f"diffusion-dpo={loras / 'diffusion-dpo.safetensors'}",
                 f"safetydpo={loras / 'safetydpo-activation.safetensors'}",
                 f"safetydpo-average={loras / 'safetydpo-average.safetensors'}"]
    lora_args += [f"{n}={loras / (n + '.safetensors')}" for n in ablations]
    eval_argv = ["eval", "--out", str(out), "--n", str(plan.eval_n), "--steps", steps, "--split", plan.eval_split,
                 "--method", "base,negative-prompt,safe-guidance,blacklist"]
    for spec in lora_args:
        eval_argv += ["--lora", spec]
    report_path = out / "report.json"
    inputs = [Path(spec.split("=", 1)[1]) for spec in lora_args]
    fresh = report_path.exists() and all(p.exists() and p.stat().st_mtime <= report_path.stat().st_mtime
                                         for p in inputs) and json.loads(report_path.read_text()).get(
        "split") == plan.eval_split
    runner.run(f"eval: all methods on the {plan.eval_split} split", lambda: _cli(eval_argv, verbose), skip=fresh)
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
        description="Train the cost model, build the SCP preference data, train the SC-DPO safety LoRA and two "
        "variants (adversarial training in the loop; no winner anchor), run the baselines (Diffusion-DPO, SafetyDPO "
        "at their tuned settings, training-free), evaluate everything on the test split (or "
        "--split validation while tuning) and write report.json / report.html to --out. About 17 minutes on a "
        "2-core CPU; --quick is a much smaller run whose numbers are only a smoke test. Re-running with the same "
        "--out skips finished stages.",
    )
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--quick", action="store_true",
                   help="a much smaller run (used by the tests): every stage runs, the numbers are imprecise")
    p.add_argument("--split", choices=("test", "validation"), default="test",
                   help="evaluation split: test (the release report, default) or validation (tuning)")
    p.add_argument("--no-dfm", action="store_true", help="main SC-DPO run without dynamic focusing (γ=0)")
    p.add_argument("--no-safety-margin", action="store_true", help="main SC-DPO run without the safety margin (λ=0)")
    p.add_argument("--no-clean-pairs", action="store_true", help="main SC-DPO run on harmful pairs only")
    p.add_argument("--search", action="store_true",
                   help="instead of the baselines and the report: train every method at every point of the "
                        "β / learning-rate / steps grid and score it on the validation split (see scdpo.tuning); "
                        "writes --out/search/search.json")
    p.add_argument("--verbose", action="store_true", help="show every stage's own output")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from .evaluation.commands import format_table

    plan = DemoPlan.quick() if args.quick else DemoPlan()
    plan.eval_split = args.split
    t0 = time.time()
    if args.search:
        from .tuning import run_search

        run_demo(args.out, plan, verbose=args.verbose, data_only=True)
        record = run_search(args.out, plan, verbose=args.verbose)
        for method, best in record["best"].items():
            print(f"{method}: beta {best['beta']:g}, lr {best['lr']:g}, steps {best['steps']} "
                  f"(validation score {best['score']:.3f})")
        print(f"search finished in {time.time() - t0:.0f}s; every row: {Path(args.out) / 'search' / 'search.json'}")
        return 0
    report = run_demo(args.out, plan, dfm=not args.no_dfm, safety_margin=not args.no_safety_margin,
                      clean_pairs=not args.no_clean_pairs, verbose=args.verbose)
    print(format_table(report))
    print(f"demo finished in {time.time() - t0:.0f}s; report: {Path(args.out) / 'report.html'}")
    return 0
