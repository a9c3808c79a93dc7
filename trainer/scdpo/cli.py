"""The ``scdpo`` command line.

Commands are grouped by what they act on (``scdpo data build``, ``scdpo cost train``, ``scdpo lora
train``, ``scdpo toy pretrain``); the few that run a whole job stand alone (``demo``, ``generate``,
``eval``, ``ui``), and developer tools live under ``scdpo dev``. Each feature module owns its
sub-commands: a ``register``-style function adds parsers whose ``func`` default is called with the
parsed ``args`` and returns an exit code. A module that fails to import (a missing optional
dependency) costs only its own commands.

The flat names of the previous release (``scdpo train``, ``scdpo build-dataset``, ...) still work
for one release: :data:`LEGACY_NAMES` rewrites them, with a note on stderr.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
from dataclasses import dataclass
from typing import Callable, Optional

from . import __version__
from .errors import ScdpoError, one_line

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@dataclass(frozen=True)
class Group:
    """``scdpo WORD ...``: a command group and the ``module:function`` registrars that fill it."""

    word: str
    help: str
    registrars: tuple[str, ...]


# Commands that stand alone, in the order ``scdpo --help`` lists them.
TOP_LEVEL = ("scdpo.demo:register", "scdpo.recipe:register", "scdpo.generate:register",
             "scdpo.evaluation.commands:register")
GROUPS = (
    Group("data", "build, extend, import and check SCP preference datasets", ("scdpo.scp.commands:register",)),
    Group("cost", "train a safety cost model; score images with one", ("scdpo.cost.commands:register",)),
    Group("lora", "train, merge, inspect and convert safety LoRAs",
          ("scdpo.dpo.commands:register", "scdpo.lora.commands:register")),
    Group("toy", "the built-in toy world: pretrain and evaluate its base model, train its image encoder",
          ("scdpo.toy.commands:register", "scdpo.cost.commands:register_toy")),
)
UI = "scdpo.ui.commands:register"
DEVELOPER = Group("dev", "developer tools: benchmarks and ablations (not needed to use the product)",
                  ("scdpo.dpo.commands:register_dev", "scdpo.bench.commands:register_dev",
                   "scdpo.cost.commands:register_dev", "scdpo.clidoc:register_dev"))

# Old flat command -> its words now. Kept for one release, then removed.
LEGACY_NAMES = {
    "train": ("lora", "train"),
    "train-experts": ("lora", "train-experts"),
    "merge": ("lora", "merge"),
    "train-cost": ("cost", "train"),
    "score": ("cost", "score"),
    "build-dataset": ("data", "build"),
    "mine-attacks": ("data", "mine-attacks"),
    "import-dataset": ("data", "import"),
    "validate-dataset": ("data", "validate"),
    "train-toy-encoder": ("toy", "train-encoder"),
    "cost-ablation": ("dev", "cost-ablation"),
    "bench": ("dev", "bench"),
}


def _call(registrar: str, sub: argparse._SubParsersAction) -> None:
    module, _, function = registrar.partition(":")
    getattr(importlib.import_module(module), function)(sub)


def _add_group(sub: argparse._SubParsersAction, group: Group,
               on_error: Optional[Callable[[str, Exception], None]]) -> None:
    parser = sub.add_parser(group.word, help=group.help, description=group.help[:1].upper() + group.help[1:] + ".")
    inner = parser.add_subparsers(dest=f"{group.word}_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: parser.print_help() or 0)
    for registrar in group.registrars:
        _register(registrar, inner, on_error)


def _register(registrar: str, sub: argparse._SubParsersAction,
              on_error: Optional[Callable[[str, Exception], None]]) -> None:
    if on_error is None:
        _call(registrar, sub)
        return
    try:
        _call(registrar, sub)
    except Exception as exc:  # noqa: BLE001 - the caller reports it per module
        on_error(registrar, exc)


def add_commands(sub: argparse._SubParsersAction, *, ui: bool = True,
                 on_error: Optional[Callable[[str, Exception], None]] = None) -> None:
    """Every command into ``sub``; ``on_error(registrar, exc)`` receives a module that failed to
    import instead of raising (the web UI lists those)."""
    for registrar in TOP_LEVEL:
        _register(registrar, sub, on_error)
    for group in GROUPS:
        _add_group(sub, group, on_error)
    if ui:
        _register(UI, sub, on_error)
    _add_group(sub, DEVELOPER, on_error)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scdpo",
        description=(
            "SC-DPO Safe Diffusion: train safety LoRAs (Safety-Constrained DPO) and a safety cost "
            "model for Stable-Diffusion-family UNets. With no weights to download, `scdpo demo` "
            "runs the whole method on the built-in toy world on a CPU."
        ),
        epilog="Run `scdpo COMMAND --help` (or `scdpo GROUP ACTION --help`) for options. "
               "The manual: docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_commands(sub)
    return parser


def translate_legacy(argv: list[str]) -> list[str]:
    """``argv`` with a previous release's flat command name replaced by its group words."""
    for i, word in enumerate(argv):
        if word.startswith("-"):
            continue  # a global option such as -v before the command
        if word in LEGACY_NAMES:
            new = LEGACY_NAMES[word]
            print(f"note: `scdpo {word}` is now `scdpo {' '.join(new)}`; the old name goes away in the next "
                  "release", file=sys.stderr)
            return [*argv[:i], *new, *argv[i + 1:]]
        break
    return argv


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub behind the user's back
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(translate_legacy(list(sys.argv[1:] if argv is None else argv)))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except ScdpoError as exc:
        if args.verbose:
            print(f"error: {exc.detail}", file=sys.stderr)
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in _DISK_FULL or args.verbose:
            raise
        # a write outside the atomic helpers (a log, a progress file): still one line, not a traceback
        print(f"error: {one_line(exc.strerror or exc)} ({exc.filename or 'output'}); free disk space or "
              "choose another output location", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
