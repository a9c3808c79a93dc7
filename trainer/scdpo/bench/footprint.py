"""Benchmark: the footprint of ``scdpo lora train`` beside the peer trainers' two-UNet designs.

``scdpo dev bench-trainers`` builds (once) a mid-size SD-1.x-shaped random model
(:mod:`.sd_shaped`: 70 M-parameter UNet, 64 px images) and a 16-pair dataset, then runs in fresh
processes, interleaved round by round (A B C D, B C D A, ...), so a load change on the machine
hits every variant alike:

* ``scdpo``: ``scdpo lora train`` as a user runs it (defaults: inputs encoded once, frozen base in
  bf16 on this device's default, one UNet whose LoRA is switched off for the reference);
* ``scdpo-fp32``: the same with ``--base-dtype fp32`` (what the bf16 base alone changes);
* ``two-unet-lora``: the SafetyDPO design (LoRA + a frozen reference UNet copy, VAE and text
  encoder every step, fp32; :mod:`.peers`);
* ``two-unet-full``: the Diffusion-DPO design (the whole UNet trains, + a frozen reference copy).

Every variant does the same work per step: 2 pairs (4 UNet samples) through the policy with
gradients and the reference without, DPO loss, clipping, AdamW. Measured per run:

* **process peak memory**: the peak resident set size of the whole process life (imports,
  loading, encoding, training, writing), from the kernel (``wait4``'s ``ru_maxrss``), as
  ``/usr/bin/time -v`` reports it;
* **step time**: the median of the run's step times after ``skip`` warm-up steps (``scdpo``: the
  differences of the wall times of consecutive steps' TensorBoard points; peers: timed around the
  step), then the median over runs.

Ratios are ours / theirs; the targets (issue 17): peak ≤ 0.65× the two-UNet LoRA and ≤ 0.40× the
full fine-tune, step time ≤ 0.85× the two-UNet LoRA.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

VARIANTS = ("scdpo", "scdpo-fp32", "two-unet-lora", "two-unet-full")
TITLES = {
    "scdpo": "scdpo lora train (defaults)",
    "scdpo-fp32": "scdpo lora train --base-dtype fp32",
    "two-unet-lora": "two-UNet LoRA (SafetyDPO design)",
    "two-unet-full": "two-UNet full fine-tune (Diffusion-DPO design)",
}
TARGETS = (("peak_rss", "two-unet-lora", 0.65), ("peak_rss", "two-unet-full", 0.40), ("step", "two-unet-lora", 0.85))
MiB = 2**20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds, one fresh process per variant each")
    parser.add_argument("--steps", type=int, default=20, help="training steps per run")
    parser.add_argument("--skip", type=int, default=2, help="warm-up steps left out of the step time")
    parser.add_argument("--batch-size", type=int, default=2, help="pairs per step")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (scdpo and the two-UNet LoRA)")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS of every run (default: the machine's cores)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS))
    parser.add_argument("--cache", default=None, help="where the benchmark model is built once "
                        "(default ~/.cache/scdpo-bench)")
    parser.add_argument("--json", action="store_true", help="also print the report as one JSON line")


def _command(variant: str, model: Path, data: Path, out: Path, steps: int, batch_size: int, rank: int) -> list[str]:
    if variant.startswith("scdpo"):
        cmd = [sys.executable, "-m", "scdpo", "lora", "train", "--base", str(model), "--data", str(data),
               "--out", str(out), "--name", "bench", "--steps", str(steps), "--batch-size", str(batch_size),
               "--rank", str(rank), "--alpha", str(rank), "--lr", "1e-4", "--warmup-steps", "0", "--log-every", "1",
               "--checkpoint-every", "0", "--no-resume", "--quiet"]
        return cmd + (["--base-dtype", "fp32"] if variant == "scdpo-fp32" else [])
    design = variant.rsplit("-", 1)[-1]
    return [sys.executable, "-m", "scdpo.bench.peers", design, "--model", str(model), "--data", str(data),
            "--out", str(out), "--steps", str(steps), "--batch-size", str(batch_size), "--rank", str(rank)]


# A small process between the measuring one and each run, which starts the run and reports its ru_maxrss.
# The kernel carries the high-water mark of the memory a process was started from across fork and exec, so
# a run started straight from this process (which holds the benchmark's model, or a test session) would
# report at least this process's size: every variant the same floor (a bare `python -c pass` started from
# a 700 MiB process reports 714 MiB).
_LAUNCHER = ("import json, os, subprocess, sys\n"
             "proc = subprocess.Popen(sys.argv[2:])\n"
             "_, status, usage = os.wait4(proc.pid, 0)\n"
             "with open(sys.argv[1], 'w') as f:\n"
             "    json.dump([os.waitstatus_to_exitcode(status), usage.ru_maxrss], f)\n")


def _run(cmd: list[str], env: dict, log: Path) -> tuple[int, int, float]:
    """Run ``cmd`` (through :data:`_LAUNCHER`); its exit code, peak resident bytes (the kernel's
    ``ru_maxrss``) and seconds."""
    began = time.perf_counter()
    result = log.with_name(log.name + ".rusage.json")
    with open(log, "wb") as fh:
        code = subprocess.run([sys.executable, "-c", _LAUNCHER, str(result), *cmd], stdout=fh,
                              stderr=subprocess.STDOUT, env=env).returncode
    try:
        code, maxrss_kib = json.loads(result.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # the launcher itself failed: its output is in the log
        return code or 1, 0, time.perf_counter() - began
    return int(code), int(maxrss_kib) * 1024, time.perf_counter() - began


def _step_times(variant: str, out: Path, log: Path) -> tuple[list[float], list[float]]:
    """Per-step seconds and losses of a finished run."""
    if variant.startswith("scdpo"):
        from ..eventlog import read_scalars

        points = [p for f in sorted((out / "logs" / "bench").glob("events.out.tfevents.*"))
                  for p in read_scalars(f) if p[0] == "train/loss"]
        points.sort(key=lambda p: p[1])
        return [b[2] - a[2] for a, b in zip(points, points[1:])], [p[3] for p in points]
    lines = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.startswith("{")]
    report = json.loads(lines[-1])
    # the first step's time is left out as scdpo's is (it has no earlier point to subtract)
    return report["step_seconds"][1:], report["losses"]


def run_benchmark(rounds: int = 5, steps: int = 20, skip: int = 2, batch_size: int = 2, rank: int = 8,
                  threads: Optional[int] = None, variants: tuple[str, ...] = VARIANTS, cache: Optional[str] = None,
                  progress: bool = True) -> dict[str, Any]:
    from .sd_shaped import VERSION, build_model, build_pairs

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if steps < skip + 3:
        raise ValueError(f"--steps must exceed --skip by at least 3 (got {steps} and {skip})")
    model = build_model(Path(cache) if cache else None)
    threads = threads or os.cpu_count() or 1
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="scdpo-bench-") as tmp:
        data = build_pairs(Path(tmp) / "pairs", n_pairs=16, size=64)
        for r in range(rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for variant in order:
                out = Path(tmp) / f"{variant}-{r}"
                log = Path(tmp) / f"{variant}-{r}.log"
                code, peak, seconds = _run(_command(variant, model, data, out, steps, batch_size, rank), env, log)
                if code != 0:
                    tail = log.read_text(encoding="utf-8", errors="replace")[-1500:]
                    raise RuntimeError(f"{variant} run {r} failed with exit code {code}:\n{tail}")
                times, losses = _step_times(variant, out, log)
                kept = times[max(0, skip - 1):]
                runs[variant].append({"peak_rss": peak, "step": statistics.median(kept), "wall": seconds,
                                      "final_loss": losses[-1] if losses else float("nan")})
                if progress:
                    print(f"  round {r + 1}/{rounds} {variant:14s} peak {peak / MiB:7.0f} MiB  step "
                          f"{1000 * runs[variant][-1]['step']:6.0f} ms  ({seconds:.0f} s)", file=sys.stderr, flush=True)
    summary = {v: {"peak_rss": statistics.median(x["peak_rss"] for x in rs),
                   "peak_rss_max": max(x["peak_rss"] for x in rs),
                   "step": statistics.median(x["step"] for x in rs),
                   "wall": statistics.median(x["wall"] for x in rs)} for v, rs in runs.items()}
    ratios = {}
    if "scdpo" in summary:
        for metric, other, target in TARGETS:
            if other in summary:
                value = summary["scdpo"][metric] / summary[other][metric]
                ratios[f"{metric}/{other}"] = {"ratio": value, "target": target, "met": value <= target}
    return {"model": VERSION, "rounds": rounds, "steps": steps, "skip": skip, "batch_size": batch_size, "rank": rank,
            "threads": threads, "runs": runs, "summary": summary, "ratios": ratios}


def format_report(report: dict[str, Any]) -> str:
    s = report["summary"]
    lines = [f"Trainer footprint on {report['model']} (random SD-1.x-shaped, 70 M-parameter UNet, 64 px), "
             f"{report['batch_size']} pairs/step, rank {report['rank']}, {report['threads']} threads; "
             f"{report['rounds']} interleaved rounds of {report['steps']} steps, fresh process per run",
             "", f"| {'trainer':50s} | step ms | process peak MiB |", f"| {'-' * 50} | ---: | ---: |"]
    for v, row in s.items():
        lines.append(f"| {TITLES[v]:50s} | {1000 * row['step']:7.0f} | {row['peak_rss'] / MiB:16,.0f} |")
    lines.append("")
    for key, r in report["ratios"].items():
        metric, other = key.split("/")
        name = "process peak" if metric == "peak_rss" else "step time"
        lines.append(f"{name:12s} scdpo / {other:14s} = {r['ratio']:.2f}x  (target <= {r['target']:.2f}x: "
                     f"{'met' if r['met'] else 'MISSED'})")
    lines.append("Peak: kernel ru_maxrss of each process's whole life (median over rounds); step: median of per-run "
                 "medians after the warm-up steps.")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="scdpo dev bench-trainers", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def run_from_args(args: argparse.Namespace) -> int:
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    report = run_benchmark(args.rounds, args.steps, args.skip, args.batch_size, args.rank, args.threads, variants,
                           args.cache)
    print(format_report(report))
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
