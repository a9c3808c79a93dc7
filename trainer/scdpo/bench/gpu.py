"""GPU check of the training step: SD1.5 at 512² and SDXL at 1024², random weights of the real UNets.

``python -m scdpo.bench.gpu`` runs, for each family, the step ``scdpo lora train`` runs (the same
functions: :func:`~scdpo.dpo.step.dpo_batch_loss` on encoded inputs, the reference = the UNet with
its LoRA switched off, AdamW on a rank-16 fp32 LoRA) with the frozen UNet in the dtype the trainer
picks for the device (bf16 where supported), gradient checkpointing on, one preference pair per
step, and prints step time and peak memory beside the memory plan's estimate
(:func:`~scdpo.sd.memory.estimate_training_memory`) and the targets (SD1.5 ≤ 4 GB, SDXL ≤ 12 GB).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` from just before the UNet is built through
the last step (weights included, as the plan counts them); on a CPU the process's peak resident
memory above what it held before the UNet was built. The UNet is built weightless and filled with
random numbers in place, so no fp32 copy is ever made. Nothing is downloaded: the architectures
come from the shipped configs.

``--resolution`` and ``--steps`` make a CPU run practical (``--device cpu --resolution 64``); a
test runs :func:`measure` on a tiny UNet config.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any, Optional

import torch

TARGET_GIB = {"sd15": 4.0, "sdxl": 12.0}
RESOLUTION = {"sd15": 512, "sdxl": 1024}
GiB = 2**30


def _peak_tracker(device: torch.device):
    """``(reset, read)``: start counting, and the peak bytes since then."""
    if device.type == "cuda":
        def reset() -> int:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            return torch.cuda.memory_allocated(device)

        def read(start: int) -> int:
            torch.cuda.synchronize(device)
            return torch.cuda.max_memory_allocated(device)
        return reset, read
    from ..dpo.runtime import release_freed_memory
    from ..sd.memory import _reset_peak, _rss_bytes

    def reset_cpu() -> int:
        release_freed_memory()
        _reset_peak()
        return _rss_bytes()

    def read_cpu(start: int) -> int:
        return _rss_bytes("VmHWM") - start
    return reset_cpu, read_cpu


def measure(family: str, resolution: Optional[int] = None, steps: int = 3, rank: int = 16,
            device: Optional[str] = None, gradient_checkpointing: bool = True,
            unet_config: Optional[dict] = None) -> dict[str, Any]:
    """One family's training steps; step seconds, peak bytes and the plan's estimate."""
    from diffusers import DDPMScheduler

    from ..dpo.inputs import CLEAN_PAIR, EncodedPairs
    from ..dpo.runtime import dtype_name, resolve_base_dtype
    from ..dpo.step import attach_training_lora, disabled_adapter_reference, dpo_batch_loss, unet_call
    from ..lora.naming import DEFAULT_TARGET_MODULES
    from ..models import resolve_device
    from ..pipeline import Conditioning
    from ..sd.configs import config_dir
    from ..sd.memory import _random_unet, estimate_training_memory
    from ..sd.model import SDTextToImage

    dev = resolve_device(device)
    resolution = resolution or RESOLUTION[family]
    dtype = resolve_base_dtype("auto", dev, toy=False)
    reset, read = _peak_tracker(dev)
    start = reset()
    unet = _random_unet(family, dtype, config=unet_config).to(dev)
    scheduler = DDPMScheduler.from_pretrained(str(config_dir(family)), subfolder="scheduler")
    model = SDTextToImage(family, unet, None, [], [], scheduler, model_id=f"random-{family}", vae_scale_factor=8)
    params = attach_training_lora(unet, rank, float(rank), DEFAULT_TARGET_MODULES)
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    # the encoded inputs of two pairs (a harmful and a clean one), as the trainer caches them
    g = torch.Generator().manual_seed(0)
    h = resolution // 8
    cfg = unet.config
    hidden = torch.randn(3, 77, cfg.cross_attention_dim, generator=g).to(dtype)
    added = {}
    if family == "sdxl":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        added = {"text_embeds": torch.randn(3, pooled, generator=g).to(dtype), "time_ids": torch.zeros(3, 6, dtype=dtype)}
    inputs = EncodedPairs([0, 1], torch.randn(2, 2, cfg.in_channels, h, h, generator=g).to(dtype),
                          torch.tensor([0, 1]), Conditioning(hidden, added), 2, torch.tensor([-2.0, -1.0]),
                          torch.tensor([2.0, -0.5]), resolution, resolution, torch.tensor([0, CLEAN_PAIR]), ["nudity"])
    policy, reference = unet_call(unet), disabled_adapter_reference(unet)
    seconds = []
    for step in range(steps):
        began = time.perf_counter()
        loss, _ = dpo_batch_loss(model, policy, reference, inputs.batch([step % 2]),
                                 torch.Generator().manual_seed(step), beta=2500.0, lam=0.5, gamma=1.0, device=dev)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds.append(time.perf_counter() - began)
    peak = read(start)
    plan = None if unet_config else estimate_training_memory(family, resolution, rank).total_bytes
    return {"family": family, "resolution": resolution, "device": str(dev), "base_dtype": dtype_name(dtype),
            "rank": rank, "gradient_checkpointing": gradient_checkpointing, "steps": steps,
            "step_seconds": seconds, "median_step_seconds": statistics.median(seconds[1:] or seconds),
            "peak_bytes": peak, "plan_bytes": plan,
            "peak_kind": "max_memory_allocated" if dev.type == "cuda" else "peak RSS above start",
            "target_gib": TARGET_GIB[family] if resolution == RESOLUTION[family] else None,
            "finite_loss": bool(torch.isfinite(loss).item())}


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | resolution | device, base dtype | step s | peak GiB | plan GiB | target |",
             "| --- | ---: | --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        plan = f"{r['plan_bytes'] / GiB:.2f}" if r["plan_bytes"] else "-"
        target = "-"
        if r["target_gib"] is not None and r["device"].startswith("cuda"):
            met = r["peak_bytes"] / GiB <= r["target_gib"]
            target = f"<= {r['target_gib']:.0f} GiB: {'met' if met else 'MISSED'}"
        lines.append(f"| {r['family']} | {r['resolution']}² | {r['device']}, {r['base_dtype']} | "
                     f"{r['median_step_seconds']:.2f} | {r['peak_bytes'] / GiB:.2f} | {plan} | {target} |")
    lines.append(f"peak: {rows[0]['peak_kind'] if rows else ''}; rank 16 LoRA, gradient checkpointing, one pair per "
                 "step, random weights of the real UNet architectures")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scdpo.bench.gpu", description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="sd15,sdxl", help="comma list of sd15, sdxl")
    ap.add_argument("--resolution", type=int, default=None, help="image size (default: 512 for sd15, 1024 for sdxl)")
    ap.add_argument("--steps", type=int, default=3, help="training steps per family (the first is left out of the time)")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cuda, cpu")
    ap.add_argument("--no-gradient-checkpointing", action="store_true")
    ap.add_argument("--json", action="store_true", help="also print the rows as one JSON line")
    args = ap.parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    bad = [f for f in families if f not in RESOLUTION]
    if bad:
        print(f"error: unknown family {bad[0]!r}; choose from sd15, sdxl", file=sys.stderr)
        return 2
    from ..models import resolve_device

    if resolve_device(args.device).type == "cpu" and args.resolution is None:
        print("error: no CUDA device; a full-resolution step of the full-size UNets takes many minutes on a CPU. "
              "Run it on a GPU, or pass --resolution 64 for a CPU smoke run", file=sys.stderr)
        return 2
    rows = []
    for family in families:
        rows.append(measure(family, args.resolution, args.steps, device=args.device,
                            gradient_checkpointing=not args.no_gradient_checkpointing))
        if resolve_device(args.device).type == "cuda":
            torch.cuda.empty_cache()
    print(format_rows(rows))
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
