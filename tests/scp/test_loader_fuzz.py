"""Fuzz: 200+ corrupted, truncated and foreign files fed to the cost-model checkpoint loader, the
encoder loaders, the SCP dataset reader and the cost-data manifest reader. Each must load or raise
a typed :class:`~scdpo.errors.ScdpoError` — never crash, never unpickle anything."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import random
import struct

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from scdpo.cost import SafetyCostModel, load_backbone, load_cost_model
from scdpo.cost.data import load_images, manifest_examples
from scdpo.cost.toy_encoder import ToyImageEncoder, load_toy_encoder
from scdpo.errors import ScdpoError
from scdpo.scp import load_scp_dataset
from scdpo.scp.schema import png_bytes, rows_to_table, write_table


class Unpickled(AssertionError):
    pass


@pytest.fixture(autouse=True)
def _forbid_unpickling(monkeypatch):
    def refuse(*_a, **_k):
        raise Unpickled("something tried to unpickle a file")

    class RefusingUnpickler(pickle.Unpickler):  # a class, so modules that subclass it still import
        def load(self):
            refuse()

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", RefusingUnpickler)
    monkeypatch.setattr(torch, "load", refuse)


def _safetensors_bytes(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _foreign_files() -> list[tuple[str, bytes]]:
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)  # a zip-pickled PyTorch checkpoint (writing it is harmless)
    out = [("torch_pickle", buf.getvalue()), ("raw_pickle", pickle.dumps({"a": 1}, protocol=4)),
           ("empty", b""), ("seven_bytes", b"1234567"), ("png", png_bytes(np.zeros((4, 4, 3), np.uint8))),
           ("text", b"hello world, not weights\n" * 10), ("json", b'{"scdpo_kind": "safety_cost_model"}'),
           ("gzip", gzip.compress(b"x" * 100)), ("zeros", b"\x00" * 64), ("ff", b"\xff" * 64)]
    return out


def _header_variants(valid: bytes) -> list[tuple[str, bytes]]:
    (n,) = struct.unpack("<Q", valid[:8])
    header = json.loads(valid[8:8 + n])
    data = valid[8 + n:]
    first = next(k for k in header if k != "__metadata__")
    out = []
    for name, length in (("len_huge", 2**62), ("len_zero", 0), ("len_plus1", n + 1), ("len_minus1", n - 1),
                         ("len_past_end", len(valid))):
        out.append((name, struct.pack("<Q", length) + valid[8:]))
    variants = {
        "header_list": [1, 2, 3],
        "header_string": "abc",
        "meta_not_strings": {**header, "__metadata__": {"a": 1}},
        "offsets_negative": {**header, first: {**header[first], "data_offsets": [-4, 4]}},
        "offsets_reversed": {**header, first: {**header[first], "data_offsets": [8, 0]}},
        "offsets_past_end": {**header, first: {**header[first], "data_offsets": [0, len(data) + 100]}},
        "offsets_strings": {**header, first: {**header[first], "data_offsets": ["0", "4"]}},
        "dtype_unknown": {**header, first: {**header[first], "dtype": "Q7"}},
        "shape_mismatch": {**header, first: {**header[first], "shape": [999, 999]}},
        "shape_negative": {**header, first: {**header[first], "shape": [-1]}},
        "tensor_not_dict": {**header, first: 5},
        "no_tensors": {"__metadata__": header.get("__metadata__", {})},
    }
    for name, h in variants.items():
        out.append((name, _safetensors_bytes(h, data)))
    return out


def _metadata_variants(tensors: dict, meta: dict) -> list[tuple[str, dict, dict]]:
    t = dict(tensors)
    out = []
    bad_meta = {
        "kind_other": {"scdpo_kind": "toy_base"}, "kind_missing": {"scdpo_kind": None},
        "version_future": {"format_version": 99}, "version_string": {"format_version": "one"},
        "categories_empty": {"categories": []}, "categories_ints": {"categories": [1, 2]},
        "categories_string": {"categories": "gore"}, "threshold_nan": {"threshold": "NaN"},
        "threshold_text": {"threshold": "high"}, "embed_dim_wrong": {"embed_dim": 64},
        "embed_dim_zero": {"embed_dim": 0}, "feature_dim_wrong": {"feature_dim": 7},
        "backbone_other": {"backbone_id": "clip-vision:h1024"}, "encoder_config_garbage": {"encoder_config": [1]},
        "encoder_config_widths": {"encoder_config": {"embed_dim": 128, "widths": [3, 3]}},
        "three_categories_for_one_head": {"categories": ["a", "b", "c", "d"]},
    }
    for name, change in bad_meta.items():
        m = {**meta, **change}
        out.append((name, t, {k: v for k, v in m.items() if v is not None}))
    head_w = next(k for k in t if k.startswith("head.") and k.endswith("weight"))
    out.append(("head_wrong_shape", {**t, head_w: torch.zeros(2, 3)}, meta))
    out.append(("head_nan", {**t, head_w: torch.full_like(t[head_w], float("nan"))}, meta))
    out.append(("probe_missing", {k: v for k, v in t.items() if k != "backbone.probe"}, meta))
    out.append(("probe_wrong_shape", {**t, "backbone.probe": torch.zeros(3, 5)}, meta))
    out.append(("probe_other_values", {**t, "backbone.probe": torch.randn(4, 128)}, meta))
    out.append(("encoder_tensor_missing", {k: v for k, v in t.items() if not k.startswith("encoder.features.0")}, meta))
    out.append(("adapter_missing", {k: v for k, v in t.items() if not k.startswith("adapter.")}, meta))
    out.append(("int_tensors", {k: v.to(torch.int32) if k.startswith("adapter.") else v for k, v in t.items()}, meta))
    return out


def _corruptions(valid: bytes, rng: random.Random, n_trunc: int, n_flip: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n_trunc):
        cut = int(len(valid) * (i + 0.5) / n_trunc)
        out.append((f"truncated_{cut}", valid[:cut]))
    for i in range(n_flip):
        data = bytearray(valid)
        # half the flips hit the header region, where they break structure rather than values
        pos = rng.randrange(0, min(len(data), 2000)) if i % 2 == 0 else rng.randrange(len(data))
        data[pos] ^= 1 << rng.randrange(8)
        out.append((f"bitflip_{pos}", bytes(data)))
    return out


def _attempt(results: list, name: str, fn) -> None:
    try:
        fn()
        results.append((name, "ok"))
    except ScdpoError as exc:
        assert str(exc).strip(), f"{name}: empty error message"
        results.append((name, type(exc).__name__))


def test_fuzz_checkpoint_encoder_dataset_and_manifest_loaders(tmp_path):
    from scdpo.fileio import decode_metadata, load_safetensors, save_safetensors_atomic

    rng = random.Random(1234)
    torch.manual_seed(0)
    results: list = []

    # --- cost-model checkpoints and encoder files
    model = SafetyCostModel(ToyImageEncoder(), ["gore", "nudity", "weapon"], feature_dim=16, threshold=0.1)
    good = tmp_path / "good_cost.safetensors"
    model.save(good)
    valid = good.read_bytes()
    tensors, raw_meta = load_safetensors(good)
    meta = decode_metadata(raw_meta)
    cases = _corruptions(valid, rng, 30, 40) + _header_variants(valid) + _foreign_files()
    for i, (name, data) in enumerate(cases):
        f = tmp_path / f"ckpt_{i}.safetensors"
        f.write_bytes(data)
        _attempt(results, f"cost:{name}", lambda f=f: load_cost_model(f))
        if i % 3 == 0:  # the same bytes as a backbone / toy encoder file
            _attempt(results, f"backbone:{name}", lambda f=f: load_backbone(f))
            _attempt(results, f"toy_encoder:{name}", lambda f=f: load_toy_encoder(f))
    for i, (name, t, m) in enumerate(_metadata_variants(tensors, meta)):
        f = tmp_path / f"meta_{i}.safetensors"
        save_safetensors_atomic(t, f, m)
        _attempt(results, f"cost_meta:{name}", lambda f=f: load_cost_model(f))
    folder_case = tmp_path / "a_folder.safetensors"
    folder_case.mkdir()
    _attempt(results, "cost:folder", lambda: load_cost_model(folder_case))
    _attempt(results, "backbone:folder_without_weights", lambda: load_backbone(folder_case))

    # --- SCP dataset files
    img = lambda s: png_bytes(np.random.default_rng(s).integers(0, 256, (32, 32, 3), dtype=np.uint8))  # noqa: E731
    rows = [{"pair_id": f"p{i}", "prompt": "a red square", "is_harmful": False, "category": None, "kind": "clean",
             "winner_png": img(i), "loser_png": img(i + 50), "winner_cost": -1.0, "loser_cost": 1.0,
             "winner_reward": 1.0, "loser_reward": 0.0, "winner_seed": 1, "loser_seed": 2,
             "winner_source": "candidate", "source": "fuzz"} for i in range(6)]
    good_ds = tmp_path / "good_ds"
    good_ds.mkdir()
    write_table(good_ds / "pairs.parquet", rows_to_table(rows))
    valid_pq = (good_ds / "pairs.parquet").read_bytes()
    ds_cases = _corruptions(valid_pq, rng, 20, 20) + _foreign_files()
    table = rows_to_table(rows)
    for col in table.column_names:
        buf = io.BytesIO()
        pq.write_table(table.drop([col]), buf)
        ds_cases.append((f"drop_{col}", buf.getvalue()))
    retyped = {
        "winner_png_as_text": table.set_column(5, "winner_png", pa.array(["x"] * 6)),
        "cost_as_text": table.set_column(7, "winner_cost", pa.array(["1.0"] * 6)),
        "is_harmful_as_int": table.set_column(2, "is_harmful", pa.array([1] * 6)),
        "seed_as_float": table.set_column(11, "winner_seed", pa.array([0.5] * 6)),
        "prompt_null": table.set_column(1, "prompt", pa.array([None] * 6, pa.string())),
        "cost_null": table.set_column(7, "winner_cost", pa.array([None] * 6, pa.float64())),
        "kind_int": table.set_column(4, "kind", pa.array([3] * 6)),
        "empty_table": table.slice(0, 0),
    }
    for name, t in retyped.items():
        buf = io.BytesIO()
        pq.write_table(t, buf)
        ds_cases.append((name, buf.getvalue()))
    for i, (name, data) in enumerate(ds_cases):
        d = tmp_path / f"ds_{i}"
        d.mkdir()
        (d / "pairs.parquet").write_bytes(data)
        _attempt(results, f"dataset:{name}", lambda d=d: load_scp_dataset(d))
        _attempt(results, f"dataset_skip:{name}", lambda d=d: load_scp_dataset(d, skip_bad=True))

    # --- cost-data manifests (CSV and parquet) and the images they point to
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "ok.png").write_bytes(img(1))
    (tmp_path / "m" / "bad.png").write_bytes(b"\x89PNG garbage")
    lines = ["path,label"] + [f"ok.png,{'gore' if i % 2 else 'safe'}" for i in range(8)]
    manifest_cases = {
        "good": "\n".join(lines), "missing_file": "\n".join(lines + ["nope.png,gore"]),
        "bad_image": "\n".join(lines + ["bad.png,safe"]), "no_header": "ok.png,gore\nok.png,safe\n",
        "wrong_header": "file,class\nok.png,gore\n", "empty": "", "binary": "\x00\x01\x02",
        "quotes": '"path,label\n"unterminated', "only_safe": "path,label\n" + "ok.png,safe\n" * 8,
        "absolute_missing": "path,label\n/does/not/exist.png,gore\n" * 3,
        "no_path_values": "path,label\n,gore\n,safe\n,gore\n",
    }
    for name, text in manifest_cases.items():
        f = tmp_path / "m" / f"{name}.csv"
        f.write_text(text, encoding="utf-8")

        def run(f=f):
            ex = manifest_examples(f)
            load_images(ex.images, ex.names)

        _attempt(results, f"manifest:{name}", run)
    (tmp_path / "m" / "latin1.csv").write_bytes("path,label\nok.png,gör\n".encode("latin-1"))
    _attempt(results, "manifest:latin1", lambda: manifest_examples(tmp_path / "m" / "latin1.csv"))
    for i, (name, data) in enumerate(_corruptions(valid_pq, rng, 5, 5) + _foreign_files()[:5]):
        f = tmp_path / "m" / f"pq_{i}.parquet"
        f.write_bytes(data)
        _attempt(results, f"manifest_parquet:{name}", lambda f=f: manifest_examples(f))

    assert len(results) >= 200, len(results)
    outcomes = [r for _, r in results]
    assert outcomes.count("ok") < len(results) // 3  # the corruptions really are corrupt
    assert ("cost:torch_pickle", "WeightsFormatError") in results
    assert ("cost_meta:backbone_other", "IncompatibleModelError") in results
    assert ("dataset:drop_winner_cost", "DatasetError") in results
    assert ("manifest:missing_file", "DatasetError") in results
    assert ("manifest:good", "ok") in results
