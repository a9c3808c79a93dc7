"""``docs/cli.md`` written from the argparse tree itself, so the manual cannot drift from ``--help``.

``scdpo dev cli-docs --out docs/cli.md`` regenerates it; a test fails when the file in the repository
differs from what this module writes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterator

HEADER = """# Command reference

Generated from the command line itself by `scdpo dev cli-docs --out docs/cli.md`; do not edit by hand.
Every command also answers `--help`. Commands are grouped by what they act on: `data` (SCP
preference datasets), `cost` (the safety cost model), `lora` (safety LoRAs), `toy` (the built-in toy
world); `demo`, `generate`, `eval` and `ui` stand alone; `dev` holds developer tools.
"""


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            return [(name, helps.get(name) or "", sub) for name, sub in action.choices.items()]
    return []


def _walk(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str,
                                                                                     argparse.ArgumentParser]]:
    for name, help_text, sub in _subcommands(parser):
        yield (*words, name), help_text, sub
        yield from _walk(sub, (*words, name))


def _anchor(words: tuple[str, ...]) -> str:
    return "scdpo-" + "-".join(words)


def render(parser: argparse.ArgumentParser | None = None, width: int = 100) -> str:
    """The whole reference as Markdown: an index, then each command's ``--help`` text."""
    import os

    from .cli import build_parser

    parser = parser or build_parser()
    entries = list(_walk(parser, ()))
    lines = [HEADER, "## Commands", ""]
    for words, help_text, sub in entries:
        indent = "  " * (len(words) - 1)
        lines.append(f"{indent}- [`scdpo {' '.join(words)}`](#{_anchor(words)}): {help_text}")
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)  # argparse wraps at $COLUMNS; fix it so the file is stable
    try:
        for words, help_text, sub in entries:
            lines += ["", f"## scdpo {' '.join(words)}", "", "```text", sub.format_help().rstrip(), "```"]
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(lines) + "\n"


def register_dev(sub: argparse._SubParsersAction) -> None:
    """``scdpo dev cli-docs``."""
    p = sub.add_parser("cli-docs", help="write the command reference (docs/cli.md) from the argparse tree",
                       description="Write docs/cli.md: every command's --help text, generated, so it cannot drift.")
    p.add_argument("--out", default=None, help="file to write (default: print to stdout)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    text = render()
    if args.out:
        from .fileio import write_text_atomic

        write_text_atomic(Path(args.out), text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0
