"""The trainer footprint benchmark runs every design on the mid-size SD-shaped model, and the
memory order it exists to show holds: one bf16 UNet < a LoRA on two fp32 UNets < a full
fine-tune (timing is reported, not asserted: CI machines are noisy)."""

import math
import os
import sys

import pytest

from scdpo.bench.footprint import VARIANTS, format_report, run_benchmark


@pytest.mark.slow
def test_bench_trainers_measures_every_design(tmp_path):
    report = run_benchmark(rounds=1, steps=5, skip=2, progress=False)
    s = report["summary"]
    assert set(s) == set(VARIANTS)
    assert s["scdpo"]["peak_rss"] < s["scdpo-fp32"]["peak_rss"] < s["two-unet-lora"]["peak_rss"]
    assert s["two-unet-lora"]["peak_rss"] < s["two-unet-full"]["peak_rss"]
    # one 70 M-parameter UNet less, plus half of the other: at least 250 MiB apart
    assert s["two-unet-lora"]["peak_rss"] - s["scdpo"]["peak_rss"] > 250 * 2**20
    for runs in report["runs"].values():
        assert all(r["step"] > 0 and math.isfinite(r["final_loss"]) for r in runs)
    assert set(report["ratios"]) == {"peak_rss/two-unet-lora", "peak_rss/two-unet-full", "step/two-unet-lora"}
    text = format_report(report)
    assert "two-UNet LoRA (SafetyDPO design)" in text and "ru_maxrss" in text


def test_a_runs_peak_is_its_own_not_the_measuring_processs(tmp_path):
    """The kernel carries a process's memory high-water mark across fork and exec: a run started from
    a large process (a test session, the benchmark holding its model) reported at least that process's
    size, so two variants could tie at the byte. Runs are started through a small launcher."""
    from scdpo.bench.footprint import _run

    mib = 2**20
    held = b"x" * (500 * mib)  # this process, 500 MiB larger
    env = dict(os.environ)
    code, bare, _ = _run([sys.executable, "-c", "pass"], env, tmp_path / "bare.log")
    code_big, big, _ = _run([sys.executable, "-c", "b = b'x' * (300 * 2**20)"], env, tmp_path / "big.log")
    assert code == code_big == 0 and len(held) == 500 * mib
    assert bare < 100 * mib, bare / mib
    assert 300 * mib < big < 450 * mib, big / mib
    missing, peak, _ = _run([str(tmp_path / "no-such-program")], env, tmp_path / "missing.log")
    assert missing != 0 and peak == 0 and "no-such-program" in (tmp_path / "missing.log").read_text()
