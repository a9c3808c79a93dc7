"""``scdpo eval`` end to end (tiny: n=1, 1 step) and its user-facing errors."""

import json
import shutil

import pytest

from scdpo.cli import main
from scdpo.evaluation.report import SUITES
from scdpo.lora import load_lora, save_lora
from scdpo.toy.model import shipped_toy_weights

TINY = ["--n", "1", "--steps", "1"]
NAMES_ONLY = [*TINY, "--attacks", "ring-a-bell"]  # tests of how methods are named: one attack family is enough


def test_eval_with_a_lora_prints_json_and_writes_reports(lora_files, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["eval", "--lora", f"safe={lora_files['a']}", "--method", "base", *TINY, "--json", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = captured.out.strip().splitlines()
    methods = json.loads(lines[-1])
    assert list(methods) == ["base", "safe"]
    assert lines[-2] == f"wrote {out / 'report.json'} and {out / 'report.html'}"
    assert lines[0].split()[0] == "method" and lines[1].split()[0] == "base" and lines[2].split()[0] == "safe"
    for name, m in methods.items():
        assert tuple(m["unsafe_rate"]) == SUITES and all(0 <= v <= 1 for v in m["unsafe_rate"].values())
        assert 0 <= m["clean_fidelity"] <= 1 and 0 <= m["near_miss_fidelity"] <= 1
        assert m["seconds_per_image"] > 0 and m["n_images"] == 45  # 12 harmful, 18 attacked, 3 + 6 + 6
    assert str(lora_files["a"]) in methods["safe"]["description"]
    report = json.loads((out / "report.json").read_text())
    assert report["methods"] == methods
    assert report["config"]["n"] == 1 and report["config"]["steps"] == 1
    assert set(report["relative_reduction"]) == {"base", "safe"}
    for f in ("report.html", "tradeoff.png", "grid_base.png", "grid_safe.png"):
        assert (out / f).is_file(), f
    # the LoRA was really applied: same seeds, different images
    assert (out / "grid_base.png").read_bytes() != (out / "grid_safe.png").read_bytes()


def test_eval_without_attacks_writes_every_report(tmp_path, capsys):
    # --attacks '' runs no attack family: the adversarial rate is NaN, shown as "–", and the reports are written
    rc = main(["eval", "--method", "base", *TINY, "--attacks", "", "--json", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = captured.out.strip().splitlines()
    assert lines[1].split()[:6] == ["base", *lines[1].split()[1:5], "–"]
    methods = json.loads(lines[-1])
    assert methods["base"]["unsafe_rate"]["adversarial"] != methods["base"]["unsafe_rate"]["adversarial"]  # NaN
    assert methods["base"]["n_images"] == 12 + 3 + 6 + 6
    for f in ("report.json", "report.html", "tradeoff.png"):
        assert (tmp_path / f).is_file(), f
    assert "nan" not in (tmp_path / "report.html").read_text().lower()


def test_lora_name_defaults_to_the_file_stem(lora_files, tmp_path, capsys):
    rc = main(["eval", "--lora", str(lora_files["b"]), "--method", "", *NAMES_ONLY, "--json", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert list(json.loads(captured.out.strip().splitlines()[-1])) == ["lora_b"]


def _bad_specs(lora_files, tmp_path):
    d1, d2 = tmp_path / "run1", tmp_path / "run2"
    d1.mkdir()
    d2.mkdir()
    shutil.copy(lora_files["a"], d1 / "lora.safetensors")
    shutil.copy(lora_files["b"], d2 / "lora.safetensors")
    sd = save_lora(tmp_path / "sd.safetensors", dict(load_lora(lora_files["a"]).tensors),
                   {"ss_base_model_version": "sd_v1"})
    return {
        "empty path": (["--lora", "safe="], "names no file"),
        "missing file": (["--lora", f"safe={tmp_path / 'missing.safetensors'}"], "not found"),
        "folder": (["--lora", str(tmp_path)], "is a folder"),
        "not a lora": (["--lora", str(shipped_toy_weights())], "not a LoRA"),
        "other base model": (["--lora", str(sd)], "sd_v1"),
        "same name twice": (["--lora", str(d1 / "lora.safetensors"), "--lora", str(d2 / "lora.safetensors")],
                            "two methods are named 'lora'"),
        "lora named like a method": (["--lora", f"base={lora_files['a']}"], "two methods are named 'base'"),
        "unknown method": (["--method", "base,nope"], "unknown method 'nope'"),
        "no method": (["--method", " , "], "nothing to evaluate"),
    }


CASES = ["empty path", "missing file", "folder", "not a lora", "other base model", "same name twice",
         "lora named like a method", "unknown method", "no method"]


@pytest.mark.parametrize("case", CASES)
def test_bad_arguments_exit_2_with_one_error_line_and_no_report(case, lora_files, tmp_path, capsys):
    args, message = _bad_specs(lora_files, tmp_path)[case]
    out = tmp_path / "out"
    rc = main(["eval", *args, *TINY, "--json", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 2
    err = [line for line in captured.err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), captured.err
    assert message in err[0]
    assert captured.out == ""
    assert not (out / "report.json").exists()


def test_a_lora_path_with_an_equals_sign_is_read_whole_or_after_the_name(lora_files, tmp_path, capsys):
    odd = tmp_path / "run=2" / "a=b.safetensors"
    odd.parent.mkdir()
    shutil.copy(lora_files["a"], odd)
    rc = main(["eval", "--lora", str(odd), "--lora", f"named={odd}", "--method", "", *NAMES_ONLY, "--json",
               "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    methods = json.loads(captured.out.strip().splitlines()[-1])
    assert list(methods) == ["a=b", "named"]
    assert all(str(odd) in m["description"] for m in methods.values())
