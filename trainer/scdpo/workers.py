"""Independent jobs in parallel: one ``python -m scdpo …`` process per job, one torch thread each.

The toy model's operations are small: two threads on one of them gain little, two processes on two
jobs nearly halve the wall time. Each job is the documented command it stands for (``scdpo lora
train --config FILE``, ``scdpo eval …``), run with ``OMP_NUM_THREADS=1`` so its numbers do not
depend on how many cores the machine has or how busy it is (torch's float sums are reproducible
at a fixed thread count). Nothing is passed between processes but command lines and the files the
commands write.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from .errors import ScdpoError

POLL_SECONDS = 0.2


def default_workers() -> int:
    """One worker per core this process may use (at least one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class Job:
    """``python -m scdpo <argv>``, its output kept in ``log``."""

    name: str
    argv: list[str]
    log: Path
    seconds: float = field(default=0.0, init=False)


def one_thread_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = "1"
    return env


def _last_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").replace("\r", "\n").splitlines() if ln.strip()]
    except OSError:
        return "(no output)"
    return lines[-1] if lines else "(no output)"


def run_jobs(jobs: Sequence[Job], workers: int, on_done: Optional[Callable[[Job], None]] = None) -> None:
    """Run ``jobs`` with at most ``workers`` at once, in order of the list; each job's wall seconds go to
    ``job.seconds``. A job that fails stops the others and raises one line naming it, its last output line
    and its log."""
    pending = list(jobs)
    running: list[tuple[Job, subprocess.Popen, float, object]] = []
    env = one_thread_env()
    try:
        while pending or running:
            while pending and len(running) < max(1, workers):
                job = pending.pop(0)
                job.log.parent.mkdir(parents=True, exist_ok=True)
                handle = open(job.log, "w")
                proc = subprocess.Popen([sys.executable, "-m", "scdpo", *job.argv], stdout=handle,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
                running.append((job, proc, time.time(), handle))
            time.sleep(POLL_SECONDS)
            still = []
            for job, proc, started, handle in running:
                code = proc.poll()
                if code is None:
                    still.append((job, proc, started, handle))
                    continue
                handle.close()
                job.seconds = round(time.time() - started, 1)
                if code != 0:
                    raise ScdpoError(f"{job.name} failed (exit {code}): {_last_line(job.log)} (whole output: {job.log})")
                if on_done is not None:
                    on_done(job)
            running = still
    finally:
        for _job, proc, _started, handle in running:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:  # pragma: no cover
                    proc.kill()
                    proc.wait()
            handle.close()
