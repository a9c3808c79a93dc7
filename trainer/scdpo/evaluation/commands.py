"""``scdpo eval``: compare the base model, safety LoRAs and training-free baselines on held-out suites."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm import tqdm

from ..errors import ScdpoError
from .adversarial import FAMILIES

DEFAULT_METHODS = ("base", "negative-prompt", "safe-guidance", "blacklist")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a base model, safety LoRAs and baselines (report.json + report.html)",
        description="Generate for the toy prompt suites of one split (direct, synonym, misspelled, indirect, "
        "three white-box attack families, composite, clean, near-miss) with each method on identical seeds, "
        "judge every image with the oracle and the colour-blind concept-leak check, and write report.json and "
        "report.html to --out. Tune on --split validation; report --split test once.",
    )
    p.add_argument("--model", "--base", dest="model", default=None, help="base model (default: shipped toy base)")
    p.add_argument("--lora", action="append", default=[], metavar="[NAME=]FILE",
                   help="a safety LoRA to evaluate; repeat for several (NAME defaults to the file stem)")
    p.add_argument("--method", default=",".join(DEFAULT_METHODS),
                   help="comma list of built-in methods: base, negative-prompt, safe-guidance, blacklist "
                   "(LoRAs from --lora are always added)")
    p.add_argument("--lora-strength", type=float, default=1.0)
    p.add_argument("--n", type=int, default=16, help="prompts per (category, suite) cell (default 16)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--split", choices=("validation", "test"), default="validation",
                   help="which prompts to evaluate on: validation (tuning, diagnosis; default) or test (the "
                        "release report, used once)")
    p.add_argument("--attacks", default=",".join(FAMILIES),
                   help=f"comma list of attack families (default: all of {', '.join(FAMILIES)}; '' = none)")
    p.add_argument("--out", default="out/eval", help="output folder (default out/eval)")
    p.add_argument("--workers", type=int, default=1,
                   help="evaluate methods in this many one-thread processes at once (default 1: all in this "
                        "process); the numbers equal a one-thread run")
    p.add_argument("--json", action="store_true", help="print the report's methods as one JSON line at the end")
    p.set_defaults(func=_run)


def build_methods(model, method_names: list[str], loras: list[str], strength: float = 1.0):
    from .baselines import TRAINING_FREE, GenerationMethod, lora_method

    methods = []
    for name in method_names:
        if name == "base":
            methods.append(GenerationMethod("base", description="the base model, no safety measure"))
        elif name in TRAINING_FREE:
            methods.append(TRAINING_FREE[name]())
        else:
            raise ScdpoError(f"unknown method {name!r}; choose from base, {', '.join(TRAINING_FREE)} or pass --lora")
    for spec in loras:
        # NAME=FILE splits at the first "=" (a path may contain one); an existing file is taken whole
        name, _, path = ("", "", spec) if Path(spec).is_file() or "=" not in spec else spec.partition("=")
        if not path:
            raise ScdpoError(f"--lora {spec!r} names no file; pass --lora [NAME=]FILE")
        name = name or Path(path).stem
        methods.append(lora_method(name, model, path, strength))
    if not methods:
        raise ScdpoError("nothing to evaluate; pass --method NAMES and/or --lora FILE")
    seen = set()
    for m in methods:  # the report is keyed by name: a repeat would silently replace a result
        if m.name in seen:
            raise ScdpoError(f"two methods are named {m.name!r}; name LoRAs apart with --lora NAME=FILE")
        seen.add(m.name)
    return methods


def run_evaluation(out: str | Path, *, model: str | None = None, methods: tuple[str, ...] = DEFAULT_METHODS,
                   loras: tuple[str, ...] = (), lora_strength: float = 1.0, n: int = 16, steps: int = 20,
                   seed: int = 1234, split: str = "validation", attacks: tuple[str, ...] = FAMILIES,
                   workers: int = 1) -> dict:
    """Evaluate ``methods`` and ``loras`` (``[NAME=]FILE``) on the toy suites of ``split``, write
    report.json / report.html / grids to ``out`` and return the report. ``workers`` > 1: the methods are split
    into at most ``workers`` groups of about equal cost (:func:`split_evenly`), each evaluated by its own
    one-thread ``scdpo eval`` process, and the reports merged (:mod:`scdpo.workers`); the numbers are those
    of a one-thread run of all methods in one process."""
    from ..fileio import ensure_writable_dir
    from ..models import load_base_model
    from ..toy.model import ToyTextToImage
    from .harness import EvalConfig, evaluate_methods
    from .report import write_reports

    out = ensure_writable_dir(out)
    base = load_base_model(model)
    if not isinstance(base, ToyTextToImage):
        raise ScdpoError("scdpo eval judges images with the toy world's oracle; for SD models use "
                         "`scdpo generate` and `scdpo cost score` with a cost model")
    built = build_methods(base, list(methods), list(loras), lora_strength)
    unknown = [f for f in attacks if f not in FAMILIES]
    if unknown:
        raise ScdpoError(f"unknown attack family {unknown[0]!r}; choose from {', '.join(FAMILIES)}")
    if workers < 1:
        raise ScdpoError(f"--workers must be at least 1 (got {workers})")
    if workers > 1 and len(built) > 1:
        given = {"model": model, "lora_strength": lora_strength, "n": n, "steps": steps, "seed": seed,
                 "split": split, "attacks": attacks}
        return _evaluate_in_workers(out, built, list(loras), given, workers)
    cfg = EvalConfig(n=n, steps=steps, seed=seed, split=split, attacks=tuple(attacks))
    bar = tqdm(total=len(built), desc="eval", unit="method")

    def on_method(name, i, total):
        bar.set_postfix(method=name)
        if i:
            bar.update(1)

    report, samples = evaluate_methods(base, built, cfg, on_method=on_method)
    bar.update(1)
    bar.close()
    return write_reports(out, report, samples)


# Relative evaluation time of a method (measured on the toy demo: Safe Latent Diffusion guidance runs
# an extra UNet pass per step); a method not listed counts 1.
EVAL_COST = {"safe-guidance": 1.3}


def split_evenly(names: list[str], workers: int) -> list[list[str]]:
    """``names`` in at most ``workers`` groups of about equal :data:`EVAL_COST` (longest first, each to the
    lightest group), so every worker process loads the model once and they finish at about the same time."""
    groups: list[list[str]] = [[] for _ in range(min(workers, len(names)))]
    totals = [0.0] * len(groups)
    for name in sorted(names, key=lambda n: -EVAL_COST.get(n, 1.0)):
        k = totals.index(min(totals))
        groups[k].append(name)
        totals[k] += EVAL_COST.get(name, 1.0)
    return groups


def _evaluate_in_workers(out: Path, built: list, loras: list[str], given: dict, workers: int) -> dict:
    """The methods split over ``workers`` one-thread ``scdpo eval`` processes (in ``out/parts/<i>``, removed
    after the merge)."""
    import shutil

    from ..workers import Job, run_jobs
    from .report import merge_reports

    common = ["eval", "--n", str(given["n"]), "--steps", str(given["steps"]), "--seed", str(given["seed"]),
              "--split", given["split"], "--attacks", ",".join(given["attacks"]),
              "--lora-strength", str(given["lora_strength"])]
    if given["model"]:
        common += ["--model", str(given["model"])]
    lora_specs = {m.name: spec for m, spec in zip([m for m in built if m.lora_path], loras)}
    parts = out / "parts"
    jobs, sizes = [], {}
    for i, group in enumerate(split_evenly([m.name for m in built], workers)):
        which = ["--method", ",".join(n for n in group if n not in lora_specs)]
        for name in group:
            if name in lora_specs:
                which += ["--lora", lora_specs[name]]
        jobs.append(Job(", ".join(group), [*common, *which, "--out", str(parts / str(i))], parts / f"{i}.log"))
        sizes[jobs[-1].name] = len(group)
    bar = tqdm(total=len(built), desc="eval", unit="method")
    run_jobs(jobs, workers, on_done=lambda job: (bar.set_postfix(method=job.name), bar.update(sizes[job.name])))
    bar.close()
    report = merge_reports(out, [parts / str(i) for i in range(len(jobs))], order=[m.name for m in built])
    shutil.rmtree(parts, ignore_errors=True)
    return report


def _words(text: str) -> tuple[str, ...]:
    return tuple(w.strip() for w in text.split(",") if w.strip())


def _run(args) -> int:
    report = run_evaluation(args.out, model=args.model, methods=_words(args.method), loras=tuple(args.lora),
                            lora_strength=args.lora_strength, n=args.n, steps=args.steps, seed=args.seed,
                            split=args.split, attacks=_words(args.attacks), workers=args.workers)
    print(format_table(report))
    print(f"wrote {Path(args.out) / 'report.json'} and {Path(args.out) / 'report.html'}")
    if args.json:
        print(json.dumps(report["methods"]))
    return 0


def format_table(report: dict) -> str:
    from .report import SUITES, percent

    head = f"{'method':<22}" + "".join(f"{s[:11]:>12}" for s in SUITES) + f"{'clean fid':>11}{'near-miss':>11}"
    rows = [head]
    for name, m in report["methods"].items():
        rows.append(f"{name:<22}" + "".join(f"{percent(m['unsafe_rate'][s]):>12}" for s in SUITES)
                    + f"{m['clean_fidelity']:>11.1%}{m['near_miss_fidelity']:>11.1%}")
    return "\n".join(rows)
