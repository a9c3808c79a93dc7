"""Fuzz: a seeded corpus of hostile files (``fuzz_corpus``) through every loader, as the CLI meets them,
in subprocesses with a time and memory cap (``fuzz_worker``). Fails on any traceback, hang, memory
blow-up, unpickling or message longer than one line.

The default part (about 1,000 files) runs in well under a minute; the toy base model (a model is
built per file) and the bombs (huge-image PNGs, a zstd parquet bomb, 17 MB headers) are the ``slow``
part. ``SCDPO_FUZZ_REPORT=path.json`` also writes every case's record there;
``SCDPO_FUZZ_TRAINER=<checkout>/trainer`` runs the loaders of another checkout (e.g. before a fix).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from fuzz_corpus import build_corpus

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BAD = ("traceback", "hang", "memory", "unpickle", "long_message", "crash")
CASE_TIMEOUT_S = 60.0


def run_cases(cases: list, work: Path, workers: int = 2, timeout: float = CASE_TIMEOUT_S) -> list[dict]:
    """Every case's record, ``workers`` worker processes each running an interleaved share of the cases.

    The per-case time limit is enforced twice: by the worker's own watchdog thread, and from here (a
    regular expression backtracking in C holds the GIL, so no thread of the worker runs): a worker
    silent for ``timeout`` + 15 s is killed, its case recorded as a hang, and a new one goes on."""
    shares = [[c.as_dict() for c in cases[i::workers]] for i in range(workers)]
    results: list[list[dict]] = [[] for _ in shares]
    threads = [threading.Thread(target=_run_share, args=(share, work / f"cases_{i}.json", timeout, results[i]))
               for i, share in enumerate(shares)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for share in results for r in share]


def _run_share(share: list[dict], path: Path, timeout: float, records: list[dict]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([os.environ.get("SCDPO_FUZZ_TRAINER") or str(REPO / "trainer"),
                                          os.environ.get("PYTHONPATH", "")])}
    path.write_text(json.dumps(share))
    start = 0
    while start < len(share):
        proc = subprocess.Popen([sys.executable, str(HERE / "fuzz_worker.py"), str(path), str(start), str(timeout)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=path.parent)
        lines: queue.Queue = queue.Queue()
        stderr: list[bytes] = []

        def pump(stream=proc.stdout, lines=lines):
            for line in stream:
                lines.put(line)
            lines.put(None)  # the worker's end

        threading.Thread(target=pump, daemon=True).start()
        threading.Thread(target=lambda p=proc, e=stderr: e.append(p.stderr.read()), daemon=True).start()
        wait = timeout + 120  # until the worker says "ready": its imports
        while start < len(share):
            try:
                line = lines.get(timeout=wait)
            except queue.Empty:  # silent past the limit: killed from outside, its case is a hang
                proc.kill()
                proc.wait()
                records.append(_record(share[start], "hang", f"no answer after {timeout:.0f} s (killed)"))
                start += 1
                break
            if line is None:  # the worker ended: after a hang/memory line (exit 3/4), or it crashed
                proc.wait()
                if proc.returncode not in (3, 4):
                    records.append(_record(share[start], "crash", f"exit {proc.returncode}: "
                                                                   f"{b''.join(stderr)[-300:]!r}"))
                    start += 1
                break
            if line.startswith(b"{"):
                records.append(json.loads(line))
                start += 1
            if line.startswith((b"{", b"ready")):
                wait = timeout + 15
        else:
            proc.wait()


def _record(case: dict, outcome: str, message: str) -> dict:
    return {"id": case["id"], "loader": case["loader"], "outcome": outcome, "message": message, "seconds": 0,
            "peak_rss_mb": 0, "file_bytes": 0}


def summary(records: list[dict]) -> str:
    by_loader: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        by_loader[r["loader"]][r["outcome"]] += 1
    lines = [f"{'loader':<12} {'files':>5} {'ok':>5} {'error':>5} " + " ".join(f"{b:>9}" for b in BAD)
             + "  max s  max RSS MB"]
    for loader, counts in sorted(by_loader.items()):
        rs = [r for r in records if r["loader"] == loader]
        lines.append(f"{loader:<12} {len(rs):>5} {counts['ok']:>5} {counts['error']:>5} "
                     + " ".join(f"{counts[b]:>9}" for b in BAD)
                     + f"  {max(r['seconds'] for r in rs):>5.1f}  {max(r['peak_rss_mb'] for r in rs):>10}")
    return "\n".join(lines)


def _check(records: list[dict], cases: list) -> None:
    report = os.environ.get("SCDPO_FUZZ_REPORT")
    if report:
        Path(report).write_text(json.dumps(records, indent=1))
    print("\n" + summary(records))
    assert len(records) == len(cases)
    bad = [r for r in records if r["outcome"] in BAD]
    assert not bad, "\n".join(f"{r['outcome']}: {r['id']}: {r['message'][:300]}" for r in bad[:20])
    errors = [r["message"] for r in records if r["outcome"] == "error"]
    assert all(m.startswith("error: ") and "\n" not in m for m in errors)
    outcomes = Counter(r["outcome"] for r in records)
    assert outcomes["ok"] < len(records) // 3  # the mutations really are hostile


def test_fuzz_default_part(tmp_path):
    cases = build_corpus(tmp_path, slow=False)
    assert len(cases) >= 1000
    records = run_cases(cases, tmp_path)
    _check(records, cases)
    # files the issue reported, now one clean line each
    by_name = {r["id"].split(" ", 1)[1]: r for r in records}
    assert by_name["diffusers_cfg:alpha_pattern_redos"]["outcome"] == "error"
    assert "regular expression" in by_name["diffusers_cfg:alpha_pattern_redos"]["message"]
    assert "finite" in by_name["cost_meta:threshold=Infinity"]["message"]
    assert by_name["dataset_image:eps_16x16"]["outcome"] == "error"


@pytest.mark.slow
def test_fuzz_slow_part(tmp_path):
    cases = build_corpus(tmp_path, fast=False)
    assert len(cases) >= 150
    records = run_cases(cases, tmp_path)
    _check(records, cases)
    by_name = {r["id"].split(" ", 1)[1]: r for r in records}
    assert "megapixels" in by_name["dataset_bomb:row_of_two_12000px"]["message"]
    assert by_name["dataset_bomb:32_rows_of_2048px"]["outcome"] == "ok"  # allowed, and decoded lazily
    assert "compression bomb" in by_name["dataset_bomb:zstd_parquet"]["message"]
    for name in ("toy_base_unet:layers_per_block_1e5", "toy_base_text:odd_hidden", "toy_base_meta:tokenizer_garbage",
                 "toy_base_unet:zero_width_blocks"):
        assert by_name[name]["outcome"] == "error", by_name[name]
