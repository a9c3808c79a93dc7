"""``scdpo dev bench-trainers``."""

from __future__ import annotations

import argparse


def register_dev(sub: argparse._SubParsersAction) -> None:
    from .footprint import add_arguments

    p = sub.add_parser(
        "bench-trainers",
        help="benchmark: process peak memory and step time of scdpo lora train vs the two-UNet trainer designs",
        description="Builds a mid-size random SD-1.x-shaped model once, then runs scdpo lora train, a two-UNet LoRA "
        "trainer (SafetyDPO design) and a two-UNet full fine-tune (Diffusion-DPO design) in fresh processes, "
        "interleaved, and prints peak resident memory, step time and the ratios. See scdpo.bench.footprint.",
    )
    add_arguments(p)
    p.set_defaults(func=_bench_trainers)


def _bench_trainers(args) -> int:
    from .footprint import run_from_args

    return run_from_args(args)
