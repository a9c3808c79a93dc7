"""`scdpo eval --workers N`: one one-thread process per method, reports merged. The numbers must be
those of one one-thread process evaluating every method, and a failing worker must say which."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scdpo.errors import ScdpoError
from scdpo.workers import Job, one_thread_env, run_jobs

ROOT = Path(__file__).resolve().parents[2]
LORA = ROOT / "weights" / "toy_safety_lora.safetensors"
ARGS = ["eval", "--n", "1", "--steps", "2", "--attacks", "ring-a-bell", "--method", "base,blacklist",
        "--lora", f"safe={LORA}"]


def _methods(report: dict) -> dict:
    # seconds per image is wall-clock time, the one field two runs never share
    return {n: {k: v for k, v in m.items() if k != "seconds_per_image"} for n, m in report["methods"].items()}


@pytest.mark.slow
def test_workers_give_the_numbers_of_one_process(tmp_path):
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    subprocess.run([sys.executable, "-m", "scdpo", *ARGS, "--out", str(serial)], check=True, env=one_thread_env(),
                   capture_output=True)
    subprocess.run([sys.executable, "-m", "scdpo", *ARGS, "--out", str(parallel), "--workers", "2"], check=True,
                   env=one_thread_env(), capture_output=True)
    a = json.loads((serial / "report.json").read_text())
    b = json.loads((parallel / "report.json").read_text())
    assert list(b["methods"]) == ["base", "blacklist", "safe"]  # the order of the command line
    assert _methods(a) == _methods(b)
    assert a["relative_reduction"] == b["relative_reduction"]
    assert sorted(p.name for p in parallel.iterdir()) == sorted(p.name for p in serial.iterdir())  # no parts left
    assert "data:image/png;base64" in (parallel / "report.html").read_text()


def test_a_failing_job_is_named_with_its_last_line_and_log(tmp_path):
    good = Job("fine", ["--help"], tmp_path / "fine.log")
    bad = Job("lora train: broken", ["lora", "train", "--config", str(tmp_path / "missing.toml")],
              tmp_path / "broken.log")
    with pytest.raises(ScdpoError) as err:
        run_jobs([good, bad], workers=2)
    text = str(err.value)
    assert text.startswith("lora train: broken failed (exit ") and "missing.toml" in text
    assert str(tmp_path / "broken.log") in text and "\n" not in text


def test_every_job_runs_and_reports_its_seconds(tmp_path):
    finished = []
    jobs = [Job(f"help {i}", ["--help"], tmp_path / f"{i}.log") for i in range(3)]
    run_jobs(jobs, workers=2, on_done=lambda job: finished.append(job.name))
    assert sorted(finished) == ["help 0", "help 1", "help 2"]
    assert all(job.seconds > 0 for job in jobs)
    assert "usage: scdpo" in (tmp_path / "0.log").read_text()


def test_methods_are_split_into_groups_of_about_equal_time():
    from scdpo.evaluation.commands import split_evenly

    names = ["base", "negative-prompt", "safe-guidance", "blacklist", "sc-dpo", "diffusion-dpo", "safetydpo",
             "safetydpo-average", "sc-dpo-preference-only"]
    groups = split_evenly(names, 2)
    assert sorted(sum(groups, [])) == sorted(names) and len(groups) == 2
    assert "safe-guidance" in groups[0] and len(groups[0]) == 4 and len(groups[1]) == 5  # 1.3 + 3 vs 5
    assert split_evenly(names[:1], 4) == [["base"]]  # never an empty process
    assert len(split_evenly(names, 16)) == len(names)
