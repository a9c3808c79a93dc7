"""Benchmark: our trainer step (reference = the UNet with its LoRA disabled) vs the same loss with a
separate frozen reference UNet copy (how the Diffusion-DPO and SafetyDPO reference code do it).

Every variant runs the same step — :func:`scdpo.dpo.step.dpo_batch_loss` on the same toy model,
pairs, seed and LoRA, then backward and an AdamW step:

* ``copy``: a separate frozen reference UNet; images and prompts encoded at every step, as the
  Diffusion-DPO and SafetyDPO training scripts do (VAE and text encoder inside the step);
* ``adapter``: the reference is the same UNet with its LoRA disabled; inputs encoded at every step,
  so it differs from ``copy`` only in the reference call (identical losses);
* ``trainer``: what ``scdpo lora train`` runs: the ``adapter`` reference on inputs encoded once before
  training (:mod:`scdpo.dpo.inputs`), the text encoder released.

The targets compare ``trainer`` with ``copy``; the ``adapter`` row isolates the reference call.

* Step time: in each of ``repeats`` fresh processes both variants are built and their steps are
  interleaved one by one (A, B, A, B, ...), so load changes on a shared machine hit both alike;
  the median over all timed steps is reported.
* Peak memory: each variant runs alone in a fresh process (``python -m scdpo.dpo.bench
  --memory VARIANT``); the peak is the most tensor memory held at once from building the model
  through two training steps (UNet(s), LoRA, optimiser state, activations, gradients):

  - CUDA: ``torch.cuda.max_memory_allocated()`` minus ``memory_allocated()`` before (stats reset);
  - CPU: the maximum of the "Total Allocated" counter of torch's CPU allocator in the profiler's
    memory events (``torch.profiler``, ``profile_memory=True``): the CPU counterpart of
    ``max_memory_allocated``. Not ``tracemalloc`` (it sees only Python's allocator, not tensor
    storage) nor RSS (which mixes in code loading and malloc caching).

The memory ratio depends on how activations compare with the UNet's weights: the copy costs one
UNet of weights, activations grow with the micro-batch. ``--sweep`` adds the memory ratio for
micro-batches of 1, 2, 4 and 8 pairs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

VARIANTS = ("trainer", "adapter", "copy")
VARIANT_TITLES = {"trainer": "ours, as scdpo lora train runs it", "adapter": "  same, inputs encoded every step",
                  "copy": "separate frozen reference copy"}
SWEEP_BATCHES = (1, 2, 4, 8)


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=2,
                        help="pairs per micro-batch (default 2: 4 UNet samples per forward)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant and run, after 1 warm-up")
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process timing runs (default 3)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="checkpoint the policy UNet in both")
    parser.add_argument("--sweep", action="store_true", help="also measure the memory ratio at 1, 2, 4, 8 pairs")
    parser.add_argument("--json", action="store_true", help="also print the report as one JSON line")


def _build_variant(variant: str, rank: int, device, tokenizer_json: Optional[str], batch_size: int,
                   gradient_checkpointing: bool = False):
    """Toy model (seed-0 weights, the parent's tokenizer) + LoRA + optimiser + the variant's reference
    and batch (images, or for ``trainer`` inputs encoded once with the text encoder then released)."""
    import torch

    from ..toy.model import ToyTextToImage, _wrap_tokenizer
    from .inputs import encode_pairs
    from .pairs import ToyOraclePairs, collate_pairs
    from .step import attach_training_lora, disabled_adapter_reference, unet_call

    model = ToyTextToImage.from_scratch(0)
    if tokenizer_json:  # building the BPE tokenizer is not deterministic across processes
        model.tokenizer = _wrap_tokenizer(tokenizer_json)
    model.to(device)
    pairs = ToyOraclePairs(batch_size, seed=0)
    indices = list(range(batch_size))
    if variant == "trainer":
        batch = encode_pairs(model, pairs, indices, progress=False).batch(indices)
        for module in model.encoder_modules():
            module.to("meta")
    else:
        batch = collate_pairs([pairs[i] for i in indices])
    unet = model.unet
    reference = None
    if variant == "copy":
        reference_unet = copy.deepcopy(unet).requires_grad_(False).eval()
        ref_call = unet_call(reference_unet)

        def reference(noisy, t, cond):
            with torch.no_grad():
                return ref_call(noisy, t, cond)
    params = attach_training_lora(unet, rank, float(rank), ["to_q", "to_k", "to_v", "to_out.0"], seed=0)
    if variant != "copy":
        reference = disabled_adapter_reference(unet)
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    return model, unet_call(unet), reference, params, torch.optim.AdamW(params, lr=1e-4), batch


def _train_steps(model, policy, reference, params, optimizer, batch, steps: int, cuda: bool, first_seed: int = 1000):
    import torch

    from .step import dpo_batch_loss

    times, losses = [], []
    for step in range(steps):
        gen = torch.Generator().manual_seed(first_seed + step)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss, _ = dpo_batch_loss(model, policy, reference, batch, gen, beta=2500.0, lam=0.5, gamma=1.0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    return times, losses


def _cpu_peak_allocated(fn) -> int:
    """Peak bytes held by torch's CPU allocator while ``fn`` runs (profiler memory events)."""
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events
              if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0]
    if not totals:
        raise RuntimeError("the torch profiler reported no CPU memory events")
    return int(max(totals))


def measure_memory(variant: str, batch_size: int, rank: int, gradient_checkpointing: bool = False,
                   tokenizer_json: Optional[str] = None) -> int:
    """Peak tensor bytes of one variant (model build + 2 steps); run it in a fresh process."""
    import torch

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")

    def run():
        parts = _build_variant(variant, rank, device, tokenizer_json, batch_size, gradient_checkpointing)
        _train_steps(*parts, 2, cuda)

    if not cuda:
        return _cpu_peak_allocated(run)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run()
    return int(torch.cuda.max_memory_allocated() - before)


def measure_times(batch_size: int, steps: int, rank: int, gradient_checkpointing: bool = False,
                  tokenizer_json: Optional[str] = None, threads: int = 1) -> dict[str, Any]:
    """Both variants in this process, steps interleaved; per-variant step seconds and losses."""
    import torch

    torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    built = {v: _build_variant(v, rank, device, tokenizer_json, batch_size, gradient_checkpointing) for v in VARIANTS}
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    losses: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for step in range(steps + 1):
        for v in (VARIANTS if step % 2 == 0 else VARIANTS[::-1]):
            t, loss = _train_steps(*built[v], 1, cuda, first_seed=1000 + step)
            if step > 0:
                times[v] += t
            losses[v] += loss
    model, _, _, params, _, _ = built["adapter"]
    return {
        "device": device.type, "threads": threads, "times": times, "losses": losses,
        "unet_params": sum(p.numel() for p in model.unet.parameters() if not p.requires_grad),
        "lora_params": sum(p.numel() for p in params),
    }


def _subprocess_json(args: list[str]) -> Any:
    cmd = [sys.executable, "-m", "scdpo.dpo.bench", *args]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark subprocess {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_benchmark(batch_size: int = 2, repeats: int = 3, steps: int = 10, rank: int = 8,
                  gradient_checkpointing: bool = False, sweep: bool = False, progress: bool = True) -> dict[str, Any]:
    """Timing runs and fresh-process memory runs (see module docstring); medians and ratios ours / copy."""
    import tempfile

    from ..toy.model import build_tokenizer

    def say(msg: str) -> None:
        if progress:
            print(f"bench: {msg}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tok = Path(tmp) / "tokenizer.json"  # building the toy BPE tokenizer is not deterministic across processes
        tok.write_text(build_tokenizer().backend_tokenizer.to_str(), encoding="utf-8")
        common = ["--rank", str(rank), "--tokenizer-file", str(tok)] + (
            ["--gradient-checkpointing"] if gradient_checkpointing else [])
        timing = []
        for r in range(repeats):
            say(f"timing run {r + 1}/{repeats}")
            timing.append(_subprocess_json(["--times", "--batch-size", str(batch_size), "--steps", str(steps), *common]))
        memory: dict[int, dict[str, int]] = {}
        for b in sorted({batch_size, *(SWEEP_BATCHES if sweep else ())}):
            memory[b] = {}
            for v in VARIANTS:
                say(f"memory run {v}, {b} pairs")
                memory[b][v] = _subprocess_json(["--memory", v, "--batch-size", str(b), *common])
    step_seconds = {v: statistics.median(t for run in timing for t in run["times"][v]) for v in VARIANTS}
    def gap(a: str, b: str) -> float:
        return max(abs(x - y) for run in timing for x, y in zip(run["losses"][a], run["losses"][b]))

    loss_gap = gap("adapter", "copy")
    first = timing[0]
    return {
        "model": "toy", "device": first["device"], "threads": first["threads"], "batch_pairs": batch_size,
        "steps": steps, "repeats": repeats, "rank": rank, "gradient_checkpointing": gradient_checkpointing,
        "unet_params": first["unet_params"], "lora_params": first["lora_params"],
        "summary": {v: {"step_seconds": step_seconds[v], "peak_memory_bytes": memory[batch_size][v]} for v in VARIANTS},
        "ratio": {
            "peak_memory": memory[batch_size]["trainer"] / memory[batch_size]["copy"],
            "step_time": step_seconds["trainer"] / step_seconds["copy"],
            "reference_only_peak_memory": memory[batch_size]["adapter"] / memory[batch_size]["copy"],
            "reference_only_step_time": step_seconds["adapter"] / step_seconds["copy"],
        },
        "memory_sweep": {str(b): {**m, "ratio": m["trainer"] / m["copy"], "reference_only_ratio": m["adapter"] / m["copy"]}
                         for b, m in memory.items()},
        "same_losses": loss_gap == 0.0, "max_loss_difference": loss_gap,
        "trainer_max_loss_difference": gap("trainer", "copy"),
        "timing_runs": timing,
    }


def format_report(report: dict[str, Any]) -> str:
    s = report["summary"]
    mem = ("CUDA max_memory_allocated" if report["device"] == "cuda"
           else "peak of torch's CPU allocator total (torch.profiler memory events)")
    lines = [
        "SC-DPO trainer step: adapter-disabled reference (+ inputs encoded once) vs a separate frozen reference UNet copy",
        f"model: toy UNet ({report['unet_params'] / 1e6:.2f} M frozen params), LoRA rank {report['rank']} "
        f"({report['lora_params'] / 1e3:.1f} k trainable); batch {report['batch_pairs']} pairs "
        f"({2 * report['batch_pairs']} UNet samples per forward); gradient checkpointing "
        f"{'on' if report['gradient_checkpointing'] else 'off'}; device {report['device']}, {report['threads']} thread(s)",
        f"step = input encoding (copy and second row) + reference forward + policy forward + backward + AdamW step. Time: median of {report['steps']} steps x "
        f"{report['repeats']} fresh processes, both variants interleaved step by step. Memory: each variant alone in a "
        f"fresh process, {mem}, from building the model through 2 steps.",
        "",
        f"{'variant':<40} {'step time':>12} {'peak memory':>14}",
    ]
    for v in VARIANTS:
        lines.append(f"{VARIANT_TITLES[v]:<40} {s[v]['step_seconds'] * 1000:>9.1f} ms "
                     f"{s[v]['peak_memory_bytes'] / 2**20:>11.1f} MiB")
    r = report["ratio"]
    lines += [
        f"{'ratio ours / copy':<40} {r['step_time']:>11.2f}x {r['peak_memory']:>13.2f}x",
        f"{'  reference call alone (row 2 / copy)':<40} {r['reference_only_step_time']:>11.2f}x "
        f"{r['reference_only_peak_memory']:>13.2f}x",
        f"targets: peak memory <= 0.70x ({'met' if r['peak_memory'] <= 0.7 else 'NOT met'}), "
        f"step time <= 1.00x ({'met' if r['step_time'] <= 1.0 else 'NOT met'})",
        f"identical losses, reference call alone vs copy: {report['same_losses']} (max difference "
        f"{report['max_loss_difference']:.2e}); ours vs copy: max difference {report['trainer_max_loss_difference']:.2e} "
        "(inputs encoded in other batch sizes)",
    ]
    if len(report["memory_sweep"]) > 1:
        lines.append("peak memory ratio by micro-batch: " + ", ".join(
            f"{b} pairs {m['ratio']:.2f}x ({m['trainer'] / 2**20:.1f} / {m['copy'] / 2**20:.1f} MiB)"
            for b, m in sorted(report["memory_sweep"].items(), key=lambda kv: int(kv[0]))))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scdpo.dpo.bench", description=__doc__.split("\n")[0])
    add_bench_arguments(parser)
    parser.add_argument("--memory", choices=VARIANTS, default=None, help="(internal) peak memory of one variant")
    parser.add_argument("--times", action="store_true", help="(internal) one interleaved timing run")
    parser.add_argument("--tokenizer-file", default=None, help="(internal) toy tokenizer JSON shared by the runs")
    args = parser.parse_args(argv)
    tok = Path(args.tokenizer_file).read_text(encoding="utf-8") if args.tokenizer_file else None
    if args.memory:
        print(json.dumps(measure_memory(args.memory, args.batch_size, args.rank, args.gradient_checkpointing, tok)))
        return 0
    if args.times:
        print(json.dumps(measure_times(args.batch_size, args.steps, args.rank, args.gradient_checkpointing, tok)))
        return 0
    report = run_benchmark(args.batch_size, args.repeats, args.steps, args.rank, args.gradient_checkpointing, args.sweep)
    print(format_report(report))
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["run_benchmark", "format_report", "measure_memory", "measure_times"]
