"""One background job at a time: ``python -m scdpo ...`` commands in a subprocess, with live logs.

Why a subprocess and not a thread: the trainers are the real CLI commands (same code path, same
output files, same checkpoints), a crash or an out-of-memory cannot take the UI down, and cancel
is exact: the whole process group (including any worker processes a command starts) is
terminated. The trainers write their checkpoints atomically and resume when rerun with the same
options, so a cancelled training leaves a checkpoint that the next start picks up.

Nothing here imports gradio; :class:`JobRunner` is shared by every page that shows it.
"""

from __future__ import annotations

import codecs
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ..errors import ScdpoError

IDLE, RUNNING, SUCCEEDED, FAILED, CANCELLED = "idle", "running", "succeeded", "failed", "cancelled"

_TQDM_COUNT = re.compile(r"(?:^|[\s|])(\d+)/(\d+)\s*\[")  # "... 12/300 [00:04<01:30, ...]"
_STAGE = re.compile(r"^\[(\d+)/(\d+)\]\s*(.*)")            # scdpo demo: "[3/12] train: sc-dpo ..."


class JobBusyError(ScdpoError):
    """A job is already running; only one runs at a time."""


def scdpo_source_root() -> Path:
    """The folder that contains the ``scdpo`` package (put on the job's PYTHONPATH, so jobs run
    even where the package is on ``sys.path`` without being pip-installed, as in a webui)."""
    return Path(__file__).resolve().parents[2]


def default_python() -> str:
    """``$SCDPO_UI_PYTHON`` (a Python with scdpo's dependencies, if the UI's own lacks them) or this one."""
    return os.environ.get("SCDPO_UI_PYTHON") or sys.executable


def job_environment(base: Optional[dict] = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    root = str(scdpo_source_root())
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in parts if p != root])
    env["PYTHONUNBUFFERED"] = "1"          # lines reach the page as they are printed
    env.setdefault("TQDM_MININTERVAL", "0.5")
    env.setdefault("HF_HUB_OFFLINE", "1")  # jobs never reach a model hub behind the user's back
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    return env


@dataclass
class Job:
    """A run of one or more ``scdpo`` commands (run in order; the first failure stops the rest)."""

    id: int
    title: str
    commands: list[list[str]]            # argv after `scdpo`
    results_dir: Optional[Path] = None   # where the page looks for images/reports afterwards
    state: str = RUNNING
    returncode: Optional[int] = None
    started: float = field(default_factory=time.time)
    ended: Optional[float] = None
    current: int = 0                     # index of the command now running
    message: str = ""

    def command_lines(self) -> list[str]:
        return [shlex.join(["scdpo", *argv]) for argv in self.commands]


class JobLog:
    """Process output as lines, with tqdm's carriage-return redraws collapsed into one line."""

    def __init__(self, max_lines: int = 4000):
        self.lines: deque[str] = deque(maxlen=max_lines)
        self.partial = ""       # text after the last line break
        self.redraw = ""        # the last line that a carriage return ended (a progress bar)
        self.progress_line = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> None:
        for piece in re.split(r"(\r\n|\r|\n)", self._decoder.decode(data)):
            if piece in ("\n", "\r\n"):
                self._commit(self.partial)
            elif piece == "\r":  # a redraw follows: keep what was drawn until something replaces it
                if self.partial:
                    self.redraw = self.partial
                    if _TQDM_COUNT.search(self.partial):
                        self.progress_line = self.partial
                self.partial = ""
            elif piece:
                self.partial += piece

    def _commit(self, line: str) -> None:
        if not line and self.redraw:   # "bar\r\n": the bar's last drawing ends the line
            line = self.redraw
        self.redraw = self.partial = ""
        self.lines.append(line)
        if _TQDM_COUNT.search(line) or _STAGE.match(line):
            self.progress_line = line

    def note(self, line: str) -> None:
        """A line from the runner itself (command started, exit status)."""
        if self.partial or self.redraw:
            self._commit(self.partial)
        self.lines.append(line)

    def close(self) -> None:
        self.partial += self._decoder.decode(b"", final=True)
        if self.partial or self.redraw:
            self._commit(self.partial)

    def tail(self, n: int = 200) -> str:
        lines = list(self.lines)[-n:]
        live = self.partial or self.redraw
        if live:
            lines.append(live)
        return "\n".join(lines)

    def stage(self) -> Optional[tuple[int, int, str]]:
        for line in reversed(self.lines):
            m = _STAGE.match(line)
            if m:
                return int(m.group(1)), int(m.group(2)), m.group(3)
        return None

    def progress(self) -> Optional[tuple[int, int, str]]:
        """``(done, total, line)`` of the latest tqdm bar, or None."""
        for line in (self.partial, self.redraw, self.progress_line):
            m = _TQDM_COUNT.search(line or "")
            if m and int(m.group(2)) > 0:
                return int(m.group(1)), int(m.group(2)), line
        return None


class JobRunner:
    """Runs at most one :class:`Job` at a time in the background; thread-safe.

    ``program``: the command prefix (default ``[python, "-m", "scdpo"]``; tests may use another
    program to exercise the runner alone). ``workdir``: where commands run, so relative output
    paths such as ``out/eval`` land there.
    """

    def __init__(self, workdir: str | os.PathLike | None = None, python: Optional[str] = None,
                 program: Optional[Sequence[str]] = None, kill_grace_s: float = 10.0, max_log_lines: int = 4000):
        self.workdir = Path(workdir or os.getcwd()).resolve()
        self.python = python or default_python()
        self.program = list(program) if program else [self.python, "-m", "scdpo"]
        self.kill_grace_s = kill_grace_s
        self.max_log_lines = max_log_lines
        self._lock = threading.Lock()
        self._job: Optional[Job] = None
        self._log = JobLog(max_log_lines)
        self._process: Optional[subprocess.Popen] = None
        self._cancel = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._next_id = 1

    # -- control ---------------------------------------------------------------------------------------

    @property
    def job(self) -> Optional[Job]:
        return self._job

    def busy(self) -> bool:
        with self._lock:
            return self._job is not None and self._job.state == RUNNING

    def start(self, title: str, commands: Sequence[Sequence[str]], results_dir: str | os.PathLike | None = None) -> Job:
        """Start a job; raises :class:`JobBusyError` while another one runs."""
        if not commands:
            raise ScdpoError("nothing to run: the job has no command")
        with self._lock:
            if self._job is not None and self._job.state == RUNNING:
                raise JobBusyError(f"a job is already running ({self._job.title}, started "
                                   f"{time.time() - self._job.started:.0f} s ago); wait for it to finish or "
                                   "cancel it before starting another")
            results = Path(results_dir) if results_dir else None
            if results is not None and not results.is_absolute():
                results = self.workdir / results
            job = Job(self._next_id, title, [list(c) for c in commands], results)
            self._next_id += 1
            self._job, self._log = job, JobLog(self.max_log_lines)
            self._cancel.clear()
            self._thread = threading.Thread(target=self._run, args=(job, self._log), name=f"scdpo-job-{job.id}",
                                            daemon=True)
            self._thread.start()
        return job

    def cancel(self) -> bool:
        """Terminate the running job's process group (SIGTERM, SIGKILL after the grace period).
        Returns False when no job runs."""
        with self._lock:
            if self._job is None or self._job.state != RUNNING:
                return False
            self._cancel.set()
            process = self._process
        if process is not None:
            _terminate_group(process, self.kill_grace_s)
        return True

    def wait(self, timeout: Optional[float] = None) -> Optional[Job]:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self._job

    # -- state -----------------------------------------------------------------------------------------

    def snapshot(self, log_lines: int = 200) -> dict:
        """JSON-able state of the current (or last) job, for the page and the API."""
        with self._lock:
            job, log = self._job, self._log
            if job is None:
                return {"state": IDLE, "id": None, "title": "", "commands": [], "log": "", "progress": None,
                        "progress_text": "", "stage": None, "returncode": None, "elapsed_s": 0.0,
                        "results_dir": None, "message": "", "workdir": str(self.workdir)}
            progress = log.progress()
            stage = log.stage()
            end = job.ended or time.time()
            return {
                "state": job.state, "id": job.id, "title": job.title, "commands": job.command_lines(),
                "current_command": job.current, "log": log.tail(log_lines),
                "progress": None if progress is None else round(progress[0] / progress[1], 4),
                "progress_text": "" if progress is None else progress[2].strip(),
                "stage": None if stage is None else {"index": stage[0], "total": stage[1], "name": stage[2]},
                "returncode": job.returncode, "elapsed_s": round(end - job.started, 1),
                "results_dir": str(job.results_dir) if job.results_dir else None, "message": job.message,
                "workdir": str(self.workdir),
            }

    # -- worker ----------------------------------------------------------------------------------------

    def _run(self, job: Job, log: JobLog) -> None:
        rc: Optional[int] = None
        finished = 0  # commands that exited 0
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            for i, argv in enumerate(job.commands):
                if self._cancel.is_set():
                    break
                job.current = i
                with self._lock:
                    log.note(f"$ {job.command_lines()[i]}")
                rc = self._run_one(argv, log)
                if rc != 0:
                    break
                finished += 1
        except Exception as exc:  # noqa: BLE001 - the page shows it; the UI must keep running
            rc = None
            job.message = f"could not run the job: {type(exc).__name__}: {exc}"
        with self._lock:
            job.returncode = rc
            job.ended = time.time()
            if finished == len(job.commands):
                job.state = SUCCEEDED  # even if a cancel arrived as the last command finished
            elif self._cancel.is_set():
                job.state, job.message = CANCELLED, job.message or "cancelled; start the same job again to resume"
            else:
                job.state = FAILED
                job.message = job.message or f"`{job.command_lines()[job.current]}` failed with exit status {rc}"
            self._process = None
            log.note(f"[{job.state}] {job.message}".rstrip())

    def _run_one(self, argv: list[str], log: JobLog) -> int:
        popen_kw: dict = {}
        if os.name == "posix":
            popen_kw["start_new_session"] = True  # own process group: cancel reaches every child
        else:  # pragma: no cover - Windows
            popen_kw["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        process = subprocess.Popen([*self.program, *argv], cwd=self.workdir, env=job_environment(),
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   **popen_kw)
        with self._lock:
            self._process = process
        if self._cancel.is_set():  # cancelled between commands
            _terminate_group(process, self.kill_grace_s)
        fd = process.stdout.fileno()
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            with self._lock:
                log.feed(chunk)
        process.stdout.close()
        rc = process.wait()
        with self._lock:
            log.close()
        return rc


def _terminate_group(process: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the process group, then SIGKILL what is left after ``grace_s`` seconds."""
    if process.poll() is not None:
        return
    try:
        if os.name == "posix":
            os.killpg(process.pid, signal.SIGTERM)
        else:  # pragma: no cover - Windows
            process.send_signal(signal.CTRL_BREAK_EVENT)
    except (ProcessLookupError, PermissionError, OSError):
        return

    def reap() -> None:
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            try:
                if os.name == "posix":
                    os.killpg(process.pid, signal.SIGKILL)
                else:  # pragma: no cover
                    process.kill()
            except (ProcessLookupError, PermissionError, OSError):
                pass

    threading.Thread(target=reap, name="scdpo-job-kill", daemon=True).start()


_default_runner: Optional[JobRunner] = None
_default_lock = threading.Lock()


def default_runner(workdir: str | os.PathLike | None = None) -> JobRunner:
    """The process-wide runner (every page and tab shares it: one job at a time per UI process)."""
    global _default_runner
    with _default_lock:
        if _default_runner is None:
            _default_runner = JobRunner(workdir or os.environ.get("SCDPO_UI_WORKDIR"))
        return _default_runner
