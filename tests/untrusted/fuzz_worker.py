"""Runs fuzz cases in this process, one JSON line per case on stdout, as the CLI would meet them.

``python fuzz_worker.py CASES.json FIRST [TIMEOUT_S]`` runs ``cases[FIRST:]``. Per case it records
the outcome (``ok``; ``error``: a clean one-line ScdpoError; ``traceback``: any other exception;
``unpickle``: something tried to unpickle; ``memory``: an allocation failed or the process's peak
resident memory passed :data:`RSS_LIMIT`; ``hang``: still running after TIMEOUT_S), the error line,
the seconds and the case's peak RSS (the process's, including the ~0.6 GB of imports). A hang or a
memory blow-up ends the process after its line (the runner restarts from the next case), so every
case is measured in a process that never passed the limit.

Nothing here is imported by the project: it is the tests' harness.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import resource
import sys
import threading
import time
from pathlib import Path

RSS_LIMIT = 1024 * 1024 * 1024  # "0 processes past 1 GiB"
AS_HEADROOM = 3 * 1024**3  # address space allowed on top of what the imports mapped (a hard stop)


class Unpickled(BaseException):  # BaseException: no `except Exception` in the code under test swallows it
    pass


def _forbid_unpickling() -> None:
    import torch

    def refuse(*_a, **_k):
        raise Unpickled("something tried to unpickle a file")

    class RefusingUnpickler(pickle.Unpickler):
        def load(self):
            refuse()

    pickle.load = pickle.loads = refuse
    pickle.Unpickler = RefusingUnpickler
    torch.load = refuse


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _peak_rss() -> int:
    """This process's peak resident memory since :func:`_reset_peak` (VmHWM; not ru_maxrss, which
    Linux carries over from the process that forked this one)."""
    return _status("VmHWM")


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
    except OSError:
        pass


def _vm_size() -> int:
    return _status("VmSize")


# --- loaders: what a user's command does with the file ---------------------------------------------


def _cli(argv: list[str]) -> tuple[int, str]:
    from scdpo.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse
            rc = exc.code if isinstance(exc.code, int) else 2
    return rc, err.getvalue()


def load_lora(path: str, work: Path):
    return _cli(["lora", "inspect", "--json", path])


def load_cost(path: str, work: Path):
    return _cli(["cost", "score", "--cost-model", path, str(work / "seeds" / "image.png")])


def load_toy_encoder(path: str, work: Path):
    import torch

    from scdpo.cost.toy_encoder import load_toy_encoder as load

    load(path).encode(torch.rand(2, 20, 24, 3))
    return 0, ""


def load_base(path: str, work: Path):
    return _cli(["generate", "--base", path, "--prompt", "a red circle", "--n", "1", "--steps", "1",
                 "--device", "cpu", "--out", str(work / "generated")])


def detect_sd(path: str, work: Path):
    from scdpo.sd.detect import inspect_base_model

    inspect_base_model(path)
    return 0, ""


def load_dataset(path: str, work: Path):
    rc, err = _cli(["data", "validate", path])
    if rc == 0:  # the items are decoded when read: read them all, as training does
        from scdpo.scp.dataset import load_scp_dataset

        ds = load_scp_dataset(path)
        for i in range(len(ds)):
            ds[i]
    return rc, err


LOADERS = {"lora": load_lora, "cost_model": load_cost, "toy_encoder": load_toy_encoder, "base_model": load_base,
           "sd_detect": detect_sd, "dataset": load_dataset}


# --- one case ------------------------------------------------------------------------------------


def classify(rc: int, stderr: str) -> tuple[str, str]:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    if "Traceback (most recent call last)" in stderr:
        return "traceback", stderr[-300:]
    if rc == 0:
        return "ok", ""
    if len(errors) != 1:
        return "traceback", f"exit {rc} with {len(errors)} error lines: {stderr[-300:]!r}"
    return "error", errors[0]


def run_case(case: dict, work: Path) -> dict:
    from scdpo import errors
    from scdpo.errors import ScdpoError

    max_chars = getattr(errors, "MAX_MESSAGE_CHARS", 400)  # older versions (SCDPO_FUZZ_TRAINER) lack it

    t0 = time.time()
    try:
        rc, stderr = LOADERS[case["loader"]](case["path"], work)
        outcome, message = classify(rc, stderr)
    except ScdpoError as exc:
        outcome, message = "error", f"error: {exc}"
    except Unpickled as exc:
        outcome, message = "unpickle", str(exc)
    except MemoryError:
        outcome, message = "memory", "MemoryError"
    except Exception as exc:  # noqa: BLE001 - the finding
        import traceback

        outcome, message = "traceback", "".join(traceback.format_exception_only(type(exc), exc))[-400:]
    if outcome == "error":
        if len(message) > max_chars + len("error: ") or "\n" in message:
            outcome = "long_message"
        elif "allocate" in message or "MemoryError" in message or "out of memory" in message:
            outcome = "memory"
    peak = _peak_rss()
    if peak > RSS_LIMIT:
        outcome = "memory"
    return {"id": case["id"], "loader": case["loader"], "outcome": outcome, "message": message[:500],
            "seconds": round(time.time() - t0, 3), "peak_rss_mb": round(peak / 2**20),
            "file_bytes": _size(case["path"])}


def _size(path: str) -> int:
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size if p.exists() else 0


def _emit(record: dict) -> None:
    out = sys.__stdout__  # not sys.stdout: a case may have it redirected when the watchdog fires
    out.write(json.dumps(record) + "\n")
    out.flush()


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    first = int(sys.argv[2])
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 60.0
    work = Path(sys.argv[1]).parent
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import scdpo.cli  # noqa: F401 - every import before the address-space limit is taken
    import scdpo.cost.scorer  # noqa: F401
    import scdpo.scp.dataset  # noqa: F401
    import scdpo.sd.detect  # noqa: F401
    import scdpo.toy.model  # noqa: F401

    _forbid_unpickling()
    resource.setrlimit(resource.RLIMIT_AS, (_vm_size() + AS_HEADROOM, resource.RLIM_INFINITY))
    current: dict = {}

    def watchdog():
        while True:
            time.sleep(0.25)
            started, case = current.get("t0"), current.get("case")
            if started and time.time() - started > timeout:
                _emit({"id": case["id"], "loader": case["loader"], "outcome": "hang",
                       "message": f"still running after {timeout:.0f} s", "seconds": timeout,
                       "peak_rss_mb": round(_peak_rss() / 2**20), "file_bytes": _size(case["path"])})
                os._exit(3)

    threading.Thread(target=watchdog, daemon=True).start()
    sys.__stdout__.write("ready\n")  # the imports are done: the runner's own clock starts per case now
    sys.__stdout__.flush()
    for case in cases[first:]:
        _reset_peak()
        current.update(case=case, t0=time.time())
        record = run_case(case, work)
        current.update(t0=None)
        _emit(record)
        if record["outcome"] == "memory":
            os._exit(4)  # measure the next case in a fresh process


if __name__ == "__main__":
    main()
