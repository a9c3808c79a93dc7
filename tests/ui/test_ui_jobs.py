"""The UI's job runner: one background job at a time, live progress from tqdm output, exit codes,
and a cancel that ends the job's whole process group. The jobs here are ``ui_fake_job.py`` (no
torch, starts in milliseconds); the real ``scdpo`` commands run in test_ui_live.py."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from scdpo.ui.jobs import CANCELLED, FAILED, IDLE, RUNNING, SUCCEEDED, JobBusyError, JobLog, JobRunner, job_environment

FAKE_JOB = str(Path(__file__).with_name("ui_fake_job.py"))
posix_only = pytest.mark.skipif(os.name != "posix", reason="process groups and /proc are POSIX")


@pytest.fixture
def runner(tmp_path):
    r = JobRunner(tmp_path / "work", program=[sys.executable, FAKE_JOB], kill_grace_s=0.5)
    yield r
    r.cancel()
    r.wait(15)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reparented parent to reap it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state not in ("Z", "X")


def _wait_for(predicate, timeout: float = 15.0, what: str = "condition"):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _pids(path: Path) -> list[int]:
    text = path.read_text() if path.is_file() else ""
    return [int(p) for p in text.split()] if text.endswith("\n") else []


def test_a_finished_job_reports_success_full_progress_and_its_log(runner):
    assert runner.snapshot()["state"] == IDLE
    job = runner.start("count", [["count", "5", "done.txt"]], results_dir="res")
    runner.wait(30)
    snap = runner.snapshot()
    assert snap["state"] == SUCCEEDED and snap["returncode"] == 0
    assert (runner.workdir / "done.txt").read_text() == "done\n"  # ran in the workdir
    assert snap["progress"] == 1.0 and snap["progress_text"].startswith("count: 100%")
    # the six carriage-return redraws of the bar are one line of the log, not six
    log = snap["log"].splitlines()
    assert log[0] == f"$ scdpo count 5 done.txt" and sum("count:" in line for line in log) == 1
    assert "wrote done.txt ✓" in snap["log"] and log[-1] == "[succeeded]"
    assert snap["results_dir"] == str(runner.workdir / "res")  # relative results folders are in the workdir
    assert job.id == 1 and snap["id"] == 1


def test_a_second_start_while_a_job_runs_is_refused_and_the_first_keeps_running(runner, tmp_path):
    pidfile = tmp_path / "pids"
    runner.start("sleeper", [["sleep", str(pidfile)]])
    _wait_for(lambda: _pids(pidfile), what="the job to start")
    with pytest.raises(JobBusyError, match=r"already running \(sleeper"):
        runner.start("another", [["count", "1", "x.txt"]])
    assert runner.busy() and runner.snapshot()["title"] == "sleeper"
    assert not (runner.workdir / "x.txt").exists()
    assert runner.cancel()
    runner.wait(15)
    job = runner.start("another", [["count", "1", "x.txt"]])  # free again once the first has ended
    runner.wait(30)
    assert job.state == SUCCEEDED and (runner.workdir / "x.txt").is_file()


@posix_only
def test_cancel_ends_the_whole_process_group_including_grandchildren(runner, tmp_path):
    pidfile = tmp_path / "pids"
    runner.start("sleeper", [["sleep", str(pidfile)], ["count", "1", "never.txt"]])
    parent, grandchild = _wait_for(lambda: _pids(pidfile), what="the job's pids")
    assert _alive(parent) and _alive(grandchild)
    assert runner.cancel() is True
    runner.wait(15)
    snap = runner.snapshot()
    assert snap["state"] == CANCELLED and "resume" in snap["message"]
    _wait_for(lambda: not _alive(parent) and not _alive(grandchild), timeout=10, what="the processes to end")
    assert not (runner.workdir / "never.txt").exists()  # the commands after the cancelled one never start
    assert runner.cancel() is False  # nothing runs any more


@posix_only
def test_a_job_that_ignores_sigterm_is_killed_after_the_grace_period(runner, tmp_path):
    pidfile = tmp_path / "pid"
    runner.start("stubborn", [["stubborn", str(pidfile)]])
    (pid,) = _wait_for(lambda: _pids(pidfile), what="the job's pid")
    started = time.time()
    runner.cancel()
    runner.wait(15)
    assert runner.snapshot()["state"] == CANCELLED
    assert time.time() - started < 10  # SIGKILL after kill_grace_s=0.5, not the job's 600 s sleep
    _wait_for(lambda: not _alive(pid), timeout=5, what="the stubborn process to be killed")


@pytest.mark.parametrize("code", [1, 2, 3])
def test_a_failing_command_fails_the_job_with_its_exit_status_and_stops_the_rest(runner, code):
    runner.start("fails", [["count", "1", "first.txt"], ["fail", str(code)], ["count", "1", "third.txt"]])
    runner.wait(30)
    snap = runner.snapshot()
    assert snap["state"] == FAILED and snap["returncode"] == code
    assert snap["current_command"] == 1 and f"failed with exit status {code}" in snap["message"]
    assert "`scdpo fail" in snap["message"] and "about to fail" in snap["log"]
    assert (runner.workdir / "first.txt").is_file() and not (runner.workdir / "third.txt").exists()


def test_a_program_that_cannot_start_fails_the_job_with_a_message(tmp_path):
    r = JobRunner(tmp_path, program=[str(tmp_path / "no-such-python")])
    r.start("broken", [["anything"]])
    r.wait(15)
    snap = r.snapshot()
    assert snap["state"] == FAILED and "could not run the job" in snap["message"] and snap["returncode"] is None


def test_an_empty_job_is_rejected(runner):
    with pytest.raises(Exception, match="no command"):
        runner.start("nothing", [])


def test_the_log_collapses_redraws_and_survives_split_utf8_and_crlf():
    bar = "train:  40%|####      | 2/5 [00:02<00:03, 1.00step/s]"
    data = f"loading ✓\r\n{bar}\rtrain: 100%|##| 5/5 [00:05<00:00]\r\n[done] ✓\n".encode()
    log = JobLog()
    for i in range(len(data)):  # one byte at a time: ✓ and \r\n arrive split across reads
        log.feed(data[i:i + 1])
    log.close()
    assert log.tail().splitlines() == ["loading ✓", "train: 100%|##| 5/5 [00:05<00:00]", "[done] ✓"]
    assert log.progress()[:2] == (5, 5)


def test_progress_follows_the_live_bar_and_demo_stages_are_reported():
    log = JobLog()
    log.feed(b"[3/12] train: sc-dpo safety LoRA\n")
    log.feed(b"sc-dpo safety_lora:  25%|##5       | 25/100 [00:05<00:15, 5.00step/s]\r")
    assert log.progress()[:2] == (25, 100) and log.stage() == (3, 12, "train: sc-dpo safety LoRA")
    log.feed(b"sc-dpo safety_lora:  50%|#####     | 50/100 [00:10<00:10, 5.00step/s]")  # being drawn
    assert log.progress()[:2] == (50, 100)
    assert log.tail().splitlines()[-1].startswith("sc-dpo safety_lora:  50%")
    log.feed(b"\n[4/12] eval\n")
    # a new stage starts without a bar: the previous stage's 50% is not shown as this one's
    assert log.stage() == (4, 12, "eval") and log.progress() is None
    log.feed(b"eval:  10%|#         | 1/10 [00:01<00:09]\r")
    assert log.progress()[:2] == (1, 10)
    assert JobLog().progress() is None and JobLog().stage() is None


def test_the_log_keeps_only_the_last_lines(tmp_path):
    log = JobLog(max_lines=3)
    log.feed(b"".join(b"line %d\n" % i for i in range(10)))
    assert log.tail().splitlines() == ["line 7", "line 8", "line 9"]


def test_jobs_find_the_package_and_stay_offline():
    env = job_environment({"PYTHONPATH": "/elsewhere"})
    root = str(Path(__file__).resolve().parents[2] / "trainer")
    assert env["PYTHONPATH"].split(os.pathsep) == [root, "/elsewhere"]
    assert env["HF_HUB_OFFLINE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert job_environment({"HF_HUB_OFFLINE": "0"})["HF_HUB_OFFLINE"] == "0"  # a user's explicit choice stays


def test_a_job_snapshot_while_running(runner, tmp_path):
    pidfile = tmp_path / "pids"
    runner.start("sleeper", [["sleep", str(pidfile)]])
    _wait_for(lambda: "sleeping" in runner.snapshot()["log"], what="the job's first line")
    snap = runner.snapshot()
    assert snap["state"] == RUNNING and snap["returncode"] is None and snap["elapsed_s"] >= 0
    assert snap["commands"] == [f"scdpo sleep {pidfile}"]
