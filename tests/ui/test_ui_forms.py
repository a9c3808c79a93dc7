"""The UI's forms come from the real ``scdpo`` parsers, and what a user types goes back through them:
every argv built from form values is parsed by the same parser ``scdpo`` itself uses."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

from scdpo.cli import build_parser
from scdpo.ui import forms
from scdpo.ui.forms import (CHOICE, FLAG, FLOAT, INT, MULTI, TEXT, TRISTATE, CommandSpec, FormError, argv_for,
                            command_specs, command_specs_of)
from scdpo.ui.tasks import TASKS, gallery_items, job_commands, report_summary, results_dir, shown_options, task


@pytest.fixture(scope="module")
def specs():
    found, broken = command_specs([t.command for t in TASKS])
    assert broken == {}
    return found


@pytest.fixture(scope="module")
def parser():
    return build_parser()


def _parse(parser, argv):
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on a bad argv: show which
        raise AssertionError(f"scdpo rejected {argv}") from exc


def _untouched_form(t, spec) -> dict:
    """The values a tab's form shows before the user changes anything (as app._field builds them)."""
    overrides = dict(t.form_defaults)
    values = {}
    for o in spec.options:
        if o.dest in overrides:
            values[o.dest] = overrides[o.dest]
        elif o.kind == FLAG:
            values[o.dest] = False
        elif o.kind == TRISTATE:
            values[o.dest] = "default" if o.default is None else bool(o.default)
        elif o.kind == MULTI:
            values[o.dest] = ""
        else:
            values[o.dest] = "" if o.default is None else o.default
    return values


def test_every_tab_has_its_command_and_the_options_it_shows_first(specs):
    assert set(specs) == {t.command for t in TASKS}
    for t in TASKS:
        spec = specs[t.command]
        primary, more = shown_options(t, spec)
        shown = {o.dest for o in primary + more}
        assert not shown & set(t.hidden)
        if t.primary:
            assert [o.dest for o in primary] == [d for d in t.primary if spec.option(d) and d not in t.hidden], t.key
        else:  # no list: everything up front
            assert more == [] and shown == {o.dest for o in spec.options} - set(t.hidden)
    train = specs[("lora", "train")]
    assert train.option("resume").kind == TRISTATE and train.option("resume").negative_flag == "--no-resume"
    assert train.option("steps").kind == INT and train.option("steps").default is None  # lives in the config
    assert train.option("steps").default_text == "300"
    assert train.option("beta").kind == FLOAT and train.option("quiet").kind == FLAG
    assert specs[("eval",)].option("lora").kind == MULTI
    assert specs[("cost", "train")].option("weak_label").kind == CHOICE
    assert specs[("cost", "train")].option("weak_label").choices == ("nudenet", "clip-zero-shot",
                                                                     "nudenet+clip-zero-shot")
    assert specs[("generate",)].option("prompt").kind == TEXT


@pytest.mark.parametrize("key", [t.key for t in TASKS])
def test_an_untouched_form_runs_the_command_with_its_own_defaults(specs, parser, key):
    t = task(key)
    spec = specs[t.command]
    commands, _ = job_commands(t, spec, {**_untouched_form(t, spec), "lora": "safe.safetensors"}
                               if t.compare_lora else _untouched_form(t, spec))
    for argv in commands:
        args = _parse(parser, argv)
        overridden = [d for d, _ in t.form_defaults if d != "out"]
        for o in spec.options:  # nothing but the tab's own form defaults is passed
            if o.dest not in overridden and o.dest not in ("out", "lora") and not o.positional:
                assert o.flag not in argv and not any(a.startswith(o.flag + "=") for a in argv), (key, o.flag)
        assert args.command == t.command[0]


def test_typed_values_reach_the_train_command_as_typed(specs, parser):
    spec = specs[("lora", "train")]
    values = {"data": "toy-oracle", "toy_oracle_pairs": 16.0, "steps": " 2 ", "batch_size": 2, "beta": "2500",
              "lam": "0", "resume": "off", "clean_pairs": "default", "skip_bad": "on", "quiet": True,
              "name": "-starts-with-a-dash", "out": "", "seed": None}
    argv = argv_for(spec, values)
    assert argv[:2] == ["lora", "train"] and "--out" not in " ".join(argv)
    args = _parse(parser, argv)
    assert (args.data, args.toy_oracle_pairs, args.steps, args.batch_size) == ("toy-oracle", 16, 2, 2)
    assert (args.beta, args.lam, args.resume, args.skip_bad, args.quiet) == (2500.0, 0.0, False, True, True)
    assert args.name == "-starts-with-a-dash"  # --name=VALUE keeps a leading '-' a value
    for unset in ("clean_pairs", "out", "seed", "gamma"):  # left to the config: absent from the namespace
        assert getattr(args, unset, None) is None


def test_values_equal_to_a_default_are_left_out_and_the_rest_parse(specs, parser):
    spec = specs[("cost", "train")]
    argv = argv_for(spec, {"n_train": 1600.0, "n_calib": "600", "n_test": 64, "target_fpr": "0.05",
                           "no_ranking": True, "weak_label": "", "out": "out/cost_model.safetensors"})
    assert argv == ["cost", "train", "--n-test=64", "--no-ranking", "--target-fpr=0.05"]
    args = _parse(parser, argv)
    assert (args.n_train, args.n_test, args.target_fpr, args.no_ranking) == (1600, 64, 0.05, True)


def test_several_loras_one_per_line_reach_eval(specs, parser):
    argv = argv_for(specs[("eval",)], {"lora": "safe=a.safetensors\n\n  b.safetensors  \n", "n": 4})
    args = _parse(parser, argv)
    assert args.lora == ["safe=a.safetensors", "b.safetensors"] and args.n == 4


@pytest.mark.parametrize("dest, value, message", [
    ("steps", "2.5", "--steps: '2.5' is not a whole number"),
    ("steps", "many", "--steps: 'many' is not a number"),
    ("beta", "hot", "--beta: 'hot' is not a number"),
])
def test_a_value_of_the_wrong_type_names_the_field(specs, dest, value, message):
    with pytest.raises(FormError, match=message):
        argv_for(specs[("lora", "train")], {dest: value})


def test_a_value_outside_the_choices_names_the_choices(specs):
    with pytest.raises(FormError, match="--weak-label: 'clip' is not one of nudenet"):
        argv_for(specs[("cost", "train")], {"weak_label": "clip"})


def _spec_of(parser: argparse.ArgumentParser, words=("tool",)) -> CommandSpec:
    options = tuple(o for o in (forms._option_spec(a) for a in parser._actions) if o is not None)
    return CommandSpec(tuple(words), "", options)


def test_positionals_required_options_and_repeated_flags_round_trip():
    p = argparse.ArgumentParser(prog="tool")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--model", required=True)
    p.add_argument("--tag", action="append")
    p.add_argument("--mode", choices=["fast", "slow"], default="fast")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--scale", type=float, default=1.0, help="scale (default: 1.0)")
    spec = _spec_of(p)
    kinds = {o.dest: o.kind for o in spec.options}
    assert kinds == {"inputs": MULTI, "model": TEXT, "tag": MULTI, "mode": CHOICE, "ema": TRISTATE, "scale": FLOAT}
    argv = argv_for(spec, {"inputs": ["a.png", "-b.png"], "model": "m", "tag": "x\ny", "mode": "slow",
                           "ema": False, "scale": 1.0})
    assert argv[0] == "tool"
    args = p.parse_args(argv[1:])
    assert args.inputs == ["a.png", "-b.png"]  # a positional that starts with '-' is still a value
    assert (args.model, args.tag, args.mode, args.ema, args.scale) == ("m", ["x", "y"], "slow", False, 1.0)
    assert "--scale" not in " ".join(argv) and "--ema" not in argv  # defaults stay out; off is --no-ema
    with pytest.raises(FormError, match="--model is required"):
        argv_for(spec, {"inputs": "a"})
    with pytest.raises(FormError, match="inputs is required"):
        argv_for(spec, {"model": "m"})


def test_base_vs_safe_renders_the_same_seeds_without_and_with_the_lora(specs, parser):
    t = task("compare")
    spec = specs[t.command]
    values = {**_untouched_form(t, spec), "lora": "loras/safe.safetensors", "lora_strength": 0.8, "n": 2,
              "steps": "4", "out": "out/cmp"}
    (base, safe), folder = job_commands(t, spec, values)
    assert folder == "out/cmp"
    a, b = _parse(parser, base), _parse(parser, safe)
    assert (a.out, b.out) == ("out/cmp/base", "out/cmp/safe")
    assert (a.lora, b.lora, b.lora_strength) == (None, "loras/safe.safetensors", 0.8)
    assert (a.prompt, a.n, a.seed, a.steps) == (b.prompt, b.n, b.seed, b.steps) == (
        "a red circle on a blue background", 2, 0, 4)
    with pytest.raises(FormError, match="--lora is required"):
        job_commands(t, spec, {**values, "lora": " "})


def test_the_results_folder_is_the_output_option_or_its_default(specs):
    assert results_dir(task("train_cost"), specs[("cost", "train")], {}) == "out"  # parent of the .safetensors
    assert results_dir(task("train"), specs[("lora", "train")], {"out": ""}) == "runs/sc-dpo"  # from the help text
    assert results_dir(task("eval"), specs[("eval",)], {"out": "out/e2"}) == "out/e2"
    assert results_dir(task("toy_evaluate"), specs[("toy", "evaluate")], {}) is None


def _png(path: Path, colour) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path)
    return path


def test_the_gallery_shows_base_next_to_safe_and_the_base_grid_first(tmp_path):
    for name in ("00000_seed3.png", "00001_seed4.png"):
        _png(tmp_path / "cmp/base" / name, "red")
        _png(tmp_path / "cmp/safe" / name, "blue")
    items = gallery_items(tmp_path / "cmp")
    assert [(p.parent.name, p.name, c) for p, c in items] == [
        ("base", "00000_seed3.png", "base · seed 3"), ("safe", "00000_seed3.png", "safe · seed 3"),
        ("base", "00001_seed4.png", "base · seed 4"), ("safe", "00001_seed4.png", "safe · seed 4")]
    for name in ("grid_sc-dpo.png", "grid_base.png", "grid_blacklist.png"):
        _png(tmp_path / "eval" / name, "white")
    assert [c for _, c in gallery_items(tmp_path / "eval")] == ["base (grid)", "blacklist (grid)", "sc-dpo (grid)"]
    assert gallery_items(tmp_path / "missing") == [] and report_summary(tmp_path / "eval") == ""
    (tmp_path / "eval/report.json").write_text("{not json")
    assert "cannot be read" in report_summary(tmp_path / "eval")


def test_specs_read_through_another_python_match_those_read_here(specs):
    other = Path(sys.executable).with_name("python3" if Path(sys.executable).name != "python3" else "python")
    if not other.exists() or os.path.samefile(other, sys.executable) and str(other) == sys.executable:
        pytest.skip("no second spelling of this Python to run")
    found, broken = command_specs_of(str(other), [("lora", "train"), ("toy", "pretrain")])
    assert broken == {}
    assert found == {k: specs[k] for k in (("lora", "train"), ("toy", "pretrain"))}


def test_without_gradio_the_ui_says_how_to_install_it(monkeypatch):
    from scdpo.ui import GradioMissingError, create_blocks, require_gradio

    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now fails as if it were not installed
    with pytest.raises(GradioMissingError, match=r'pip install "scdpo-safe-diffusion\[ui\]"'):
        require_gradio()
    with pytest.raises(GradioMissingError):
        create_blocks(embedded=True)
