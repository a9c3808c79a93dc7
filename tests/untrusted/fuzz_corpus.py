"""A seeded corpus of hostile files for every loader: valid seed files of each kind, then mutations.

:func:`build_corpus` writes the files under a folder and returns the :class:`Case` list
(``loader``: which loader reads it, see ``fuzz_worker.LOADERS``; ``slow``: left to the slow part).
Mutation kinds: byte-level (truncation, bit flips, header length and JSON edits, foreign files such
as pickles and zips), metadata edits (every architecture number, threshold and pattern made hostile:
huge, zero, negative, strings, nulls, lists, NaN/Infinity, deep JSON, regexes), tensor edits
(NaN/inf, 0-dim, rank 0, wrong dtype), side files (adapter_config.json, model_index.json) and
bombs (huge-image PNGs, a zstd parquet bomb, EPS). Everything is a pure function of the seed.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import random
import struct
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
DEEP = "[" * 5000 + "]" * 5000  # past Python's recursion limit
REDOS = "(a+)+c"


@dataclass
class Case:
    id: str
    loader: str
    path: str
    slow: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


# --- safetensors byte helpers ----------------------------------------------------------------------


def split_safetensors(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def join_safetensors(header, body: bytes = b"") -> bytes:
    raw = (header if isinstance(header, str) else json.dumps(header)).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def with_metadata(data: bytes, changes: dict) -> bytes:
    """The same file with ``__metadata__`` keys replaced (value None: removed); values are raw strings."""
    header, body = split_safetensors(data)
    meta = dict(header.get("__metadata__", {}))
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    header["__metadata__"] = meta
    return join_safetensors(header, body)


def foreign_files() -> list[tuple[str, bytes]]:
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)  # writing a pickle is harmless; reading one is the failure
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"a": 1}))
    return [("torch_pickle", buf.getvalue()), ("raw_pickle", pickle.dumps({"a": 1}, protocol=4)),
            ("zip_pickle", zbuf.getvalue()), ("empty", b""), ("seven_bytes", b"1234567"),
            ("png", png(np.zeros((4, 4, 3), np.uint8))), ("text", b"not weights\n" * 20),
            ("gzip", gzip.compress(b"x" * 100)), ("zeros", b"\x00" * 64), ("ff", b"\xff" * 64),
            ("json_only", b'{"__metadata__": {}}'), ("deep_header", join_safetensors(DEEP))]


def header_variants(valid: bytes) -> list[tuple[str, bytes]]:
    header, body = split_safetensors(valid)
    (n,) = struct.unpack("<Q", valid[:8])
    first = next(k for k in header if k != "__metadata__")
    t = header[first]
    out = [(f"len_{name}", struct.pack("<Q", length) + valid[8:]) for name, length in
           (("huge", 2**62), ("zero", 0), ("plus1", n + 1), ("minus1", n - 1), ("past_end", len(valid)),
            ("17MiB", 17 * 2**20))]
    variants = {
        "header_list": [1, 2, 3], "header_string": "abc", "header_null": None,
        "meta_not_strings": {**header, "__metadata__": {"a": 1}},
        "meta_list": {**header, "__metadata__": ["a"]},
        "offsets_negative": {**header, first: {**t, "data_offsets": [-4, 4]}},
        "offsets_reversed": {**header, first: {**t, "data_offsets": [8, 0]}},
        "offsets_past_end": {**header, first: {**t, "data_offsets": [0, len(body) + 100]}},
        "offsets_strings": {**header, first: {**t, "data_offsets": ["0", "4"]}},
        "offsets_bools": {**header, first: {**t, "data_offsets": [False, True]}},
        "offsets_floats": {**header, first: {**t, "data_offsets": [0.0, 4.5]}},
        "dtype_unknown": {**header, first: {**t, "dtype": "Q7"}},
        "dtype_int": {**header, first: {**t, "dtype": 5}},
        "shape_huge": {**header, first: {**t, "shape": [2**31, 2**31]}},
        "shape_negative": {**header, first: {**t, "shape": [-1]}},
        "shape_deep": {**header, first: {**t, "shape": [1] * 40}},
        "shape_string": {**header, first: {**t, "shape": "12"}},
        "tensor_not_dict": {**header, first: 5},
        "no_tensors": {"__metadata__": header.get("__metadata__", {})},
        "dup_body_offsets": {k: ({**v, "data_offsets": [0, v["data_offsets"][1] - v["data_offsets"][0]]}
                                 if k != "__metadata__" else v) for k, v in header.items()},
    }
    out += [(name, join_safetensors(h, body)) for name, h in variants.items()]
    return out


def corruptions(valid: bytes, rng: random.Random, n_trunc: int, n_flip: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n_trunc):
        cut = int(len(valid) * (i + 0.5) / n_trunc)
        out.append((f"truncated_{cut}", valid[:cut]))
    (n,) = struct.unpack("<Q", valid[:8]) if len(valid) >= 8 else (0,)
    for i in range(n_flip):
        data = bytearray(valid)
        # most flips hit the header, where they break structure rather than values
        pos = rng.randrange(8, min(len(data), 8 + n)) if i % 3 != 2 and n else rng.randrange(len(data))
        data[pos] ^= 1 << rng.randrange(8)
        out.append((f"bitflip_{pos}", bytes(data)))
    return out


def byte_level(valid: bytes, rng: random.Random, n_trunc: int = 20, n_flip: int = 90) -> list[tuple[str, bytes]]:
    return corruptions(valid, rng, n_trunc, n_flip) + header_variants(valid) + foreign_files()


# --- images --------------------------------------------------------------------------------------


def png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def image_bytes(kind: str, size=(16, 16)) -> bytes:
    """An image of a hostile kind (declared size and format are what matter)."""
    from PIL import Image

    buf = io.BytesIO()
    if kind == "png":
        return png(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if kind == "bomb_png":  # ~140 KB that declares size[0] x size[1] pixels
        Image.new("L", size).save(buf, "PNG", optimize=True)
    elif kind in ("eps", "gif", "bmp", "tiff", "ico", "pcx", "tga", "ppm"):
        fmt = {"eps": "EPS", "gif": "GIF", "bmp": "BMP", "tiff": "TIFF", "ico": "ICO", "pcx": "PCX", "tga": "TGA",
               "ppm": "PPM"}[kind]
        Image.new("RGB", size, "red").save(buf, fmt)
    elif kind == "jpeg":
        Image.new("RGB", size, "red").save(buf, "JPEG")
    elif kind == "webp":
        Image.new("RGB", size, "red").save(buf, "WEBP")
    elif kind == "truncated_png":
        return image_bytes("png", size)[:40]
    elif kind == "png_wrong_crc":
        data = bytearray(image_bytes("png", size))
        data[-5] ^= 0xFF
        return bytes(data)
    elif kind == "png_header_lies":  # IHDR says 8000x8000, the data is 16x16
        data = bytearray(image_bytes("png", size))
        data[16:24] = struct.pack(">II", 8000, 8000)
        return bytes(data)
    elif kind == "ps_in_png_name":
        return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nshowpage\n"
    else:
        raise ValueError(kind)
    return buf.getvalue()


IMAGE_KINDS = [("eps", (16, 16)), ("ps_in_png_name", (16, 16)), ("gif", (16, 16)), ("bmp", (16, 16)),
               ("tiff", (16, 16)), ("ico", (16, 16)), ("pcx", (16, 16)), ("tga", (16, 16)), ("ppm", (16, 16)),
               ("truncated_png", (16, 16)), ("png_wrong_crc", (16, 16)), ("png_header_lies", (16, 16)),
               ("bomb_png", (12000, 12000)), ("bomb_png", (9000, 9000)), ("bomb_png", (30000, 1)),
               ("bomb_png", (4097, 4096)), ("bomb_png", (2049, 2048)), ("jpeg", (16, 16)), ("webp", (16, 16))]


# --- seeds ---------------------------------------------------------------------------------------


def seed_files(folder: Path) -> dict[str, Path]:
    """Valid, small files of every kind (the mutations' starting points)."""
    from scdpo.cost import SafetyCostModel
    from scdpo.cost.toy_encoder import ToyImageEncoder, save_toy_encoder
    from scdpo.fileio import save_safetensors_atomic
    from scdpo.lora import load_lora
    from scdpo.lora.convert import kohya_to_diffusers_layout

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    out: dict[str, Path] = {}
    out["lora_kohya"] = folder / "lora_kohya.safetensors"
    out["lora_kohya"].write_bytes((REPO / "weights" / "toy_safety_lora.safetensors").read_bytes())
    lora = load_lora(out["lora_kohya"])
    tensors, meta = kohya_to_diffusers_layout(lora)
    out["lora_diffusers"] = folder / "lora_diffusers.safetensors"
    save_safetensors_atomic(tensors, out["lora_diffusers"], meta)
    peft = folder / "lora_peft"
    peft.mkdir(exist_ok=True)
    cfg = json.loads(meta["lora_adapter_metadata"])
    save_safetensors_atomic({"base_model.model." + k[len("unet."):]: v for k, v in tensors.items()},
                            peft / "adapter_model.safetensors", {"format": "pt", "ss_base_model_version": "toy_v1"})
    (peft / "adapter_config.json").write_text(json.dumps({k[len("unet."):]: v for k, v in cfg.items()}))
    out["lora_peft"] = peft / "adapter_model.safetensors"

    encoder = ToyImageEncoder(16, (8, 16))
    out["toy_encoder"] = folder / "toy_encoder.safetensors"
    save_toy_encoder(out["toy_encoder"], encoder)
    cost = SafetyCostModel(encoder, ["gore", "weapon"], feature_dim=8, threshold=0.25)
    out["cost_model"] = folder / "cost_model.safetensors"
    cost.save(out["cost_model"])
    out["toy_base"] = folder / "toy_base.safetensors"
    tiny_toy_base().save(out["toy_base"])
    out["sd_single"] = folder / "sd15.safetensors"
    save_safetensors_atomic(sd_like_tensors(), out["sd_single"], {"format": "pt"})
    out["sd_folder"] = sd_folder(folder / "sd_folder")
    out["dataset"] = dataset_folder(folder / "dataset")
    out["image"] = folder / "image.png"
    out["image"].write_bytes(image_bytes("png"))
    return out


def tiny_toy_base():
    """A toy base model of the real classes at a few hundred KB (the shipped one is 17 MB)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from scdpo.toy.model import UNET_CONFIG, ToyTextToImage, build_tokenizer, text_config

    torch.manual_seed(0)
    tok = build_tokenizer()
    te = {**text_config(tok), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
          "num_attention_heads": 2}
    unet = {**UNET_CONFIG, "block_out_channels": (8, 16), "cross_attention_dim": 16, "attention_head_dim": 4,
            "norm_num_groups": 8}
    return ToyTextToImage(UNet2DConditionModel(**unet), CLIPTextModel(CLIPTextConfig(**te)), tok)


def sd_like_tensors() -> dict[str, torch.Tensor]:
    """The keys and UNet input shape that make a file an SD1.x checkpoint to the detector (small)."""
    from scdpo.sd.detect import SD1_TEXT_KEY, UNET_IN_KEY

    return {UNET_IN_KEY: torch.zeros(320, 4, 3, 3, dtype=torch.float16),
            SD1_TEXT_KEY: torch.zeros(77, 8, dtype=torch.float16),
            "first_stage_model.encoder.conv_in.weight": torch.zeros(2, 3, 3, 3, dtype=torch.float16)}


def sd_folder(root: Path, index=None, unet_config=None, index_bytes=None) -> Path:
    from scdpo.fileio import save_safetensors_atomic

    (root / "unet").mkdir(parents=True, exist_ok=True)
    index = {"_class_name": "StableDiffusionPipeline", "text_encoder": ["transformers", "CLIPTextModel"],
             "unet": ["diffusers", "UNet2DConditionModel"]} if index is None else index
    (root / "model_index.json").write_bytes(index_bytes if index_bytes is not None else json.dumps(index).encode())
    cfg = {"cross_attention_dim": 768, "in_channels": 4} if unet_config is None else unet_config
    (root / "unet" / "config.json").write_bytes(cfg if isinstance(cfg, bytes) else json.dumps(cfg).encode())
    save_safetensors_atomic({"conv_in.weight": torch.zeros(320, 4, 3, 3, dtype=torch.float16)},
                            root / "unet" / "diffusion_pytorch_model.safetensors")
    return root


def dataset_rows(n: int = 6, winner: bytes | None = None, loser: bytes | None = None) -> list[dict]:
    img = lambda s: png(np.random.default_rng(s).integers(0, 256, (16, 16, 3), dtype=np.uint8))  # noqa: E731
    return [{"pair_id": f"p{i}", "prompt": "a red square", "is_harmful": False, "category": None, "kind": "clean",
             "winner_png": winner if winner is not None else img(i), "loser_png": loser if loser is not None else img(i + 50),
             "winner_cost": -1.0, "loser_cost": 1.0, "winner_reward": 1.0, "loser_reward": 0.0, "winner_seed": 1,
             "loser_seed": 2, "winner_source": "candidate", "source": "fuzz"} for i in range(n)]


def dataset_folder(root: Path, rows=None, table=None, summary: bytes | None = None,
                   compression: str = "zstd") -> Path:
    import pyarrow.parquet as pq

    from scdpo.scp.schema import rows_to_table

    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(table if table is not None else rows_to_table(rows if rows is not None else dataset_rows()),
                   root / "pairs.parquet", compression=compression)
    (root / "dataset.json").write_bytes(summary if summary is not None else b'{"n_pairs": 6}')
    return root


# --- mutations per loader ------------------------------------------------------------------------


HOSTILE_NUMBERS = [0, -1, 10**5, 60000, 2**31, 10**18, "64", None, [8], True, 1.5, "NaN", "Infinity"]
HOSTILE_JSON = ["NaN", "Infinity", "-Infinity", "1e999", '"x"', "null", "[]", "{}", "[1,2]", DEEP,
                '{"a": ' * 300 + "1" + "}" * 300, "\ud800", "{not json"]


def _json_value(v) -> str:
    """A metadata value as the raw string stored in the file (NaN/Infinity written as JSON literals)."""
    if isinstance(v, str) and v in ("NaN", "Infinity", "-Infinity"):
        return v
    return json.dumps(v)


def lora_cases(seeds: dict[str, Path], rng: random.Random) -> list[tuple[str, Callable[[Path], Path]]]:
    """(name, writer(folder) -> path) for LoRA files in kohya, diffusers and peft layouts."""
    out = []
    for layout in ("lora_kohya", "lora_diffusers"):
        valid = seeds[layout].read_bytes()
        for name, data in byte_level(valid, rng):
            out.append((f"{layout}:{name}", _bytes_writer(data)))
    diff = seeds["lora_diffusers"].read_bytes()
    header, _ = split_safetensors(diff)
    cfg = json.loads(header["__metadata__"]["lora_adapter_metadata"])
    cfg_variants = {
        "alpha_pattern_redos": {"unet.alpha_pattern": {REDOS: 1}},
        "alpha_pattern_redos_long": {"unet.alpha_pattern": {"(x+x+)+y": 2, "^(a|a)*$": 1}},
        "alpha_pattern_list": {"unet.alpha_pattern": [1, 2]},
        "alpha_pattern_string": {"unet.alpha_pattern": "down_blocks"},
        "alpha_pattern_value_string": {"unet.alpha_pattern": {"down_blocks.0": "big"}},
        "alpha_pattern_value_null": {"unet.alpha_pattern": {"down_blocks.0": None}},
        "alpha_pattern_value_list": {"unet.alpha_pattern": {"down_blocks.0": [1]}},
        "alpha_pattern_huge_key": {"unet.alpha_pattern": {"a" * 100000: 1}},
        "alpha_pattern_empty_key": {"unet.alpha_pattern": {"": 1}},
        "alpha_pattern_many": {"unet.alpha_pattern": {f"m{i}": i for i in range(20000)}},
        "alpha_pattern_escaped_ok": {"unet.alpha_pattern": {r"down_blocks\.0\.attentions\.0\.proj_in": 3}},
        "lora_alpha_string": {"unet.lora_alpha": "four"},
        "lora_alpha_null": {"unet.lora_alpha": None},
        "lora_alpha_list": {"unet.lora_alpha": [4]},
        "lora_alpha_bool": {"unet.lora_alpha": True},
        "lora_alpha_huge": {"unet.lora_alpha": 1e308},
        "use_rslora_string": {"unet.use_rslora": "yes"},
        "r_string": {"unet.r": "x"},
        "rank_pattern_redos": {"unet.rank_pattern": {REDOS: 2}},
    }
    for name, change in variants_of(cfg, cfg_variants).items():
        out.append((f"diffusers_cfg:{name}", _bytes_writer(with_metadata(diff, {"lora_adapter_metadata": change}))))
    for name, raw in [("meta_list", "[1, 2]"), ("meta_string", '"x"'), ("meta_null", "null"), ("meta_deep", DEEP),
                      ("meta_nan", "NaN"), ("meta_not_json", "{x"), ("meta_number", "5"),
                      ("meta_huge", json.dumps({"x": "a" * 17 * 2**20}))]:
        out.append((f"diffusers_meta:{name}", _bytes_writer(with_metadata(diff, {"lora_adapter_metadata": raw}))))
    for name, patterns in (("alpha_pattern_redos_on_aaaa_module", {REDOS: 1}),
                           ("alpha_pattern_nested_quantifier_on_aaaa_module", {"(a|aa)+$x": 1, "(a*)*b": 2})):
        out.append((f"diffusers_cfg:{name}", lambda target, p=patterns: redos_lora(
            seeds["lora_diffusers"], target.with_suffix(".safetensors"), p)))
    out += tensor_variants_lora(seeds)
    out += peft_folder_variants(seeds)
    return out


def redos_lora(path: Path, target: Path, patterns: dict | None = None) -> Path:
    """A copy of the diffusers-layout LoRA at ``path`` with a module named ``aaaa…a`` and an
    ``alpha_pattern`` that backtracks catastrophically on that name when run as a regex."""
    from safetensors.torch import save_file

    from scdpo.fileio import load_safetensors

    tensors, meta = load_safetensors(path)
    name = "unet." + "a" * 40
    tensors.update({f"{name}.lora_A.weight": torch.zeros(4, 8), f"{name}.lora_B.weight": torch.zeros(8, 4)})
    cfg = json.loads(meta["lora_adapter_metadata"])
    meta["lora_adapter_metadata"] = json.dumps({**cfg, "unet.alpha_pattern": patterns or {REDOS: 1}})
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target), metadata=meta)
    return target


def variants_of(base: dict, changes: dict) -> dict[str, str]:
    """``base`` JSON with each change applied (a value of None removes nothing: it sets null)."""
    return {name: json.dumps({**base, **change}) for name, change in changes.items()}


def tensor_variants_lora(seeds) -> list:
    from scdpo.fileio import load_safetensors, save_safetensors_atomic

    out = []
    for layout in ("lora_kohya", "lora_diffusers"):
        tensors, meta = load_safetensors(seeds[layout])
        down = next(k for k in tensors if k.endswith(("lora_down.weight", "lora_A.weight")))
        up = down.replace("lora_down", "lora_up").replace("lora_A", "lora_B")
        variants = {
            "down_0dim": {**tensors, down: torch.tensor(1.0)},
            "down_1d": {**tensors, down: torch.zeros(4)},
            "down_3d": {**tensors, down: torch.zeros(2, 3, 4)},
            "rank0": {**tensors, down: torch.zeros(0, tensors[down].shape[1]), up: torch.zeros(tensors[up].shape[0], 0)},
            "nan": {**tensors, down: torch.full_like(tensors[down], float("nan"))},
            "inf": {**tensors, up: torch.full_like(tensors[up], float("inf"))},
            "int_dtype": {**tensors, down: tensors[down].to(torch.int32)},
            "bool_dtype": {**tensors, down: tensors[down] > 0},
            "up_mismatch": {**tensors, up: torch.zeros(3, 7)},
            "only_down": {k: v for k, v in tensors.items() if "up" not in k and "lora_B" not in k},
            "alpha_vector": {**{k: v for k, v in tensors.items()},
                             **{k: torch.zeros(3) for k in tensors if k.endswith(".alpha")}},
            "alpha_nan": {**tensors, **{k: torch.tensor(float("nan")) for k in tensors if k.endswith(".alpha")}},
            "foreign_key": {**tensors, "model.diffusion_model.x": torch.zeros(1)},
            "dora": {**tensors, down.replace("lora_down.weight", "dora_scale"): torch.zeros(1)},
        }
        for name, t in variants.items():
            out.append((f"{layout}_tensors:{name}", _tensor_writer(t, meta)))
    return out


def peft_folder_variants(seeds) -> list:
    folder = seeds["lora_peft"].parent
    data = seeds["lora_peft"].read_bytes()
    cfg = json.loads((folder / "adapter_config.json").read_text())
    raw_variants = {
        "non_utf8": b"\xff\xfe{\x00", "list": b"[1, 2]", "string": b'"x"', "deep": DEEP.encode(),
        "nan_alpha": json.dumps({**cfg, "lora_alpha": 1}).replace("1", "NaN", 1).encode(),
        "redos": json.dumps({**cfg, "alpha_pattern": {REDOS: 1}}).encode(),
        "pattern_list": json.dumps({**cfg, "alpha_pattern": [1]}).encode(),
        "alpha_string": json.dumps({**cfg, "lora_alpha": "x"}).encode(),
        "huge": b'{"x": "' + b"a" * (17 * 2**20) + b'"}', "empty": b"", "not_json": b"{x",
    }
    out = []
    for name, raw in raw_variants.items():
        def write(target: Path, raw=raw) -> Path:
            target.mkdir(parents=True, exist_ok=True)
            (target / "adapter_config.json").write_bytes(raw)
            (target / "adapter_model.safetensors").write_bytes(data)
            return target / "adapter_model.safetensors"
        out.append((f"peft_config:{name}", write))
    return out


def cost_cases(seeds, rng) -> list:
    valid = seeds["cost_model"].read_bytes()
    out = [(f"cost:{n}", _bytes_writer(d)) for n, d in byte_level(valid, rng)]
    for key in ("embed_dim", "feature_dim", "format_version"):
        for v in HOSTILE_NUMBERS:
            out.append((f"cost_meta:{key}={v!r}"[:80], _bytes_writer(with_metadata(valid, {key: _json_value(v)}))))
    for v in ["Infinity", "-Infinity", "NaN", "1e999", "1e308", '"high"', "null", "[0.1]", "true", DEEP]:
        out.append((f"cost_meta:threshold={v[:12]}", _bytes_writer(with_metadata(valid, {"threshold": v}))))
    for name, key, v in [
            ("cats_empty", "categories", "[]"), ("cats_many", "categories", json.dumps([f"c{i}" for i in range(5000)])),
            ("cats_long", "categories", json.dumps(["x" * 100000])), ("cats_ints", "categories", "[1, 2]"),
            ("cats_deep", "categories", DEEP),
            ("enc_cfg_huge", "encoder_config", json.dumps({"embed_dim": 60000, "widths": [1024] * 5})),
            ("enc_cfg_zero", "encoder_config", json.dumps({"embed_dim": 16, "widths": [0, 16]})),
            ("enc_cfg_odd", "encoder_config", json.dumps({"embed_dim": 16, "widths": [7, 13]})),
            ("enc_cfg_many", "encoder_config", json.dumps({"embed_dim": 16, "widths": [8] * 100000})),
            ("enc_cfg_list", "encoder_config", "[1]"), ("enc_cfg_deep", "encoder_config", DEEP),
            ("training_deep", "training", DEEP), ("kind_deep", "scdpo_kind", DEEP),
            ("backbone_id_list", "backbone_id", "[1]"), ("target_fpr_nan", "target_fpr", "NaN")]:
        out.append((f"cost_meta:{name}", _bytes_writer(with_metadata(valid, {key: v}))))
    out += _tensor_cases(seeds["cost_model"], "cost_tensors")
    return out


def toy_encoder_cases(seeds, rng) -> list:
    valid = seeds["toy_encoder"].read_bytes()
    out = [(f"toy_encoder:{n}", _bytes_writer(d)) for n, d in byte_level(valid, rng)]
    configs = {"embed_huge": {"embed_dim": 10**6, "widths": [8, 16]}, "embed_zero": {"embed_dim": 0, "widths": [8, 16]},
               "widths_zero": {"embed_dim": 16, "widths": [0, 16]}, "widths_odd": {"embed_dim": 16, "widths": [9, 17]},
               "widths_huge": {"embed_dim": 16, "widths": [60000, 60000]},
               "widths_many": {"embed_dim": 16, "widths": [8] * 200}, "widths_empty": {"embed_dim": 16, "widths": []},
               "widths_string": {"embed_dim": 16, "widths": "8,16"}, "embed_float": {"embed_dim": 16.5, "widths": [8, 16]},
               "embed_string": {"embed_dim": "16", "widths": [8, 16]}, "missing": {}}
    for name, cfg in configs.items():
        out.append((f"toy_encoder_cfg:{name}", _bytes_writer(with_metadata(valid, {"config": json.dumps(cfg)}))))
    for raw in ("[1]", DEEP, "NaN", "{x"):
        out.append((f"toy_encoder_cfg:raw_{raw[:6]}", _bytes_writer(with_metadata(valid, {"config": raw}))))
    out += _tensor_cases(seeds["toy_encoder"], "toy_encoder_tensors")
    return out


def _tensor_cases(path: Path, prefix: str) -> list:
    from scdpo.fileio import load_safetensors

    tensors, meta = load_safetensors(path)
    weights = [k for k, v in tensors.items() if v.ndim >= 1 and v.is_floating_point()]
    pick = weights[:: max(1, len(weights) // 4)][:4]
    out = []
    for k in pick:
        for name, value in (("nan", torch.full_like(tensors[k], float("nan"))),
                            ("inf", torch.full_like(tensors[k], float("inf"))),
                            ("0dim", torch.tensor(1.0)), ("int", tensors[k].to(torch.int64)),
                            ("bigger", torch.zeros(*(s + 1 for s in tensors[k].shape))),
                            ("missing", None)):
            t = dict(tensors)
            if value is None:
                t.pop(k)
            else:
                t[k] = value
            out.append((f"{prefix}:{k}:{name}"[:120], _tensor_writer(t, meta)))
    return out


def toy_base_cases(seeds, rng) -> list:
    valid = seeds["toy_base"].read_bytes()
    header, _ = split_safetensors(valid)
    meta = header["__metadata__"]
    unet, text = json.loads(meta["unet_config"]), json.loads(meta["text_config"])
    out = [(f"toy_base:{n}", _bytes_writer(d)) for n, d in byte_level(valid, rng, n_trunc=12, n_flip=40)]
    unet_changes = {"layers_per_block_1e5": {"layers_per_block": 100000}, "layers_per_block_0": {"layers_per_block": 0},
                    "zero_width_blocks": {"block_out_channels": [0, 16]},
                    "huge_blocks": {"block_out_channels": [60000, 60000]},
                    "many_blocks": {"block_out_channels": [8] * 50, "down_block_types": ["DownBlock2D"] * 50,
                                    "up_block_types": ["UpBlock2D"] * 50},
                    "mismatched_lists": {"block_out_channels": [8, 16, 32]},
                    "groups_not_dividing": {"norm_num_groups": 3}, "sample_size_huge": {"sample_size": 10**6},
                    "transformer_layers_huge": {"transformer_layers_per_block": 100000},
                    "num_class_embeds": {"num_class_embeds": 10**9}, "unknown_key": {"warp_drive": 1},
                    "head_dim_string": {"attention_head_dim": "8"}, "cross_dim_zero": {"cross_attention_dim": 0},
                    "block_type_unknown": {"down_block_types": ["EvilBlock", "EvilBlock"]}}
    for name, change in unet_changes.items():
        out.append((f"toy_base_unet:{name}", _bytes_writer(with_metadata(valid, {"unet_config": json.dumps({**unet, **change})}))))
    text_changes = {"odd_hidden": {"hidden_size": 15}, "hidden_huge": {"hidden_size": 10**6},
                    "layers_huge": {"num_hidden_layers": 10**5}, "heads_zero": {"num_attention_heads": 0},
                    "vocab_small": {"vocab_size": 10}, "vocab_huge": {"vocab_size": 10**9},
                    "positions_small": {"max_position_embeddings": 4}, "intermediate_huge": {"intermediate_size": 10**8},
                    "hidden_string": {"hidden_size": "16"}, "hidden_null": {"hidden_size": None}}
    for name, change in text_changes.items():
        out.append((f"toy_base_text:{name}", _bytes_writer(with_metadata(valid, {"text_config": json.dumps({**text, **change})}))))
    tok = json.loads(meta["tokenizer"])
    for name, raw in [("tokenizer_garbage", "garbage"), ("tokenizer_list", "[1]"), ("tokenizer_deep", DEEP),
                      ("tokenizer_no_model", json.dumps({**tok, "model": None})),
                      ("tokenizer_no_specials", json.dumps({**tok, "model": {**tok["model"], "vocab": {"a": 0}}})),
                      ("tokenizer_bad_type", json.dumps({**tok, "model": {**tok["model"], "type": "Evil"}})),
                      ("unet_config_deep", DEEP), ("unet_config_list", "[1]"), ("text_config_nan", "NaN")]:
        key = "tokenizer" if name.startswith("tokenizer") else name.rsplit("_", 1)[0]
        out.append((f"toy_base_meta:{name}", _bytes_writer(with_metadata(valid, {key: raw}))))
    out += _tensor_cases(seeds["toy_base"], "toy_base_tensors")
    return out


def sd_cases(seeds, rng) -> list:
    from scdpo.sd.detect import UNET_IN_KEY

    valid = seeds["sd_single"].read_bytes()
    out = [(f"sd_single:{n}", _bytes_writer(d)) for n, d in byte_level(valid, rng, n_trunc=10, n_flip=30)]
    header, body = split_safetensors(valid)
    t = header[UNET_IN_KEY]
    for name, shape in [("unet_in_1d", [11520]), ("unet_in_2d", [320, 36]), ("unet_in_9ch", [320, 9, 3, 1]),
                        ("unet_in_0d", [])]:
        n = int(np.prod(shape)) if shape else 1
        if n * 2 == t["data_offsets"][1] - t["data_offsets"][0]:
            out.append((f"sd_single_shape:{name}", _bytes_writer(join_safetensors({**header, UNET_IN_KEY: {**t, "shape": shape}}, body))))
    folder_variants = {
        "index_list": dict(index_bytes=b"[1, 2]"), "index_non_utf8": dict(index_bytes=b"\xff\xfe\x00{"),
        "index_class_int": dict(index={"_class_name": 5}), "index_class_list": dict(index={"_class_name": ["x"]}),
        "index_text_encoder_int": dict(index={"_class_name": "StableDiffusionXLPipeline", "text_encoder": 5}),
        "index_text_encoder_empty": dict(index={"_class_name": "StableDiffusionXLImg2ImgPipeline", "text_encoder": []}),
        "index_deep": dict(index_bytes=DEEP.encode()), "index_huge": dict(index_bytes=b" " * (17 * 2**20) + b"{}"),
        "index_nan": dict(index_bytes=b'{"_class_name": NaN}'),
        "unet_cfg_list": dict(unet_config=b"[1]"), "unet_cfg_non_utf8": dict(unet_config=b"\xff\xfe"),
        "unet_cfg_in_string": dict(unet_config={"in_channels": "4"}), "unet_cfg_deep": dict(unet_config=DEEP.encode()),
    }
    for name, kw in folder_variants.items():
        out.append((f"sd_folder:{name}", lambda target, kw=kw: sd_folder(target, **kw)))
    return out


def dataset_cases(seeds, rng) -> list:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from scdpo.scp.schema import rows_to_table

    valid = (seeds["dataset"] / "pairs.parquet").read_bytes()
    out = []
    for name, data in corruptions(valid, rng, 20, 80) + foreign_files():
        out.append((f"dataset:{name}", _folder_writer({"pairs.parquet": data, "dataset.json": b"{}"})))
    table = rows_to_table(dataset_rows())
    for col in table.column_names:
        out.append((f"dataset_drop:{col}", lambda target, col=col: dataset_folder(target, table=table.drop([col]))))
    retyped = {"winner_png_text": (5, "winner_png", pa.array(["x"] * 6)),
               "cost_text": (7, "winner_cost", pa.array(["1.0"] * 6)),
               "cost_nan": (7, "winner_cost", pa.array([float("nan")] * 6)),
               "cost_inf": (8, "loser_cost", pa.array([float("inf")] * 6)),
               "harmful_int": (2, "is_harmful", pa.array([1] * 6)),
               "seed_float": (11, "winner_seed", pa.array([0.5] * 6)),
               "prompt_null": (1, "prompt", pa.array([None] * 6, pa.string())),
               "kind_int": (4, "kind", pa.array([3] * 6))}
    for name, (i, col, arr) in retyped.items():
        out.append((f"dataset_type:{name}", lambda target, i=i, col=col, arr=arr: dataset_folder(
            target, table=table.set_column(i, col, arr))))
    for kind, size in IMAGE_KINDS:
        data = image_bytes(kind, size)
        out.append((f"dataset_image:{kind}_{size[0]}x{size[1]}",
                    lambda target, data=data: dataset_folder(target, rows=dataset_rows(2, winner=data))))
    bomb = image_bytes("bomb_png", (12000, 12000))
    out.append(("dataset_bomb:row_of_two_12000px", lambda target: dataset_folder(target, rows=dataset_rows(1, bomb, bomb))))
    big = image_bytes("bomb_png", (2048, 2048))
    out.append(("dataset_bomb:32_rows_of_2048px", lambda target: dataset_folder(target, rows=dataset_rows(32, big, big))))
    out.append(("dataset_bomb:zstd_parquet", _zstd_bomb))
    for name, summary in [("summary_deep", DEEP.encode()), ("summary_list", b"[1]"), ("summary_non_utf8", b"\xff"),
                          ("summary_nan", b'{"n": NaN}')]:
        out.append((f"dataset_summary:{name}", lambda target, s=summary: dataset_folder(target, summary=s)))
    return out


def _zstd_bomb(target: Path) -> Path:
    """A parquet file of ~100 KB whose image column decompresses to 400 MiB (400 rows of 1 MiB zeros)."""
    from scdpo.scp.schema import rows_to_table

    blob = b"\x00" * 2**20
    return dataset_folder(target, rows=dataset_rows(400, winner=blob, loser=b"x"), compression="zstd")


# --- writers -------------------------------------------------------------------------------------


def _bytes_writer(data: bytes) -> Callable[[Path], Path]:
    def write(target: Path) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        path = target.with_suffix(".safetensors")
        path.write_bytes(data)
        return path
    return write


def _tensor_writer(tensors: dict, meta: dict) -> Callable[[Path], Path]:
    def write(target: Path) -> Path:
        from safetensors.torch import save_file

        target.parent.mkdir(parents=True, exist_ok=True)
        path = target.with_suffix(".safetensors")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
        return path
    return write


def _folder_writer(files: dict[str, bytes]) -> Callable[[Path], Path]:
    def write(target: Path) -> Path:
        target.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (target / name).write_bytes(data)
        return target
    return write


# --- the corpus ----------------------------------------------------------------------------------

# loader -> (mutation builder, seed key); "slow": cases whose loader builds a model per case
GROUPS = {
    "lora": (lora_cases, False),
    "cost_model": (cost_cases, False),
    "toy_encoder": (toy_encoder_cases, False),
    "base_model": (toy_base_cases, True),
    "sd_detect": (sd_cases, False),
    "dataset": (dataset_cases, False),
}
SLOW_PREFIXES = ("dataset_bomb:", "dataset_image:bomb_png", "peft_config:huge", "diffusers_meta:meta_huge",
                 "sd_folder:index_huge")


def build_corpus(folder: Path, seed: int = 1234, slow: bool = True, fast: bool = True) -> list[Case]:
    """Seed files and every mutation of them under ``folder``; the cases, in a fixed order. ``slow`` /
    ``fast``: write (and return) the slow-part / default-part cases."""
    seeds = seed_files(folder / "seeds")
    cases: list[Case] = []
    for loader, (builder, slow_group) in GROUPS.items():
        rng = random.Random(f"{seed}-{loader}")
        for i, (name, write) in enumerate(builder(seeds, rng)):
            is_slow = slow_group or name.startswith(SLOW_PREFIXES)
            if (slow if is_slow else fast):
                path = write(folder / loader / f"{i:04d}")
                cases.append(Case(f"{loader}/{i:04d} {name}", loader, str(path), is_slow))
    return cases
