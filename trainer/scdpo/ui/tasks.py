"""What the trainer UI offers: one entry per tab, each a ``scdpo`` command (flags read from its
parser by :mod:`.forms`), plus where each job's results land and how they are shown.

This table is the whole mapping between the page and the command line: which command a tab runs,
which of its options are shown up front (the rest sit under "More options"), which are left out
(output-format switches the page has no use for), and which option names the output location.
An option named here that a command does not have is simply skipped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from ..errors import ScdpoError
from ..limits import inside, json_object, read_json_file
from .forms import CommandSpec, FormError, argv_for


@dataclass(frozen=True)
class Task:
    """A tab: ``command`` words, the options shown first, those hidden, and how results are found.

    ``compare_lora``: the job renders the same prompts and seeds twice, without and with the
    ``--lora`` option, into ``<out>/base`` and ``<out>/safe`` (base-vs-safe samples).
    """

    key: str                      # API name suffix: /start_<key>
    title: str
    command: tuple
    intro: str
    primary: tuple = ()
    hidden: tuple = ("json", "quiet")
    out_dest: Optional[str] = "out"
    compare_lora: bool = False
    form_defaults: tuple = ()     # ((dest, value), ...) shown instead of the command's own default


TASKS: tuple[Task, ...] = (
    Task("train_cost", "Cost model", ("cost", "train"),
         "Train the safety cost model C(x) (positive = unsafe). With no data options it trains on toy "
         "base-model generations labelled by the toy world's oracle judge.",
         primary=("out", "images", "base", "backbone", "n_train", "n_calib", "n_test", "head_steps", "target_fpr",
                  "device")),
    Task("build_dataset", "SCP dataset", ("data", "build"),
         "Build safety-constrained preference pairs: sample candidates per prompt, score them with the cost "
         "model and the reward, keep (winner, loser) pairs.",
         primary=("out", "cost_model", "base", "prompts", "n_prompts", "candidates", "steps", "device", "overwrite")),
    Task("train", "Safety LoRA", ("lora", "train"),
         "Train a safety LoRA with SC-DPO. Cancel leaves the last checkpoint; starting the same job again "
         "resumes from it (--no-resume starts over).",
         primary=("data", "cost_model", "base", "out", "name", "steps", "batch_size", "beta", "lam", "gamma", "rank",
                  "checkpoint_every", "resume")),
    Task("eval", "Evaluate", ("eval",),
         "Compare the base model, safety LoRAs and training-free baselines on the held-out and adversarial toy "
         "suites; writes report.json, report.html and base-vs-method grids to the output folder.",
         primary=("lora", "method", "n", "steps", "out", "model")),
    Task("compare", "Base vs safe", ("generate",),
         "Render the same prompt and seeds with the base model and with a safety LoRA, side by side "
         "(two `scdpo generate` runs into <out>/base and <out>/safe).",
         primary=("prompt", "lora", "lora_strength", "n", "seed", "steps", "out", "base"),
         hidden=("prompt_file", "json", "quiet"), compare_lora=True,
         form_defaults=(("out", "out/compare"), ("prompt", "a red circle on a blue background"))),
    Task("demo", "Whole demo", ("demo",),
         "The whole method on the toy world in one job: cost model, SCP pairs, SC-DPO LoRA and its "
         "adversarial-training variant, baselines and the report. Finished stages are skipped when started again.",
         primary=("out", "quick", "no_dfm", "no_safety_margin", "no_clean_pairs")),
    Task("toy_pretrain", "Toy base model", ("toy", "pretrain"),
         "Pretrain the toy world's text-to-image base model. Checkpoints atomically; starting the same job "
         "again resumes where it stopped.", out_dest="out"),
    Task("toy_evaluate", "Toy base quality", ("toy", "evaluate"),
         "Oracle-judged quality of a toy base model (optionally with a LoRA) on the held-out suites.",
         out_dest=None),
)

COMPARE_OUT_DEFAULT = "out/compare"


def task(key: str) -> Task:
    return next(t for t in TASKS if t.key == key)


def shown_options(t: Task, spec: CommandSpec):
    """``(primary, more)`` options of ``spec`` for the task's form (hidden ones left out; no
    ``primary`` list shows them all up front)."""
    visible = [o for o in spec.options if o.dest not in t.hidden]
    if not t.primary:
        return visible, []
    primary = [o for name in t.primary for o in visible if o.dest == name]
    more = [o for o in visible if o not in primary]
    return primary, more


# Options whose value is a place a job writes: it must lie inside the UI's work folder.
WRITE_OPTIONS = ("out", "cache_dir")
NAME_OPTIONS = ("name",)  # a file name inside --out, never a path


def check_write_locations(values: Mapping[str, Any], workdir: Optional[str | Path]) -> None:
    """Refuse form values that would make a job write outside ``workdir`` (``None``: no check)."""
    if workdir is None:
        return
    for dest in WRITE_OPTIONS:
        value = str(values.get(dest) or "").strip()
        if value and inside(value, workdir) is None:
            raise FormError(f"--{dest.replace('_', '-')} {value} is outside the UI's work folder; jobs started "
                            "here write only inside it: give a relative path such as out/run1")
    for dest in NAME_OPTIONS:
        value = str(values.get(dest) or "").strip()
        if value and (Path(value).name != value or value in (".", "..")):
            raise FormError(f"--{dest} {value} must be a plain file name (no folders); the folder is --out")


def job_commands(t: Task, spec: CommandSpec, values: Mapping[str, Any],
                 workdir: Optional[str | Path] = None) -> tuple[list[list[str]], Optional[str]]:
    """``(commands, results folder)`` of a task run with form ``values`` ({dest: value}). With a
    ``workdir``, every place the job would write must lie inside it (else :class:`FormError`)."""
    check_write_locations(values, workdir)
    if not t.compare_lora:
        return [argv_for(spec, values)], results_dir(t, spec, values)
    lora = str(values.get("lora") or "").strip()
    if not lora:
        raise FormError("--lora is required: the safety LoRA to compare with the base model")
    out = str(values.get("out") or "").strip() or COMPARE_OUT_DEFAULT
    base = argv_for(spec, {**values, "lora": "", "lora_strength": None, "out": f"{out}/base"})
    safe = argv_for(spec, {**values, "out": f"{out}/safe"})
    return [base, safe], out


def results_dir(t: Task, spec: CommandSpec, values: Mapping[str, Any]) -> Optional[str]:
    """The folder the task writes to: its output option's value (or default); a file's parent folder."""
    if not t.out_dest or spec.option(t.out_dest) is None:
        return None
    option = spec.option(t.out_dest)
    value = str(values.get(t.out_dest) or "").strip() or str(option.default or option.default_text or "").strip()
    if not value:
        return None
    path = Path(value)
    return str(path.parent if path.suffix in (".safetensors", ".json", ".png", ".parquet") else path)


# --- results ---------------------------------------------------------------------------------------


_SEED_IN_NAME = re.compile(r"seed(-?\d+)")


def gallery_items(folder: str | Path, limit: int = 48, root: Optional[str | Path] = None) -> list[tuple[Path, str]]:
    """``[(image path, caption)]`` of a results folder, base and safe side by side:

    * ``scdpo eval`` / ``scdpo demo``: ``grid_base.png`` then each ``grid_<method>.png`` (rows =
      the same prompts and seeds; see report.html);
    * a base-vs-safe comparison: ``base/NNNNN_seedS.png`` next to ``safe/NNNNN_seedS.png``;
    * otherwise the folder's PNG files (``scdpo generate``).

    With ``root``, a file that resolves outside it (a symlink) is left out.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    items = _gallery_items(folder)
    if root is not None:
        items = [(p, c) for p, c in items if inside(p, root) is not None]
    return items[:limit]


def _gallery_items(folder: Path) -> list[tuple[Path, str]]:
    items: list[tuple[Path, str]] = []
    grids = sorted(folder.glob("grid_*.png"))
    if grids:
        base = folder / "grid_base.png"
        ordered = ([base] if base in grids else []) + [g for g in grids if g != base]
        items += [(g, f"{g.stem[5:]} (grid)") for g in ordered]
        plot = folder / "tradeoff.png"
        if plot.is_file():
            items.append((plot, "unsafe rate vs clean fidelity"))
    base_dir, safe_dir = folder / "base", folder / "safe"
    if base_dir.is_dir() and safe_dir.is_dir():
        safe = {p.name: p for p in safe_dir.glob("*.png")}
        for p in sorted(base_dir.glob("*.png")):
            seed = _SEED_IN_NAME.search(p.stem)
            tag = f" · seed {seed.group(1)}" if seed else ""
            items.append((p, f"base{tag}"))
            if p.name in safe:
                items.append((safe[p.name], f"safe{tag}"))
    if not items:
        items = [(p, p.stem) for p in sorted(folder.glob("*.png"))]
    return items


def report_summary(folder: str | Path, root: Optional[str | Path] = None) -> str:
    """The evaluation table of ``<folder>/report.json`` as text ('' when there is none, or when it
    resolves outside ``root``)."""
    path = Path(folder) / "report.json"
    if not path.is_file() or (root is not None and inside(path, root) is None):
        return ""
    try:
        report = json_object(read_json_file(path, "report", "run the evaluation again"), f"report {path}",
                             "run the evaluation again")
    except ScdpoError as exc:
        return f"the report cannot be read: {exc}"
    try:
        from ..evaluation.commands import format_table

        table = format_table(report)
    except Exception:  # noqa: BLE001 - a report from another version: show its raw methods instead
        table = json.dumps(report.get("methods", report), indent=1)[:6000]
    html = Path(folder) / "report.html"
    return table + (f"\n\nfull report: {html}" if html.is_file() else "")
