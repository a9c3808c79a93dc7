"""The trainer footprint benchmark runs every design on the mid-size SD-shaped model, and the
memory order it exists to show holds: one bf16 UNet < a LoRA on two fp32 UNets < a full
fine-tune (timing is reported, not asserted: CI machines are noisy)."""

import math

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
