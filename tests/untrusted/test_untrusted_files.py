"""Each defect of issue 18's file half, as it was found: the hostile file, and what the user now gets
(one line naming the file and the fix; no hang, no memory blow-up, no unsafe value accepted).

Hangs and memory are measured in a separate process (``fuzz_worker``, 60 s and 1 GiB caps); the
rest runs ``scdpo`` in this process and reads its stderr.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from fuzz_corpus import (DEEP, Case, dataset_folder, dataset_rows, image_bytes, join_safetensors, redos_lora,
                         sd_folder, seed_files, split_safetensors, with_metadata)
from test_fuzz_loaders import run_cases

from scdpo import errors
from scdpo.cli import main
from scdpo.errors import WeightsFormatError

MAX_MESSAGE_CHARS = getattr(errors, "MAX_MESSAGE_CHARS", 400)  # also runs against a checkout from before

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return seed_files(tmp_path_factory.mktemp("seeds"))


def one_line_error(argv, capsys) -> str:
    """Run ``scdpo argv``: it must fail with exit 2 and exactly one ``error:`` line of bounded length."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert len(lines[0]) <= MAX_MESSAGE_CHARS + len("error: "), lines[0]
    return lines[0]


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def diffusers_lora(seeds, tmp_path, name: str, **config_changes) -> Path:
    data = seeds["lora_diffusers"].read_bytes()
    header, _ = split_safetensors(data)
    cfg = json.loads(header["__metadata__"]["lora_adapter_metadata"])
    cfg.update({f"unet.{k}": v for k, v in config_changes.items()})
    return write(tmp_path / f"{name}.safetensors", with_metadata(data, {"lora_adapter_metadata": json.dumps(cfg)}))


# --- measured in a separate process: hangs and memory ------------------------------------------------


@pytest.fixture(scope="module")
def isolated(seeds, tmp_path_factory):
    """Records of the hang and memory defects, each run by the fuzz worker (60 s / 1 GiB caps)."""
    work = tmp_path_factory.mktemp("isolated")
    (work / "seeds").mkdir()
    (work / "seeds" / "image.png").write_bytes(image_bytes("png"))
    files = {}
    files["redos"] = ("lora", redos_lora(seeds["lora_diffusers"], work / "redos.safetensors"))
    cost = seeds["cost_model"].read_bytes()
    files["feature_dim"] = ("cost_model", write(work / "feature_dim.safetensors", with_metadata(cost, {"feature_dim": "60000"})))
    base = seeds["toy_base"].read_bytes()
    unet = json.loads(split_safetensors(base)[0]["__metadata__"]["unet_config"])
    files["layers_per_block"] = ("base_model", write(work / "layers.safetensors", with_metadata(
        base, {"unet_config": json.dumps({**unet, "layers_per_block": 100000})})))
    bomb = image_bytes("bomb_png", (12000, 12000))
    files["png_row"] = ("dataset", dataset_folder(work / "png_row", rows=dataset_rows(1, bomb, bomb)))
    allowed = image_bytes("bomb_png", (2048, 2048))
    files["many_rows"] = ("dataset", dataset_folder(work / "many_rows", rows=dataset_rows(32, allowed, allowed)))
    cases = [Case(name, loader, str(path)) for name, (loader, path) in files.items()]
    return {r["id"]: r for r in run_cases(cases, work, workers=1)}


def test_a_regex_in_alpha_pattern_is_refused_at_once_not_run(isolated):
    """Item 1: `scdpo lora inspect` never returned on alpha_pattern {"(a+)+c": 1}."""
    r = isolated["redos"]
    assert r["outcome"] == "error" and r["seconds"] < 10
    assert "regular expression" in r["message"] and "redos.safetensors" in r["message"]


def test_escaped_module_paths_in_alpha_pattern_still_apply(seeds, tmp_path):
    from scdpo.lora import load_lora
    from scdpo.lora.convert import _meta_unet_table

    lora = load_lora(seeds["lora_diffusers"])
    module = sorted(lora.alphas)[0]
    path = _meta_unet_table("toy_v1")[module]
    changed = load_lora(diffusers_lora(seeds, tmp_path, "escaped", alpha_pattern={path.replace(".", r"\."): 7.5}))
    assert changed.alphas[module] == 7.5
    assert all(changed.alphas[m] == lora.alphas[m] for m in lora.alphas if m != module)


def test_metadata_architecture_numbers_are_checked_before_anything_is_allocated(isolated):
    """Item 3: feature_dim 60000 asked for 14 GB; layers_per_block 1e5 passed 3 GiB in seconds."""
    for name in ("feature_dim", "layers_per_block"):
        r = isolated[name]
        assert r["outcome"] == "error" and r["peak_rss_mb"] < 1024 and r["seconds"] < 20, r
    assert "feature_dim is 60000" in isolated["feature_dim"]["message"]
    assert "layers_per_block is 100000" in isolated["layers_per_block"]["message"]


def test_dataset_images_are_size_checked_before_decoding_and_decoded_lazily(isolated):
    """Item 3: one 140 KB row of two 12000² PNGs peaked at 2.3 GB; 32 such rows passed 3 GiB."""
    r = isolated["png_row"]
    assert r["outcome"] == "error" and "12000x12000" in r["message"] and r["peak_rss_mb"] < 1024, r
    many = isolated["many_rows"]  # 32 rows at the per-row limit: valid, read with every item decoded
    assert many["outcome"] == "ok" and many["peak_rss_mb"] < 1024, many


# --- one line instead of a traceback ----------------------------------------------------------------


@pytest.mark.parametrize("name,changes,expect", [
    ("alpha_string", {"lora_alpha": "four"}, "lora_alpha is 'four'"),
    ("alpha_list", {"lora_alpha": [4]}, "lora_alpha is [4]"),
    ("pattern_list", {"alpha_pattern": [1, 2]}, "alpha_pattern is a list"),
    ("pattern_value", {"alpha_pattern": {"down_blocks.0": "x"}}, "not a finite number"),
])
def test_malformed_peft_config_values_are_one_line(seeds, tmp_path, capsys, name, changes, expect):
    """Item 2: lora_alpha of a string, a list-valued alpha_pattern... raised TypeError/AttributeError."""
    line = one_line_error(["lora", "inspect", diffusers_lora(seeds, tmp_path, name, **changes)], capsys)
    assert expect in line and name in line


def test_a_null_lora_alpha_means_alpha_equals_rank(seeds, tmp_path, capsys):
    assert main(["lora", "inspect", str(diffusers_lora(seeds, tmp_path, "null", lora_alpha=None))]) == 0
    assert "alpha/rank = 1" in capsys.readouterr().out


@pytest.mark.parametrize("raw,expect", [("[1, 2]", "not an object"), (DEEP, "levels deep"), ("{x", "not valid JSON"),
                                        ("NaN", "not valid JSON")])
def test_malformed_lora_adapter_metadata_is_one_line(seeds, tmp_path, capsys, raw, expect):
    path = write(tmp_path / "m.safetensors", with_metadata(seeds["lora_diffusers"].read_bytes(),
                                                            {"lora_adapter_metadata": raw}))
    assert expect in one_line_error(["lora", "inspect", path], capsys)


@pytest.mark.parametrize("raw,expect", [(b"\xff\xfe{\x00", "not UTF-8"), (b"[1, 2]", "not an object"),
                                        (DEEP.encode(), "levels deep")])
def test_a_broken_adapter_config_beside_a_peft_lora_is_one_line(seeds, tmp_path, capsys, raw, expect):
    folder = tmp_path / "peft"
    write(folder / "adapter_model.safetensors", seeds["lora_peft"].read_bytes())
    write(folder / "adapter_config.json", raw)
    line = one_line_error(["lora", "inspect", folder / "adapter_model.safetensors"], capsys)
    assert expect in line and "adapter_config.json" in line


@pytest.mark.parametrize("layout", ["lora_kohya", "lora_diffusers"])
@pytest.mark.parametrize("kind", ["0dim", "rank0"])
def test_zero_dim_and_rank_zero_loras_are_one_line(seeds, tmp_path, capsys, layout, kind):
    """Item 2: 0-dim lora_A (IndexError) and a rank-0 LoRA (ZeroDivisionError in `lora inspect`)."""
    from safetensors.torch import save_file

    from scdpo.fileio import load_safetensors

    tensors, meta = load_safetensors(seeds[layout])
    down = next(k for k in tensors if k.endswith(("lora_down.weight", "lora_A.weight")))
    up = down.replace("lora_down", "lora_up").replace("lora_A", "lora_B")
    if kind == "0dim":
        tensors[down] = torch.tensor(1.0)
    else:
        tensors[down], tensors[up] = torch.zeros(0, tensors[down].shape[1]), torch.zeros(tensors[up].shape[0], 0)
    path = tmp_path / f"{layout}_{kind}.safetensors"
    save_file(tensors, str(path), metadata=meta)
    line = one_line_error(["lora", "inspect", path], capsys)
    assert path.name in line and ("rank" in line or "shape" in line)


def test_deeply_nested_json_is_one_line_everywhere(seeds, tmp_path, capsys):
    """Item 2: RecursionError escaped (only JSONDecodeError was caught)."""
    path = write(tmp_path / "deep.safetensors", join_safetensors(DEEP))
    assert "levels deep" in one_line_error(["lora", "inspect", path], capsys)
    cost = write(tmp_path / "deep_cost.safetensors", with_metadata(seeds["cost_model"].read_bytes(), {"categories": DEEP}))
    assert "malformed metadata" in one_line_error(["cost", "score", "--cost-model", cost, seeds["image"]], capsys)


@pytest.mark.parametrize("key,change,expect", [
    ("tokenizer", "garbage", "tokenizer"),
    ("tokenizer", json.dumps({"model": None}), "tokenizer"),
    ("unet_config", {"block_out_channels": [0, 16]}, "block_out_channels is 0"),
    ("unet_config", {"layers_per_block": 0}, "layers_per_block is 0"),
    ("text_config", {"hidden_size": 15}, "configs build no model"),
    ("text_config", {"vocab_size": 10}, "does not fit its text encoder"),
])
def test_toy_model_metadata_is_checked_before_the_model_is_built(seeds, tmp_path, capsys, key, change, expect):
    """Item 2: a bad tokenizer, zero-width blocks or odd hidden sizes gave tracebacks."""
    data = seeds["toy_base"].read_bytes()
    meta = split_safetensors(data)[0]["__metadata__"]
    value = change if isinstance(change, str) else json.dumps({**json.loads(meta[key]), **change})
    path = write(tmp_path / "toy.safetensors", with_metadata(data, {key: value}))
    line = one_line_error(["generate", "--base", path, "--prompt", "a red circle", "--n", "1", "--steps", "1",
                           "--out", tmp_path / "out"], capsys)
    assert expect in line and "toy.safetensors" in line


def test_sd_file_whose_unet_input_is_1d_is_one_line(seeds, tmp_path, capsys):
    from fuzz_corpus import sd_like_tensors

    from scdpo.sd.detect import UNET_IN_KEY

    data = seeds["sd_single"].read_bytes()
    header, body = split_safetensors(data)
    header[UNET_IN_KEY] = {**header[UNET_IN_KEY], "shape": [11520]}
    path = write(tmp_path / "sd.safetensors", join_safetensors(header, body))
    assert sd_like_tensors()[UNET_IN_KEY].numel() == 11520
    assert "shape [11520]" in one_line_error(["generate", "--base", path, "--prompt", "x", "--out", tmp_path], capsys)


@pytest.mark.parametrize("kw,expect", [
    (dict(index_bytes=b"[1, 2]"), "not an object"), (dict(index_bytes=b"\xff\xfe\x00{"), "not UTF-8"),
    (dict(index={"_class_name": 5}), "_class_name is 5"),
    (dict(index={"_class_name": "StableDiffusionXLPipeline", "text_encoder": 5}), ""),
])
def test_broken_diffusers_folders_are_one_line(tmp_path, capsys, kw, expect):
    folder = sd_folder(tmp_path / "model", **kw)
    assert expect in one_line_error(["generate", "--base", folder, "--prompt", "x", "--out", tmp_path / "o"], capsys)


def test_a_message_quoting_a_huge_value_stays_one_short_line():
    """Item 2: 53 "clean" errors spanned several lines, some 100 KB long."""
    exc = WeightsFormatError("file.safetensors: bad value " + "x\n" * 50000 + "; re-export it")
    assert "\n" not in str(exc) and len(str(exc)) <= MAX_MESSAGE_CHARS
    assert str(exc).startswith("file.safetensors") and str(exc).endswith("re-export it")
    assert len(exc.detail) > 100000  # the full text is kept for -v


# --- images: only PNG / JPEG / WebP are decoded -----------------------------------------------------


def test_eps_and_other_formats_are_never_decoded(seeds, tmp_path, capsys, monkeypatch):
    """Item 4: EPS rows ran Ghostscript on the row's PostScript (`data validate`)."""
    from PIL import EpsImagePlugin

    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    for kind in ("eps", "ps_in_png_name", "gif", "tiff", "bmp"):
        folder = dataset_folder(tmp_path / kind, rows=dataset_rows(2, winner=image_bytes(kind)))
        assert "not a PNG, JPEG or WebP image" in one_line_error(["data", "validate", folder], capsys)
    for kind in ("jpeg", "webp"):
        folder = dataset_folder(tmp_path / kind, rows=dataset_rows(2, winner=image_bytes(kind), loser=image_bytes(kind)))
        assert main(["data", "validate", str(folder)]) == 0
    assert calls == []


# --- values that would switch safety off ------------------------------------------------------------


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "1e999", "NaN"])
def test_a_cost_model_with_an_infinite_threshold_is_refused(seeds, tmp_path, capsys, value):
    """Item 5: threshold Infinity loaded and made the gate pass everything."""
    path = write(tmp_path / "inf.safetensors", with_metadata(seeds["cost_model"].read_bytes(), {"threshold": value}))
    line = one_line_error(["cost", "score", "--cost-model", path, seeds["image"]], capsys)
    assert "threshold" in line and "inf.safetensors" in line


@pytest.mark.parametrize("kind", ["toy_base", "toy_encoder"])
def test_nan_and_inf_weights_are_refused_by_the_toy_loaders(seeds, tmp_path, kind):
    """Item 5: NaN/Inf weights were accepted by the toy base and toy encoder loaders."""
    from safetensors.torch import save_file

    from scdpo.cost.toy_encoder import load_toy_encoder
    from scdpo.fileio import load_safetensors
    from scdpo.toy.model import ToyTextToImage

    tensors, meta = load_safetensors(seeds[kind])
    key = next(k for k, v in tensors.items() if v.ndim == 2 and v.is_floating_point())
    for bad in (float("nan"), float("inf")):
        path = tmp_path / f"{kind}.safetensors"
        save_file({**tensors, key: torch.full_like(tensors[key], bad)}, str(path), metadata=meta)
        with pytest.raises(WeightsFormatError, match="NaN/inf"):
            (ToyTextToImage.load if kind == "toy_base" else load_toy_encoder)(path)


# --- writes: killed, full disk --------------------------------------------------------------------


def _python(code: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.environ.get("SCDPO_FUZZ_TRAINER") or str(REPO / "trainer"),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=120, **kw)


def test_a_write_killed_mid_way_leaves_nothing_after_the_next_run(tmp_path):
    """Item 6: the temp file of a write killed by kill -9 stayed, so parts/ was never removed."""
    parts = tmp_path / "parts"
    killed = _python(f"""
        import os, signal
        from scdpo.fileio import atomic_path
        with atomic_path({str(parts / 'part-000000.parquet')!r}) as tmp:
            tmp.write_bytes(b"half a part")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert killed.returncode == -signal.SIGKILL
    assert [p.name for p in parts.iterdir()][0].startswith(".part-000000.parquet.")  # what the kill left
    rerun = _python(f"""
        from scdpo.fileio import write_text_atomic
        write_text_atomic({str(parts / 'part-000000.parquet')!r}, "a whole part")
    """)
    assert rerun.returncode == 0, rerun.stderr
    assert [p.name for p in parts.iterdir()] == ["part-000000.parquet"]
    (parts / "part-000000.parquet").unlink()
    parts.rmdir()  # what the dataset builder does once the parts are merged


def test_a_live_writers_temp_file_is_left_alone(tmp_path):
    from scdpo.fileio import atomic_path, remove_stale_temp_files

    with atomic_path(tmp_path / "a.json") as tmp:
        tmp.write_text("{}")
        assert remove_stale_temp_files(tmp_path) == [] and tmp.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_full_disk_is_one_line_and_the_partial_output_is_removed(seeds, tmp_path):
    """Item 2: a full disk gave exit 1 with a SafetensorError traceback."""
    out = tmp_path / "out"
    out.mkdir()
    limit = 64 * 1024  # the output is ~400 KB: the write runs out of room half-way
    result = _python(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit, write() fails as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        from scdpo.cli import main
        sys.exit(main(["lora", "convert", {str(seeds["lora_kohya"])!r}, {str(out / "converted.safetensors")!r},
                       "--to", "diffusers"]))
    """)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "cannot write" in lines[0] and "converted.safetensors" in lines[0] and "free disk space" in lines[0]
    assert list(out.iterdir()) == []
