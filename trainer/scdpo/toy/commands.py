"""``scdpo toy pretrain|evaluate``: pretrain and evaluate the toy world's base model."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="train the toy text-to-image base model from scratch",
        description="Train the toy UNet + text encoder from scratch on all toy prompts (harmful ones "
        "included). Checkpoints atomically every --checkpoint-every steps; rerunning the same command "
        "after an interruption resumes exactly where it stopped.",
    )
    p.add_argument("--steps", type=int, default=2000, help="optimisation steps (default 2000)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--out", default="weights", help="output folder (default: weights)")
    p.add_argument("--name", default="toy_base", help="output file stem (default: toy_base)")
    p.set_defaults(func=_pretrain)

    e = sub.add_parser(
        "evaluate",
        help="oracle-judged quality of a toy base model",
        description="Generate for the held-out prompt suites and report the oracle-judged object+colour "
        "accuracy on clean prompts and the unsafe-motif rate per category and surface form.",
    )
    e.add_argument("--weights", default=None, help="toy base checkpoint (default: the shipped one)")
    e.add_argument("--lora", default=None, help="optional safety LoRA applied to the UNet")
    e.add_argument("--n", type=int, default=48, help="prompts per suite cell (default 48)")
    e.add_argument("--seed", type=int, default=1234)
    e.add_argument("--steps", type=int, default=20)
    e.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    e.set_defaults(func=_evaluate)


def _pretrain(args) -> int:
    from .pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         checkpoint_every=args.checkpoint_every, out=args.out, name=args.name)
    path = pretrain(cfg)
    print(f"wrote {path}")
    return 0


def _evaluate(args) -> int:
    from .evaluate import evaluate_base, format_report

    report = evaluate_base(args.weights, lora=args.lora, n=args.n, seed=args.seed, steps=args.steps)
    print(format_report(report))
    if args.json:
        print(json.dumps(report))
    return 0
