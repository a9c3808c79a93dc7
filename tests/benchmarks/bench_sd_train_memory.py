"""Resident memory of ``scdpo train`` on a full-size SD1.5 checkpoint, with and without cached inputs.

Run: ``MALLOC_MMAP_THRESHOLD_=65536 .venv/bin/python tests/benchmarks/bench_sd_train_memory.py [--size 64] [--steps 2]``

Each variant runs in its own process, as ``scdpo train`` runs: ``train_lora`` loads the random-weight
SD1.5 single file itself (fp16, LDM keys; built once by ``tests/sd/sd_ldm_checkpoints.py`` and cached
under ``~/.cache/scdpo-tests``), copies it to bf16 in process memory (as a GPU load would; the
memory-mapped file would otherwise stay mostly out of resident memory) and trains a rank-16 LoRA with gradient checkpointing, one pair per
micro-batch, on 8 pairs of ``--size`` px images. Printed side by side:

* resident memory when training starts (weights that stay resident), and
* peak resident memory during the training steps,

for ``--cache-inputs`` (latents + text embeddings encoded once, text encoder and VAE released) and
``--no-cache-inputs`` (encoders resident, every step encodes). On a GPU the same difference is the
text encoder + VAE weights (fp16: 0.23 + 0.16 GiB for SD1.5) plus the VAE encoder's activations.
``MALLOC_MMAP_THRESHOLD_`` makes glibc return freed blocks, so resident memory follows tensor memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
GIB = 1024**3


def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def child(ckpt: str, out: str, size: int, steps: int, cache: bool) -> dict:
    import torch

    import scdpo.dpo.train as train_module
    import scdpo.models
    from scdpo.dpo import TrainConfig, train_lora

    load = scdpo.models.load_base_model

    def load_materialised(spec, device=None, dtype=None):
        # safetensors weights are memory-mapped and only paged in when touched, which hides them
        # from resident memory on CPU; a bf16 copy puts them in process memory as a GPU load would.
        return load(spec, device=device, dtype=dtype).to(dtype=torch.bfloat16)

    scdpo.models.load_base_model = load_materialised

    g = torch.Generator().manual_seed(0)
    rows = [dict(prompt=f"a photo number {k}", winner=torch.rand(size, size, 3, generator=g),
                 loser=torch.rand(size, size, 3, generator=g), winner_cost=-3.0, loser_cost=3.0, is_harmful=True,
                 category="nudity") for k in range(8)]
    seen: dict = {}
    loss_fn = train_module.dpo_batch_loss

    def first_step_marks(*args, **kwargs):
        if "start" not in seen:  # everything before the first step (loading, encoding) is excluded
            import gc

            gc.collect()
            seen["start"] = _status("VmRSS")
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # VmHWM := VmRSS
        return loss_fn(*args, **kwargs)

    train_module.dpo_batch_loss = first_step_marks
    cfg = TrainConfig(base=ckpt, out=out, name=f"cache{int(cache)}", cache_inputs=cache, steps=steps, batch_size=1,
                      rank=16, alpha=16.0, gradient_checkpointing=True, checkpoint_every=0, warmup_steps=1,
                      lr=1e-4, cpu=True)
    train_lora(cfg, dataset=rows, progress=False)
    return {"cache_inputs": cache, "start_rss": seen["start"], "train_peak": _status("VmHWM")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64, help="image size in px (latents size/8)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--child", nargs=3, metavar=("CKPT", "OUT", "CACHE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        ckpt, out, cache = args.child
        print(json.dumps(child(ckpt, out, args.size, args.steps, cache == "1")))
        return
    sys.path.insert(0, str(HERE.parent / "sd"))
    from sd_ldm_checkpoints import cached_checkpoint

    from scdpo.sd.configs import config_dir

    ckpt = cached_checkpoint("sd15_random_fp16", config_dir("sd15"), "sd15")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", "65536"),
           "HF_HUB_OFFLINE": "1"}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for cache in (True, False):
            cmd = [sys.executable, __file__, "--size", str(args.size), "--steps", str(args.steps),
                   "--child", str(ckpt), tmp, "1" if cache else "0"]
            line = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            results.append(json.loads(line))
            r = results[-1]
            print(f"cache_inputs={str(cache):5}  resident at first step {r['start_rss'] / GIB:6.2f} GiB   "
                  f"peak during training {r['train_peak'] / GIB:6.2f} GiB", flush=True)
    cached, plain = results
    print(f"SD1.5 bf16, {args.size}px, rank 16, checkpointing: peak with cached inputs / without = "
          f"{cached['train_peak'] / plain['train_peak']:.2f}x "
          f"({(plain['train_peak'] - cached['train_peak']) / GIB:.2f} GiB less)")
    print(json.dumps({"size": args.size, "steps": args.steps, "results": results}))


if __name__ == "__main__":
    main()
