"""``scdpo lora train|train-experts|merge`` and ``scdpo dev bench``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ScdpoError


def register(sub: argparse._SubParsersAction) -> None:
    """``scdpo lora train|train-experts|merge``."""
    from .config import add_config_arguments

    t = sub.add_parser(
        "train",
        help="train a safety LoRA with SC-DPO (or Diffusion-DPO / a SafetyDPO expert)",
        description="Train a safety LoRA on SCP preference pairs with SC-DPO (docs/method.md). --lam 0 --gamma 0 "
        "is Diffusion-DPO; --categories C trains a SafetyDPO expert. Options come from --config FILE.toml, then "
        "flags. Writes <out>/<name>.safetensors (kohya LoRA), <name>.config.toml and TensorBoard logs in "
        "<out>/logs/<name>. Checkpoints atomically; rerunning the same command after an interruption resumes "
        "exactly. Works under `accelerate launch` (several processes / GPUs).",
    )
    t.add_argument("--config", default=None, help="TOML file with training options (flags override it)")
    add_config_arguments(t)
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)

    e = sub.add_parser(
        "train-experts",
        help="SafetyDPO baseline: one Diffusion-DPO expert per category, merged two ways",
        description="Train one Diffusion-DPO LoRA expert per unsafe category (lambda=gamma=0, that category's "
        "pairs) and write <name>_activation.safetensors (activation-based merge calibrated on each category's "
        "pairs) and <name>_average.safetensors (mean weight delta).",
    )
    e.add_argument("--config", default=None, help="TOML file with training options (flags override it)")
    add_config_arguments(e)
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=_train_experts)

    m = sub.add_parser(
        "merge",
        help="merge kohya LoRA experts (average or activation-based)",
        description="Merge kohya LoRA files into one, exactly (rank = sum of ranks). 'activation' keeps, per "
        "module output row, the expert whose delta is most active: on its category's calibration inputs when "
        "--base and --data are given, else by the row's weight-delta norm. See scdpo.dpo.experts.",
    )
    m.add_argument("loras", nargs="+", help="LoRA .safetensors files (experts)")
    m.add_argument("--method", choices=("average", "activation"), default="activation")
    m.add_argument("--out", required=True, help="merged LoRA file to write")
    m.add_argument("--base", default=None, help="base model, for calibrated activation merging")
    m.add_argument("--data", default=None, help="SCP dataset folder or 'toy-oracle', for calibration")
    m.add_argument("--calibration-pairs", type=int, default=16, help="pairs per category for calibration")
    m.set_defaults(func=_merge)


def register_dev(sub: argparse._SubParsersAction) -> None:
    """``scdpo dev bench``."""
    b = sub.add_parser(
        "bench",
        help="benchmark: adapter-disabled reference vs a separate frozen reference UNet copy",
        description="Same toy model, batch and loss; step time and peak memory of our trainer step (reference "
        "= the UNet with its LoRA disabled) vs a step whose reference is a frozen deep copy of the UNet (how "
        "the Diffusion-DPO / SafetyDPO reference code does it). Runs in fresh subprocesses; see scdpo.dpo.bench.",
    )
    from .bench import add_bench_arguments

    add_bench_arguments(b)
    b.set_defaults(func=_bench)


def _train(args) -> int:
    from .config import config_from_args
    from .train import summary_of, train_lora

    cfg = config_from_args(args)
    path = train_lora(cfg, progress=not args.quiet)
    from .runtime import is_main_process

    if is_main_process():
        s = summary_of(path)
        print(f"wrote {path} ({cfg.method}; {s.get('steps')} steps, loss {s.get('loss_ema', float('nan')):.4f}, "
              f"implicit accuracy {s.get('implicit_accuracy_ema', float('nan')):.2f})")
    return 0


def _train_experts(args) -> int:
    from ..models import load_base_model
    from .config import config_from_args
    from .experts import collect_calibration_inputs, merge_loras, train_safetydpo_experts
    from .pairs import load_pair_dataset
    from ..lora import load_lora

    cfg = config_from_args(args)
    model = load_base_model(cfg.base, device="cpu" if cfg.cpu else None)
    dataset = load_pair_dataset(cfg)
    experts = train_safetydpo_experts(cfg, cfg.categories or None, model=model, dataset=dataset,
                                      progress=not args.quiet)
    out = Path(cfg.out)
    names = sorted({n for p in experts.values() for n in load_lora(p).unet_module_names})
    calibration = collect_calibration_inputs(model, dataset, list(experts), names, seed=cfg.seed)
    act = merge_loras(list(experts.values()), "activation", calibration, out=out / f"{cfg.name}_activation.safetensors")
    avg = merge_loras(list(experts.values()), "average", out=out / f"{cfg.name}_average.safetensors")
    for p in experts.values():
        print(f"wrote expert {p}")
    print(f"wrote {act.path} and {avg.path}")
    return 0


def merge_expert_files(loras: list[str], method: str, out: str | Path, base: str | None = None,
                       data: str | None = None, calibration_pairs: int = 16):
    """Merge kohya LoRA experts into ``out``; ``activation`` merging is calibrated on each expert's category
    pairs when ``base`` and ``data`` are both given. Returns the merged LoRA."""
    from .experts import collect_calibration_inputs, merge_loras

    calibration = None
    if method == "activation" and (base or data):
        if not (base and data):
            raise ScdpoError("calibrated activation merging needs both --base and --data (or neither)")
        from ..lora import load_lora
        from ..models import load_base_model
        from .config import TrainConfig
        from .pairs import load_pair_dataset

        experts = [load_lora(p) for p in loras]
        cats = [e.metadata.get("scdpo_category", "") for e in experts]
        if not all(cats):
            raise ScdpoError("calibrated merging needs every LoRA to name its category (scdpo_category metadata); "
                             "drop --base/--data to merge by weight magnitude")
        model = load_base_model(base)
        dataset = load_pair_dataset(TrainConfig(data=data))
        names = sorted({n for e in experts for n in e.unet_module_names})
        calibration = collect_calibration_inputs(model, dataset, sorted(set(cats)), names, calibration_pairs)
    return merge_loras(loras, method, calibration, out=out)


def _merge(args) -> int:
    merged = merge_expert_files(args.loras, args.method, args.out, args.base, args.data, args.calibration_pairs)
    print(f"wrote {merged.path} ({args.method}, rank {merged.rank}, {len(merged.module_names)} modules)")
    return 0


def _bench(args) -> int:
    from .bench import format_report, run_benchmark

    report = run_benchmark(args.batch_size, args.repeats, args.steps, args.rank, args.gradient_checkpointing,
                           args.sweep)
    print(format_report(report))
    if args.json:
        print(json.dumps(report))
    return 0
