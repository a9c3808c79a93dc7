"""``scdpo demo``: the whole method on the shipped toy base, end to end, in one command.

Stages (each prints one progress line; each calls the same typed function as its CLI command):

1. ``scdpo cost train``    safety cost model on base-model generations labelled by the strict verdict
2. ``scdpo data build``    safety-constrained preference (SCP) pairs scored by that cost model, with
                           composite prompts (a look-alike next to a harmful thing)
3. ``scdpo lora train``    the SC-DPO safety LoRA (β, λ, γ, winner anchor μ, concept augmentation,
                           erasure target and preservation, adversarial training against the current
                           LoRA in the loop; docs/method.md): ``sc-dpo``
4. baselines               Diffusion-DPO (λ=0, γ=0) on the same pairs; SafetyDPO (one expert per
                           category, merged by activation), each at the β / learning rate / steps its
                           validation search chose (:data:`TUNED`); ``--variant`` adds ablations
                           (:data:`VARIANTS`) for validation runs
5. ``scdpo eval``          every method on the chosen split (test by default): harmful suites, the
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
from typing import Callable, Optional

from .errors import ScdpoError
from .fileio import ensure_writable_dir

# β, learning rate and steps of each trained method, chosen on the validation split by the search
# (docs/results.md §3 lists the grid and the scores behind each choice). The baselines' were searched
# again on the present data (14 points each); SC-DPO's come from the first search, its other settings
# from the validation experiments of docs/results.md §2. The training seed is chosen the same way, for
# every method alike: of seeds 0-3 at those settings, the one with the best mean validation score over
# evaluation seeds 1234 / 7 (sc-dpo 3: 0.884 against 0.871 / 0.865 / 0.790; Diffusion-DPO 0: 0.538 against
# 0.355 / 0.314 / 0.449; SafetyDPO 0: 0.259 against -0.472 / 0.204 / 0.147; docs/results.md §2k).
TUNED = {
    "sc-dpo": {"beta": 2500.0, "lr": 1e-3, "steps": 450, "seed": 3},
    "diffusion-dpo": {"beta": 5000.0, "lr": 3e-3, "steps": 450, "seed": 0},
    "safetydpo": {"beta": 10000.0, "lr": 2e-3, "steps": 100, "seed": 0},  # per expert
}


# what ``--variant`` may add: SC-DPO with the preference loss alone (the third release's recipe), that without
# the winner anchor, and SafetyDPO's experts merged by averaging their weight deltas instead of by activation
VARIANTS = ("sc-dpo-preference-only", "sc-dpo-no-anchor", "safetydpo-average")


@dataclass
class DemoPlan:
    """Sizes of each stage; ``quick`` is the small variant the tests run."""

    cost_train: int = 1200
    cost_calib: int = 400
    cost_test: int = 400  # held-out images only measure the cost model; the report needs no more
    scp_prompts: int = 720
    # look-alike clean prompts: 0.25 against 0.15 raised validation near-miss fidelity 87/89 -> 92/91 % (two
    # seeds; worst attack 40/53 -> 57/60 %; selection score 0.59 -> 0.68); 0.3 once cost 11 points of
    # clean fidelity (docs/results.md §2)
    scp_near_miss_frac: float = 0.25
    scp_composite_frac: float = 0.2  # harmful prompts that also hold a look-alike
    # neutral attack prompts (an empty scene's caption pushed towards a concept), as a share of scp_prompts: off.
    # Validation, seeds 0 / 3, evaluation seeds 1234 / 7: a tenth 0.716, a fifth 0.737 against 0.793 (the word
    # search up 42-51 % against 36-41 %, clean fidelity -1.0 to -2.7 points; docs/results.md §2n)
    scp_neutral_frac: float = 0.0
    scp_candidates: int = 4
    scp_chunk_prompts: int = 24  # parts of the SCP build: 30 parts share out evenly over the data shards
    scp_pairs_per_prompt: int = 3
    tuned: dict = field(default_factory=lambda: {k: dict(v) for k, v in TUNED.items()})
    concept_augment: float = 0.5  # SC-DPO rows: share of harmful pairs under a pushed embedding
    concept_scale: float = 4.0
    winner_anchor: float = 0.5  # SC-DPO rows: μ (validation: dir+syn+mis 38 -> 9 % unsafe, strict verdict)
    # sc-dpo: the erasure target ν and the preservation term on top of the preference loss, half the harmful
    # pairs trained under a universal attack kept and refined against the current LoRA (one Adam step per
    # training step) at the budget of the evaluation's optimised attacks, the LoRA also on the transformer
    # blocks' projections and feed-forward layers. Validation, two seeds, n=20: worst attack 52/52 -> 35/30 %
    # unsafe, selection score 0.729/0.709 -> 0.756/0.746 (docs/results.md §2d). Preservation 8 (was 4) since
    # training captions have two shapes: validation, two seeds, n=20, mean score 0.594 -> 0.631, near-miss
    # 94.9/85.8 -> 95.4/89.3 %, dir+syn+mis 20.0/18.9 -> 28.9/22.2 % unsafe (docs/results.md §2f)
    erase_weight: float = 0.5
    preserve_weight: float = 8.0
    adversarial_share: float = 0.5
    adversarial_steps: int = 1
    adversarial_budget: float = 2.0
    adversarial_mode: str = "universal"
    # restarting each category's shift at Ring-A-Bell's point every 20 of its Adam steps kept look-alikes on
    # validation (near-miss 91.8/90.4 -> 96.0/95.4 %, two seeds) but was far weaker under the optimised
    # attacks at a second evaluation seed (worst attack 55/53 -> 75/70 %) and on test (36.7 -> 73.3 %):
    # off (docs/results.md §2h)
    adversarial_restart: int = 0
    # the attacked pairs train the erasure target under the attack and keep their prompt for the preference
    # (``erasure``), a fresh 20-step attack on the LoRA of the moment replaces the shifts every 25 steps, and the
    # LoRA is written at strength 1.25 (its alpha 1.25 x 8): validation, four training x two evaluation seeds,
    # n=20, mean score 0.789 -> 0.852, worst attack 53.7 -> 38.3 %, near-miss fidelity -1.2 -> -0.5 points
    # against the base (docs/results.md §2j)
    adversarial_objective: str = "erasure"
    adversarial_refresh: int = 25
    adversarial_refresh_steps: int = 20
    export_strength: float = 1.25
    # prompts per (category, suite) cell of the report: 20 since the tenth release (was 10, where one image moved a
    # category's attack cell by 10 points); the ablation variants left the test run to pay for it
    eval_n: int = 20
    eval_split: str = "test"
    gen_steps: int = 10  # DDIM steps for every generation (the toy base is as good at 10 as at 20)
    threads: int = 0  # torch threads of the stages run in this process (0 = all cores)
    # processes for the training and evaluation stages, one thread each (0 = one per core; 1 = every stage
    # in this process, with ``threads`` threads)
    workers: int = 0
    # ablations trained (or merged) and reported beside the main rows, none by default: they are validation
    # material (docs/results.md §2), and the test run reports each method once, at its chosen setting
    # (``scdpo demo --variant NAME``, one of :data:`VARIANTS`)
    variants: tuple = ()
    train_overrides: dict = field(default_factory=dict)  # TrainConfig fields set for every LoRA (tests: rank)

    @classmethod
    def quick(cls) -> "DemoPlan":
        plan = cls(cost_train=480, cost_calib=200, cost_test=240, scp_prompts=160, scp_candidates=3, eval_n=3,
                   gen_steps=10)
        for name, steps in (("sc-dpo", 150), ("diffusion-dpo", 80), ("safetydpo", 20)):
            plan.tuned[name]["steps"] = steps
        return plan


@dataclass
class Stage:
    """One step of the demo: ``run`` does it, ``done`` says its output is already there. ``command``,
    where set, gives the same step as ``scdpo`` command-line arguments, so that consecutive such stages
    can run side by side in their own processes (:mod:`scdpo.workers`)."""

    name: str
    run: Callable[[], object]
    done: Callable[[], bool] = lambda: False
    command: Optional[Callable[[], list[str]]] = None


class StageRunner:
    """Runs stages in order, printing ``[i/n] name`` lines and keeping each stage's seconds. With
    ``workers`` > 1, consecutive stages that have a ``command`` run as one-thread processes, at most
    ``workers`` at once, their output in ``logs/<stage>.log``; each keeps its own seconds."""

    def __init__(self, verbose: bool = False, workers: int = 1, logs: Optional[Path] = None):
        self.verbose = verbose
        self.workers = workers
        self.logs = logs
        self.timings: dict[str, float] = {}
        self.skipped: set[str] = set()

    def run_all(self, stages: list[Stage]) -> None:
        index = 0
        while index < len(stages):
            group = [stages[index]]
            while self.workers > 1 and group[-1].command and index + len(group) < len(stages) \
                    and stages[index + len(group)].command:
                group.append(stages[index + len(group)])
            if len(group) > 1:
                self._run_side_by_side(group, index, len(stages))
            else:
                self._run_here(stages[index], index + 1, len(stages))
            index += len(group)

    def _skip(self, stage: Stage, prefix: str) -> bool:
        if not stage.done():
            return False
        print(f"{prefix}: already done, skipped", flush=True)
        self.timings[stage.name] = 0.0
        self.skipped.add(stage.name)
        return True

    def _run_here(self, stage: Stage, number: int, total: int) -> None:
        prefix = f"[{number}/{total}] {stage.name}"
        if self._skip(stage, prefix):
            return
        print(f"{prefix} ...", flush=True)
        t0 = time.time()
        with contextlib.redirect_stdout(io.StringIO()) if not self.verbose else contextlib.nullcontext():
            stage.run()
        self.timings[stage.name] = round(time.time() - t0, 1)
        print(f"{prefix}: done in {self.timings[stage.name]:.0f}s", flush=True)

    def _run_side_by_side(self, group: list[Stage], first: int, total: int) -> None:
        from .workers import Job, run_jobs

        prefixes = {stage.name: f"[{first + i + 1}/{total}] {stage.name}" for i, stage in enumerate(group)}
        todo = [stage for stage in group if not self._skip(stage, prefixes[stage.name])]
        if not todo:
            return
        logs = self.logs or Path(".")
        jobs = [Job(stage.name, stage.command(), logs / f"{_file_name(stage.name)}.log") for stage in todo]
        print(f"{', '.join(prefixes[j.name] for j in jobs)}: {min(self.workers, len(jobs))} at a time, "
              f"one thread each ...", flush=True)
        t0 = time.time()

        def done(job: Job) -> None:
            self.timings[job.name] = job.seconds
            print(f"{prefixes[job.name]}: done in {job.seconds:.0f}s", flush=True)

        run_jobs(jobs, self.workers, on_done=done)
        self.timings[f"side by side: {', '.join(j.name for j in jobs)}"] = round(time.time() - t0, 1)


def _file_name(stage_name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stage_name).strip("_")


def method_options(plan: DemoPlan, method: str) -> dict:
    """Training options that make a method what it is (besides β, learning rate and steps)."""
    augment = {"concept_augment": plan.concept_augment, "concept_scale": plan.concept_scale}
    if method == "sc-dpo":
        return {**method_options(plan, "sc-dpo-preference-only"), "erase_weight": plan.erase_weight,
                "preserve_weight": plan.preserve_weight, "adversarial_share": plan.adversarial_share,
                "adversarial_steps": plan.adversarial_steps, "adversarial_budget": plan.adversarial_budget,
                "adversarial_mode": plan.adversarial_mode, "adversarial_restart": plan.adversarial_restart,
                "adversarial_objective": plan.adversarial_objective, "adversarial_refresh": plan.adversarial_refresh,
                "adversarial_refresh_steps": plan.adversarial_refresh_steps, "export_strength": plan.export_strength,
                "train_ff": True, "train_proj": True}
    if method == "sc-dpo-preference-only":  # the preference loss alone (the third release's sc-dpo)
        return {**augment, "winner_anchor": plan.winner_anchor}
    if method == "sc-dpo-no-anchor":  # that, without the winner anchor
        return augment
    if method == "diffusion-dpo":
        return {"lam": 0.0, "gamma": 0.0}
    if method == "safetydpo":  # per expert; ``categories`` names the expert's category
        return {"lam": 0.0, "gamma": 0.0, "clean_pairs": False}
    raise ValueError(f"unknown method {method!r}")


def train_config(plan: DemoPlan, scp: Path, cost: Path, loras: Path, name: str, tuned: dict, options: dict):
    """The :class:`~scdpo.dpo.config.TrainConfig` of one demo LoRA."""
    from .dpo.config import TrainConfig, config_from_mapping

    values = {"data": str(scp), "out": str(loras), "name": name, "steps": tuned["steps"], "beta": tuned["beta"],
              "lr": tuned["lr"], "seed": tuned.get("seed", 0), "cost_model": str(cost), **plan.train_overrides,
              **options}
    return config_from_mapping(values, TrainConfig(), source="demo").validate()


def train_stage(plan: DemoPlan, scp: Path, cost: Path, loras: Path, name: str, tuned: dict, options: dict,
                verbose: bool = False) -> Stage:
    """``scdpo lora train`` of one LoRA, skipped when its file exists; as a command, ``scdpo lora train
    --config`` of its configuration, written to ``loras/jobs/<name>.toml``."""
    def run() -> None:
        from .dpo.train import train_lora

        train_lora(train_config(plan, scp, cost, loras, name, tuned, options), progress=verbose)

    def command() -> list[str]:
        from .dpo.config import save_train_config

        path = loras / "jobs" / f"{name}.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_train_config(train_config(plan, scp, cost, loras, name, tuned, options), path,
                          header=f"scdpo lora train --config {path.name} (a stage of scdpo demo)")
        return ["lora", "train", "--config", str(path), "--quiet"]

    return Stage(f"lora train: {name}", run, (loras / f"{name}.safetensors").exists, command)


def report_fresh(report: Path, methods: list[str], loras: list[Path], plan: DemoPlan) -> bool:
    """Whether ``report`` is this run's: newer than every LoRA it scores, of exactly ``methods`` (a
    ``--variant`` added or dropped renews it), at the plan's split and cell size."""
    if not report.exists() or not all(p.exists() and p.stat().st_mtime <= report.stat().st_mtime for p in loras):
        return False
    earlier = json.loads(report.read_text())
    return set(earlier.get("methods", {})) == set(methods) and earlier.get("split") == plan.eval_split \
        and earlier.get("config", {}).get("n") == plan.eval_n


def scp_build_config(plan: DemoPlan):
    """The demo's ``scdpo data build`` settings."""
    from .scp.builder import BuildConfig

    return BuildConfig(n_prompts=plan.scp_prompts, candidates=plan.scp_candidates,
                       pairs_per_prompt=plan.scp_pairs_per_prompt, near_miss_frac=plan.scp_near_miss_frac,
                       composite_frac=plan.scp_composite_frac, steps=plan.gen_steps,
                       chunk_prompts=plan.scp_chunk_prompts, neutral_frac=plan.scp_neutral_frac)


def data_stages(out: Path, plan: DemoPlan, workers: int = 1) -> list[Stage]:
    """The cost model and the SCP data: what every other stage (and the search) trains on. With
    ``workers`` > 1 the data is built in that many shards side by side (``scdpo data build --shard K/N``),
    then taken over and written by the data stage itself."""
    from .cost.commands import train_toy_cost_model
    from .scp.commands import build_dataset

    cost, scp = out / "cost_model.safetensors", out / "scp"
    build = scp_build_config(plan)

    def built() -> bool:
        return (scp / "pairs.parquet").exists() and (scp / "dataset.json").exists()

    def shard_command(k: int) -> list[str]:
        return ["data", "build", "--out", str(scp), "--cost-model", str(cost), "--n-prompts", str(build.n_prompts),
                "--candidates", str(build.candidates), "--pairs-per-prompt", str(build.pairs_per_prompt),
                "--near-miss-frac", str(build.near_miss_frac), "--composite-frac", str(build.composite_frac),
                "--steps", str(build.steps), "--chunk-prompts", str(build.chunk_prompts),
                "--neutral-frac", str(build.neutral_frac), "--shard", f"{k}/{workers}"]

    shards = [Stage(f"data build: SCP pairs, shard {k + 1} of {workers}",
                    lambda k=k: build_dataset(scp, build, cost_model=str(cost), shard=(k, workers)), built,
                    lambda k=k: shard_command(k)) for k in range(workers)] if workers > 1 else []
    return [
        Stage("cost train: safety cost model", lambda: train_toy_cost_model(
            cost, n_train=plan.cost_train, n_calib=plan.cost_calib, n_test=plan.cost_test, steps=plan.gen_steps,
            cache_dir=str(out / "cache")), cost.exists),
        *shards,
        Stage("data build: SCP preference pairs", lambda: build_dataset(scp, build, cost_model=str(cost)), built),
    ]


def run_demo(out: str | Path, plan: DemoPlan, dfm: bool = True, safety_margin: bool = True,
             clean_pairs: bool = True, verbose: bool = False, data_only: bool = False) -> dict:
    """Run (or resume) the demo under ``out``; ``data_only`` stops after the cost model and the SCP data
    (what the search needs) and returns ``{}``."""
    from .dpo.commands import merge_expert_files
    from .evaluation.commands import DEFAULT_METHODS, run_evaluation

    from .cost.commands import apply_threads

    apply_threads(plan.threads)
    out = ensure_writable_dir(out)
    cost, scp, loras = out / "cost_model.safetensors", out / "scp", out / "loras"
    from .workers import default_workers

    workers = plan.workers or default_workers()
    runner = StageRunner(verbose, workers, logs=out / "logs")
    stages = data_stages(out, plan, workers)
    if data_only:
        runner.run_all(stages)
        return {}

    def train(name: str, method: str, options: dict) -> Stage:
        return train_stage(plan, scp, cost, loras, name, plan.tuned[method], options, verbose)

    main = method_options(plan, "sc-dpo")
    if not dfm:
        main["gamma"] = 0.0
    if not safety_margin:
        main["lam"] = 0.0
    if not clean_pairs:
        main["clean_pairs"] = False
    # the longest training first, so that side by side the last one to finish is a short one
    unknown = [v for v in plan.variants if v not in VARIANTS]
    if unknown:
        raise ScdpoError(f"unknown demo variant {unknown[0]!r}: choose from {', '.join(VARIANTS)}")
    trained = tuple(v for v in plan.variants if v.startswith("sc-dpo"))
    stages.append(train("sc-dpo", "sc-dpo", main))
    stages += [train(name, "sc-dpo", method_options(plan, name)) for name in trained]
    stages.append(train("diffusion-dpo", "diffusion-dpo", method_options(plan, "diffusion-dpo")))
    experts = []
    for cat in _categories():
        name = f"safetydpo-expert-{cat}"
        stages.append(train(name, "safetydpo", {**method_options(plan, "safetydpo"), "categories": [cat]}))
        experts.append(str(loras / f"{name}.safetensors"))
    merges = ("activation", "average") if "safetydpo-average" in plan.variants else ("activation",)
    for method in merges:
        target = loras / f"safetydpo-{method}.safetensors"
        stages.append(Stage(f"lora merge: SafetyDPO experts ({method})",
                            lambda m=method, t=target: merge_expert_files(experts, m, t, base="toy", data=str(scp)),
                            target.exists))

    evaluated = {"sc-dpo": "sc-dpo", "diffusion-dpo": "diffusion-dpo", "safetydpo": "safetydpo-activation",
                 **{n: n for n in plan.variants}}
    lora_files = {name: loras / f"{stem}.safetensors" for name, stem in evaluated.items()}
    report_path = out / "report.json"

    stages.append(Stage(f"eval: all methods on the {plan.eval_split} split", lambda: run_evaluation(
        out, methods=DEFAULT_METHODS, loras=tuple(f"{n}={p}" for n, p in lora_files.items()), n=plan.eval_n,
        steps=plan.gen_steps, split=plan.eval_split, workers=workers),
        lambda: report_fresh(report_path, [*DEFAULT_METHODS, *lora_files], list(lora_files.values()), plan)))
    runner.run_all(stages)

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
        description="Train the cost model, build the SCP preference data, train the SC-DPO safety LoRA, run "
        "the baselines (Diffusion-DPO, SafetyDPO at their tuned settings, training-free), evaluate everything "
        "on the test split (or --split validation while tuning) and write report.json / report.html to --out. "
        "About 15 minutes on a 2-core CPU; --quick is a much smaller run whose numbers are only a smoke test. "
        "Re-running with the same --out skips finished stages.",
    )
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--quick", action="store_true",
                   help="a much smaller run (used by the tests): every stage runs, the numbers are imprecise")
    p.add_argument("--split", choices=("test", "validation"), default="test",
                   help="evaluation split: test (the release report, default) or validation (tuning)")
    p.add_argument("--variant", action="append", choices=VARIANTS, default=[],
                   help="also train (or merge) and report this ablation beside the main rows; repeatable. "
                        "Ablations are validation material: use them with --split validation")
    p.add_argument("--no-dfm", action="store_true", help="main SC-DPO run without dynamic focusing (γ=0)")
    p.add_argument("--no-safety-margin", action="store_true", help="main SC-DPO run without the safety margin (λ=0)")
    p.add_argument("--no-clean-pairs", action="store_true", help="main SC-DPO run on harmful pairs only")
    p.add_argument("--search", action="store_true",
                   help="instead of the baselines and the report: train every method at every point of the "
                        "β / learning-rate / steps grid and score it on the validation split (see scdpo.tuning); "
                        "writes --out/search/search.json")
    p.add_argument("--workers", type=int, default=0,
                   help="processes for the training and evaluation stages, one torch thread each (default 0: one "
                        "per core; 1: every stage in this process with all threads, whose float sums differ "
                        "slightly from one-thread runs)")
    p.add_argument("--verbose", action="store_true", help="show every stage's own output")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from .evaluation.commands import format_table

    plan = DemoPlan.quick() if args.quick else DemoPlan()
    plan.eval_split = args.split
    plan.variants = tuple(dict.fromkeys(args.variant))
    if args.workers < 0:
        from .errors import ScdpoError

        raise ScdpoError(f"--workers must be 0 (one per core) or more (got {args.workers})")
    plan.workers = args.workers
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
