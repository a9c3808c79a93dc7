"""How a training run computes: base dtype choice, one process without accelerate, event files
without TensorBoard, and what a CLI training process imports."""

import json
import subprocess
import sys

import pytest
import torch

import scdpo.dpo.runtime as runtime
from scdpo.dpo import ToyOraclePairs, TrainConfig, train_lora
from scdpo.errors import ScdpoError
from scdpo.eventlog import EventWriter, crc32c, read_scalars
from scdpo.lora import load_lora

TINY = dict(steps=3, batch_size=2, rank=4, alpha=4.0, lr=1e-3, warmup_steps=1, checkpoint_every=0, log_every=1,
            beta=500.0, lam=0.5, gamma=1.0, max_grad_norm=0.5)


def test_base_dtype_choices():
    cpu = torch.device("cpu")
    assert runtime.resolve_base_dtype("auto", cpu, toy=False) == torch.bfloat16
    assert runtime.resolve_base_dtype("auto", cpu, toy=True) == torch.float32
    assert runtime.resolve_base_dtype("fp32", cpu, toy=False) == torch.float32
    assert runtime.resolve_base_dtype("bf16", cpu, toy=True) == torch.bfloat16
    with pytest.raises(ScdpoError, match="fp16 needs a CUDA GPU"):
        runtime.resolve_base_dtype("fp16", cpu, toy=False)
    with pytest.raises(ScdpoError, match="base_dtype must be one of"):
        runtime.resolve_base_dtype("int8", cpu, toy=False)
    with pytest.raises(ScdpoError, match="base_dtype must be one of"):
        TrainConfig(base_dtype="fp8").validate()


def test_single_process_trains_the_lora_accelerate_trains(tmp_path, toy_model, monkeypatch):
    """The plain-torch stand-in and accelerate's Accelerator give bit-identical LoRAs (clipping on)."""
    pairs = ToyOraclePairs(12, seed=5)
    ours = load_lora(train_lora(TrainConfig(out=str(tmp_path / "a"), **TINY), model=toy_model, dataset=pairs,
                                progress=False))
    monkeypatch.setattr(runtime, "launched_distributed", lambda: True)  # as under a launcher
    theirs = load_lora(train_lora(TrainConfig(out=str(tmp_path / "b"), **TINY), model=toy_model, dataset=pairs,
                                  progress=False))
    assert set(ours.tensors) == set(theirs.tensors)
    for k, v in ours.tensors.items():
        assert torch.equal(v, theirs.tensors[k]), k
    assert sum(float(v.abs().sum()) for k, v in ours.tensors.items() if "lora_up" in k) > 0


def test_a_model_passed_in_trains_in_its_own_dtype(tmp_path, toy_model):
    cfg = TrainConfig(out=str(tmp_path), base_dtype="bf16", **TINY)
    with pytest.raises(ScdpoError, match="trains in its own dtype"):
        train_lora(cfg, model=toy_model, dataset=ToyOraclePairs(4, seed=0), progress=False)


def test_event_files_read_by_tensorboard_with_resume_purge(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    with EventWriter(tmp_path) as w:
        for step in range(1, 6):
            w.add_scalar("train/loss", 1.0 / step, step, wall_time=100.0 + step)
    assert [(t, s, w_, round(v, 4)) for t, s, w_, v in read_scalars(w.path)] == [
        ("train/loss", s, 100.0 + s, round(1.0 / s, 4)) for s in range(1, 6)]
    data = w.path.read_bytes()
    w.path.write_bytes(data[:-7])  # a run killed mid-write: the whole points before it still read
    assert [s for _, s, _, _ in read_scalars(w.path)] == [1, 2, 3, 4]
    w.path.write_bytes(data)
    with EventWriter(tmp_path, purge_step=3) as w:  # a run resumed from step 2's checkpoint
        for step in range(3, 5):
            w.add_scalar("train/loss", 10.0 + step, step)
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    points = [(e.step, round(e.value, 4)) for e in acc.Scalars("train/loss")]
    assert points == [(1, 1.0), (2, 0.5), (3, 13.0), (4, 14.0)]


def test_cli_training_process_uses_neither_accelerate_nor_tensorboard(tmp_path):
    """A single-process CPU run of `scdpo lora train` never sets up accelerate's process state (diffusers
    imports the package itself) and never imports TensorBoard, yet writes TensorBoard event files."""
    code = (
        "import sys, json\n"
        "from scdpo.cli import main\n"
        f"rc = main(['lora', 'train', '--out', {str(tmp_path)!r}, '--steps', '2', '--batch-size', '2',"
        " '--toy-oracle-pairs', '4', '--rank', '2', '--alpha', '2'])\n"
        "from accelerate.state import PartialState\n"
        "print(json.dumps({'rc': rc, 'state': bool(PartialState._shared_state), 'mods': sorted(m for m in "
        "sys.modules if m.startswith(('tensorboard', 'torch.utils.tensorboard', 'gradio', 'fastapi')))}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["rc"] in (0, None) and report["mods"] == [] and report["state"] is False
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*"))
