"""The ``scdpo`` command line.

Each feature module owns its sub-commands: it defines ``register(subparsers)`` which adds
parsers whose ``func`` default is called with the parsed ``args`` and returns an exit code.
Modules are imported lazily only to build the parser, so ``scdpo --help`` stays fast-ish and a
missing optional dependency in one command does not break the others.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from . import __version__
from .errors import ScdpoError

# Add a module here to give it sub-commands (it must define ``register(subparsers)``).
COMMAND_MODULES = [
    "scdpo.toy.commands",
    "scdpo.generate",
    "scdpo.evaluation.commands",
    "scdpo.demo",
    "scdpo.cost.commands",
    "scdpo.scp.commands",
    "scdpo.dpo.commands",
    "scdpo.lora.commands",
    "scdpo.ui.commands",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scdpo",
        description=(
            "SC-DPO Safe Diffusion: train safety LoRAs (Safety-Constrained DPO) and a safety cost "
            "model for Stable-Diffusion-family UNets. With no weights to download, `scdpo demo` "
            "runs the whole method on the built-in toy world on a CPU."
        ),
        epilog="Run `scdpo COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub behind the user's back
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except ScdpoError as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
