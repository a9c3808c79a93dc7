"""The GPU check runs the trainer's step on CPU at a tiny size, for both families, and refuses a
full-size CPU run with one line (the real numbers come from a CUDA machine)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "sd"))
from sd_ldm_checkpoints import write_tiny_configs  # noqa: E402

from scdpo.bench.gpu import format_rows, main, measure  # noqa: E402


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_tiny_step_on_cpu(family, tmp_path):
    cfg = json.loads((write_tiny_configs(family, tmp_path / "cfg") / "unet" / "config.json").read_text())
    row = measure(family, resolution=32, steps=2, device="cpu", unet_config=cfg)
    assert row["finite_loss"] and row["base_dtype"] == "bf16" and row["device"] == "cpu"
    assert len(row["step_seconds"]) == 2 and all(s > 0 for s in row["step_seconds"])
    assert row["peak_bytes"] > 0 and row["plan_bytes"] is None and row["target_gib"] is None
    assert f"| {family} | 32² | cpu, bf16 |" in format_rows([row])


def test_full_size_on_cpu_is_refused(capsys):
    assert main(["--device", "cpu"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert main(["--families", "sd3"]) == 2
