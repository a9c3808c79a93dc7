"""Form fields read from the ``scdpo`` command line itself, and form values turned back into argv.

The web UI never hard-codes a command's flags: :func:`command_specs` walks the real argparse
sub-parsers (the ones ``scdpo COMMAND --help`` prints), so a flag added or renamed in a feature
module shows up in the UI as it is. :func:`argv_for` turns the values a user typed into the
argv that is then run as ``python -m scdpo ...``; a value equal to the flag's default is left
out, so the command shown in the page stays as short as a human would write it.

Nothing here imports gradio. Specs are plain JSON-able dataclasses, so they can also be read
from another Python (``python -m scdpo.ui.forms train eval`` prints them as JSON): the jobs may
run in an environment other than the UI's (e.g. inside a webui whose Python lacks diffusers).
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional, Sequence

from ..errors import ScdpoError

# Field kinds (how a form shows the option and how argv_for writes it back):
TEXT, INT, FLOAT, CHOICE, FLAG, TRISTATE, MULTI = "text", "int", "float", "choice", "flag", "tristate", "multi"
TRISTATE_CHOICES = ("default", "on", "off")  # a --x/--no-x flag whose default lives elsewhere (a config)

_DEFAULT_IN_HELP = re.compile(r"\(default:?\s*([^()]*)\)\s*$")


class FormError(ScdpoError):
    """A form value cannot be passed to the command (wrong type, not one of the choices, missing)."""


@dataclass(frozen=True)
class OptionSpec:
    """One command-line option as a form field.

    ``default``: the value argparse uses when the flag is absent (None when the flag is absent
    from the namespace, as ``scdpo lora train``'s config-backed flags are); ``default_text``: the
    default as the help text states it, shown as a placeholder.
    """

    dest: str
    flag: str                  # the long option string (or the dest of a positional)
    kind: str                  # TEXT | INT | FLOAT | CHOICE | FLAG | TRISTATE | MULTI
    help: str = ""
    default: Any = None
    default_text: str = ""
    choices: tuple = ()
    required: bool = False
    positional: bool = False
    negative_flag: str = ""    # TRISTATE: the --no-x spelling
    repeat_flag: bool = False  # MULTI: one flag per value (action="append") rather than nargs

    @property
    def label(self) -> str:
        return self.flag if not self.positional else self.dest


@dataclass(frozen=True)
class CommandSpec:
    """A ``scdpo`` sub-command: its words (``("toy", "pretrain")``), description and options."""

    command: tuple
    description: str
    options: tuple = field(default_factory=tuple)

    def option(self, dest: str) -> Optional[OptionSpec]:
        return next((o for o in self.options if o.dest == dest), None)

    def to_json(self) -> dict:
        return {"command": list(self.command), "description": self.description,
                "options": [asdict(o) for o in self.options]}

    @classmethod
    def from_json(cls, data: Mapping) -> "CommandSpec":
        opts = tuple(OptionSpec(**{**o, "choices": tuple(o.get("choices") or ())}) for o in data["options"])
        return cls(tuple(data["command"]), data.get("description", ""), opts)


# --- reading the parsers -----------------------------------------------------------------------------


def build_cli_parser() -> tuple[argparse.ArgumentParser, dict[str, str]]:
    """The ``scdpo`` parser with every command module that imports here, and ``{module: error}``
    for those that do not (one broken optional dependency must not hide the other commands)."""
    from ..cli import add_commands

    parser = argparse.ArgumentParser(prog="scdpo")
    sub = parser.add_subparsers(dest="command")
    broken: dict[str, str] = {}

    def note(registrar: str, exc: Exception) -> None:
        broken[registrar.partition(":")[0]] = f"{type(exc).__name__}: {exc}"

    add_commands(sub, ui=False, on_error=note)  # `scdpo ui` itself is not a job
    return parser, broken


def _subparser(parser: argparse.ArgumentParser, words: Sequence[str]) -> Optional[argparse.ArgumentParser]:
    for word in words:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or word not in actions[0].choices:
            return None
        parser = actions[0].choices[word]
    return parser


def _help_text(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(" in text:
        try:
            text = text % {**vars(action), "default": action.default}
        except (KeyError, TypeError, ValueError):
            pass
    return " ".join(text.split())


def _option_spec(action: argparse.Action) -> Optional[OptionSpec]:
    if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
        return None
    longs = [s for s in action.option_strings if s.startswith("--")]
    positional = not action.option_strings
    flag = (longs or action.option_strings or [action.dest])[0]
    help_text = _help_text(action)
    absent = action.default is argparse.SUPPRESS
    default = None if absent else action.default
    match = _DEFAULT_IN_HELP.search(help_text)
    default_text = match.group(1).strip() if match else ("" if default is None else str(default))
    common = dict(dest=action.dest, flag=flag, help=help_text, default_text=default_text,
                  required=bool(action.required), positional=positional)
    if isinstance(action, argparse.BooleanOptionalAction):
        negative = next((s for s in action.option_strings if s.startswith("--no-")), "")
        return OptionSpec(kind=TRISTATE, default=default, negative_flag=negative, **common)
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction)):
        return OptionSpec(kind=FLAG, default=False, **common)
    if isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*") or isinstance(action.nargs, int):
        return OptionSpec(kind=MULTI, default=None, repeat_flag=isinstance(action, argparse._AppendAction), **common)
    if action.choices:
        return OptionSpec(kind=CHOICE, default=default, choices=tuple(str(c) for c in action.choices), **common)
    kind = {int: INT, float: FLOAT}.get(action.type, TEXT)
    if kind != TEXT and not isinstance(default, (int, float)):
        default = None  # typed, but no numeric default: a text field, empty = not passed
    return OptionSpec(kind=kind, default=default, **common)


def command_specs(commands: Sequence[Sequence[str]]) -> tuple[dict[tuple, CommandSpec], dict[str, str]]:
    """``{command words: CommandSpec}`` for each command this Python can run, and the import
    errors of command modules that failed (their commands are missing from the dict)."""
    parser, broken = build_cli_parser()
    specs = {}
    for words in commands:
        sub = _subparser(parser, words)
        if sub is None:
            continue
        options = tuple(o for o in (_option_spec(a) for a in sub._actions) if o is not None)
        specs[tuple(words)] = CommandSpec(tuple(words), " ".join((sub.description or "").split()), options)
    return specs, broken


def command_specs_of(python: Optional[str], commands: Sequence[Sequence[str]],
                     env: Optional[Mapping[str, str]] = None, timeout: float = 300.0):
    """:func:`command_specs` as seen by another Python interpreter (``None``: this one)."""
    if not python or python == sys.executable:
        return command_specs(commands)
    argv = [python, "-m", __name__, *[" ".join(words) for words in commands]]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=dict(env) if env else None,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ScdpoError(f"cannot run the job Python {python} ({exc}); set SCDPO_UI_PYTHON to a Python that "
                         "has scdpo installed") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise ScdpoError(f"{python} cannot list the scdpo commands (exit {done.returncode}): "
                         f"{(done.stderr or done.stdout).strip()[-800:]}; set SCDPO_UI_PYTHON to a Python that "
                         "has scdpo and its dependencies installed")
    data = json.loads(lines[-1])
    return ({tuple(c["command"]): CommandSpec.from_json(c) for c in data["commands"]}, data["broken"])


# --- values -> argv ----------------------------------------------------------------------------------


def _is_unset(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _number(option: OptionSpec, value: Any) -> str:
    want_int = option.kind == INT
    try:
        number = float(str(value).strip())
    except ValueError:
        raise FormError(f"{option.label}: {value!r} is not a number") from None
    if want_int:
        if number != int(number):
            raise FormError(f"{option.label}: {value!r} is not a whole number")
        return str(int(number))
    return str(value).strip()


def _same_as_default(option: OptionSpec, text: str) -> bool:
    if option.default is None:
        return False
    if option.kind in (INT, FLOAT):
        try:
            return float(text) == float(option.default)
        except ValueError:
            return False
    return text == str(option.default)


def _with_value(option: OptionSpec, text: str) -> list[str]:
    if option.positional:
        return [text]
    return [f"{option.flag}={text}"]  # `--flag=value` keeps values that start with '-' intact


def argv_for(spec: CommandSpec, values: Mapping[str, Any]) -> list[str]:
    """The argv (command words first) that runs ``spec`` with the form ``values`` (``{dest: value}``).

    Unset fields and values equal to the flag's default are left out. Raises :class:`FormError`
    naming the field for a value the command would reject by type, choice or absence.
    """
    argv = list(spec.command)
    positionals: list[str] = []
    for option in spec.options:
        value = values.get(option.dest)
        out = positionals if option.positional else argv
        if option.kind == FLAG:
            if value:
                argv.append(option.flag)
            continue
        if option.kind == TRISTATE:
            wanted = {"on": True, "off": False, True: True, False: False}.get(value)
            if wanted is not None and wanted != option.default:
                argv.append(option.flag if wanted else option.negative_flag)
            continue
        if option.kind == MULTI:
            items = [x.strip() for x in (value if isinstance(value, (list, tuple)) else str(value or "").splitlines())
                     if str(x).strip()]
            if not items:
                if option.required:
                    raise FormError(f"{option.label} is required: enter one value per line")
                continue
            if option.repeat_flag:
                for item in items:
                    out.extend(_with_value(option, item))
            else:
                out.extend(items if option.positional else [option.flag, *items])
            continue
        if _is_unset(value):
            if option.required:
                raise FormError(f"{option.label} is required")
            continue
        text = str(value).strip()
        if option.kind in (INT, FLOAT):
            text = _number(option, value)
        elif option.kind == CHOICE and text not in option.choices:
            raise FormError(f"{option.label}: {text!r} is not one of {', '.join(option.choices)}")
        if _same_as_default(option, text):
            continue
        out.extend(_with_value(option, text))
    if any(p.startswith("-") for p in positionals):
        positionals.insert(0, "--")  # what follows are values, even '-x.png'
    return argv + positionals


def _main(argv: Sequence[str]) -> int:
    """``python -m scdpo.ui.forms "train" "toy pretrain" ...`` → one JSON line of specs."""
    specs, broken = command_specs([a.split() for a in argv])
    print(json.dumps({"commands": [s.to_json() for s in specs.values()], "broken": broken}))
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through command_specs_of
    sys.exit(_main(sys.argv[1:]))
