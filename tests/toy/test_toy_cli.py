"""The `scdpo` command line: help, version, generation, and one clear error line per bad input."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import load_file

from scdpo import __version__
from scdpo.cli import main
from scdpo.toy.model import ToyTextToImage

SCDPO = [sys.executable, "-m", "scdpo"]


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "tiny_toy.safetensors"
    ToyTextToImage.from_scratch(seed=1).save(path)
    return path


def test_help_and_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["toy", "pretrain", "--help"])
    out = capsys.readouterr().out
    assert "--steps" in out and "resumes" in out


def test_generate_writes_pngs_with_metadata(tiny_weights, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# comment\na red square on a black background\n\na blue ring\n")
    rc = main(["generate", "--prompt-file", str(prompts), "--base", str(tiny_weights), "--out",
               str(tmp_path / "out"), "--steps", "2", "--seed", "3"])
    assert rc == 0
    files = sorted((tmp_path / "out").glob("*.png"))
    assert len(files) == 2
    img = Image.open(files[1])
    assert img.size == (16, 16)
    assert img.text["prompt"] == "a blue ring" and img.text["seed"] == "4"
    assert img.text["model"] == "tiny_toy" and img.text["lora"] == ""


@pytest.mark.parametrize(
    "case, expect",
    [
        ("missing_prompt_file", "prompt file not found"),
        ("unwritable_out", "cannot create output folder"),
        ("corrupt_weights", "not a safetensors file"),
        ("foreign_weights", "not supported"),
    ],
)
def test_bad_input_gives_one_clear_error_line(case, expect, tmp_path, capsys, tiny_weights):
    args = ["generate", "--prompt", "a red square", "--steps", "1", "--base", str(tiny_weights), "--out", str(tmp_path / "o")]
    if case == "missing_prompt_file":
        args[1:3] = ["--prompt-file", str(tmp_path / "nope.txt")]
    elif case == "unwritable_out":
        blocker = tmp_path / "a_file"
        blocker.write_text("x")  # a folder cannot be created below a file, even by root
        args[-1] = str(blocker / "sub")
    elif case == "corrupt_weights":
        bad = tmp_path / "bad.safetensors"
        bad.write_bytes(b"\x00garbage")
        args[args.index("--base") + 1] = str(bad)
    elif case == "foreign_weights":
        from safetensors.torch import save_file
        import torch

        other = tmp_path / "other.safetensors"
        save_file({"foo": torch.zeros(1)}, str(other))
        args[args.index("--base") + 1] = str(other)
    rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0], err


def _run_pretrain(out: Path, steps: int) -> subprocess.Popen:
    return subprocess.Popen(
        SCDPO + ["toy", "pretrain", "--steps", str(steps), "--batch-size", "4", "--checkpoint-every", "1",
                 "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


@pytest.mark.slow
def test_pretrain_killed_and_resumed_gives_the_same_weights_as_uninterrupted(tmp_path):
    steps = 30
    ref = _run_pretrain(tmp_path / "ref", steps)
    assert ref.wait(timeout=600) == 0
    out = tmp_path / "killed"
    proc = _run_pretrain(out, steps)
    state = out / "toy_base.state.safetensors"
    deadline = time.time() + 300
    while not state.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # a few more steps, then kill mid-run
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "toy_base.safetensors").exists(), "run finished before it could be killed"
    resumed = _run_pretrain(out, steps)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert "resuming from" in err
    a = load_file(str(tmp_path / "ref" / "toy_base.safetensors"))
    b = load_file(str(out / "toy_base.safetensors"))
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a)
    assert not state.exists()


def test_generate_refuses_a_lora_for_another_base_model(tmp_path, capsys, tiny_weights):
    """`scdpo generate --lora` checks ss_base_model_version before attaching (one error line)."""
    import torch

    from scdpo.lora.files import save_lora
    from scdpo.lora.naming import kohya_name

    model = ToyTextToImage.load(tiny_weights)
    path = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    layer = model.unet.get_submodule(path)
    tensors = {f"{kohya_name(path)}.lora_down.weight": torch.zeros(2, layer.in_features),
               f"{kohya_name(path)}.lora_up.weight": torch.zeros(layer.out_features, 2),
               f"{kohya_name(path)}.alpha": torch.tensor(2.0)}
    for version, ok in (("toy_v1", True), ("sd_v1", False)):
        lora = save_lora(tmp_path / f"{version}.safetensors", tensors, {"ss_base_model_version": version})
        rc = main(["generate", "--prompt", "a red square", "--steps", "1", "--base", str(tiny_weights),
                   "--lora", str(lora), "--out", str(tmp_path / version)])
        err = capsys.readouterr().err.strip().splitlines()
        if ok:
            assert rc == 0, err
        else:
            assert rc == 2 and len(err) == 1 and "sd_v1" in err[0], err
