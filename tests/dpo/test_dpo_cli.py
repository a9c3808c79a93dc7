"""`scdpo train` options (TOML + flags), and end-to-end runs in subprocesses: kill -9 + resume,
`accelerate launch` with two CPU processes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scdpo.cli import build_parser, main
from scdpo.dpo import TrainConfig, summary_of
from scdpo.dpo.config import config_from_args
from scdpo.fileio import decode_metadata, read_safetensors_header
from scdpo.lora import load_lora
from scdpo.toy.model import ToyTextToImage

REPO = Path(__file__).resolve().parents[2]


def _parse(argv):
    return config_from_args(build_parser().parse_args(["lora", "train", *argv]))


def test_defaults_toml_and_flags_precedence(tmp_path):
    assert _parse([]) == TrainConfig()
    toml = tmp_path / "run.toml"
    toml.write_text('[train]\nbeta = 3000\nlambda = 0.25\nsteps = 7\ncategories = ["gore"]\nclean_pairs = false\n')
    cfg = _parse(["--config", str(toml), "--steps", "9", "--target-modules", "to_q,to_v", "--train-ff"])
    assert (cfg.beta, cfg.lam, cfg.steps, cfg.categories, cfg.clean_pairs) == (3000.0, 0.25, 9, ["gore"], False)
    assert cfg.lora_target_modules() == ["to_q", "to_v", "ff.net.0.proj", "ff.net.2"]
    assert cfg.method == "safetydpo-expert"
    assert _parse(["--lambda", "0", "--gamma", "0"]).method == "diffusion-dpo"


def test_bad_options_are_one_clear_error(tmp_path, capsys):
    toml = tmp_path / "bad.toml"
    toml.write_text("betta = 3\n")
    assert main(["lora", "train", "--config", str(toml)]) == 2
    assert "unknown training option 'betta'" in capsys.readouterr().err
    assert main(["lora", "train", "--lr-schedule", "wiggly"]) == 2
    assert "lr_schedule must be one of constant, cosine, linear" in capsys.readouterr().err
    assert main(["lora", "train", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "training config not found" in capsys.readouterr().err
    toml.write_text("steps = 'many'\n")
    assert main(["lora", "train", "--config", str(toml)]) == 2
    assert "steps = 'many' is not a valid int" in capsys.readouterr().err


def test_lr_schedule_warmup_then_decay():
    cfg = TrainConfig(steps=10, warmup_steps=2, lr_schedule="linear")
    assert [round(cfg.lr_factor(s), 3) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    cos = TrainConfig(steps=10, warmup_steps=0, lr_schedule="cosine")
    assert cos.lr_factor(0) == 1.0 and cos.lr_factor(5) == pytest.approx(0.5) and cos.lr_factor(10) == pytest.approx(0)


@pytest.fixture(scope="module")
def toy_base_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "toy_base.safetensors"
    ToyTextToImage.from_scratch(0).save(path)  # a file keeps one tokenizer across processes
    return path


def test_cli_train_in_process(tmp_path, toy_base_file, capsys):
    code = main(["lora", "train", "--base", str(toy_base_file), "--toy-oracle-pairs", "16", "--steps", "2", "--batch-size", "2",
                 "--rank", "2", "--out", str(tmp_path), "--name", "cli", "--quiet"])
    assert code == 0
    assert "wrote" in capsys.readouterr().out
    assert load_lora(tmp_path / "cli.safetensors").metadata["ss_base_model_version"] == "toy_v1"
    assert (tmp_path / "cli.config.toml").exists()


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                TOKENIZERS_PARALLELISM="false")


def _train_cmd(base, out, steps):
    return [sys.executable, "-m", "scdpo.cli", "lora", "train", "--base", str(base), "--toy-oracle-pairs", "24",
            "--steps", str(steps), "--batch-size", "2", "--rank", "2", "--checkpoint-every", "2", "--out", str(out),
            "--name", "k", "--quiet"]


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_same_lora(tmp_path, toy_base_file):
    steps = 40
    subprocess.run(_train_cmd(toy_base_file, tmp_path / "a", steps), check=True, env=_env(), cwd=REPO)
    state = tmp_path / "b" / "k.state.safetensors"
    proc = subprocess.Popen(_train_cmd(toy_base_file, tmp_path / "b", steps), env=_env(), cwd=REPO)
    try:
        deadline = time.time() + 300
        step = 0
        while time.time() < deadline and proc.poll() is None:
            if state.exists():
                try:
                    step = decode_metadata(read_safetensors_header(state)["__metadata__"])["step"]
                except Exception:  # being replaced right now
                    step = 0
                if step >= 4:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed; raise steps"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL and 4 <= step < steps
    assert not (tmp_path / "b" / "k.safetensors").exists()
    subprocess.run(_train_cmd(toy_base_file, tmp_path / "b", steps), check=True, env=_env(), cwd=REPO)
    full, resumed = load_lora(tmp_path / "a" / "k.safetensors"), load_lora(tmp_path / "b" / "k.safetensors")
    assert set(full.tensors) == set(resumed.tensors)
    for key, value in full.tensors.items():
        assert torch.equal(value, resumed.tensors[key]), key
    assert not state.exists()


def _accelerate(launch_args, train_args, tmp_path, name):
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", *launch_args, "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "scdpo.cli", "lora", "train", *train_args, "--toy-oracle-pairs", "24",
           "--steps", "4", "--batch-size", "2", "--rank", "2", "--checkpoint-every", "2", "--out", str(tmp_path),
           "--name", name, "--quiet"]
    proc = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1  # only the main process writes and reports
    return summary_of(tmp_path / f"{name}.safetensors")


@pytest.mark.slow
def test_accelerate_launch_cpu_runs_to_completion(tmp_path, toy_base_file):
    # accelerate 1.x starts several CPU processes only through mpirun (a hostfile); without MPI this
    # exact command runs one process, which must still complete.
    summary = _accelerate(["--num_processes", "2", "--cpu"], ["--base", str(toy_base_file)], tmp_path, "cpu")
    assert summary["steps"] == 4 and summary["world_size"] in (1, 2)


@pytest.mark.slow
def test_accelerate_launch_two_processes_ddp_on_cpu(tmp_path, toy_base_file):
    # torchrun-style launch (what accelerate does for several GPUs) of two CPU processes: DDP over gloo
    summary = _accelerate(["--multi_gpu", "--num_processes", "2"], ["--cpu", "--base", str(toy_base_file)],
                          tmp_path, "ddp")
    assert summary["world_size"] == 2 and summary["total_batch_size"] == 4 and summary["pairs_seen"] == 16
