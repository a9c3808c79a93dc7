"""SCP dataset reader validation and the Pick-a-Pic / CoProV2 importers."""

from __future__ import annotations

import io
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from scdpo.cli import main
from scdpo.errors import DatasetError, InputFileError
from scdpo.scp import import_coprov2, import_pickapic, load_scp_dataset
from scdpo.scp.schema import png_bytes, rows_to_table, write_table


def _img(seed: int, size=(32, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def good_row(i: int, **kw) -> dict:
    row = {"pair_id": f"t-{i}", "prompt": f"prompt {i}", "is_harmful": i % 2 == 0,
           "category": "gore" if i % 2 == 0 else None, "kind": "harmful" if i % 2 == 0 else "clean",
           "winner_png": png_bytes(_img(2 * i)), "loser_png": png_bytes(_img(2 * i + 1)), "winner_cost": -1.5,
           "loser_cost": 2.0, "winner_reward": 1.0, "loser_reward": 0.5, "winner_seed": i, "loser_seed": i + 1,
           "winner_source": "candidate", "source": "test"}
    row.update(kw)
    return row


def write_rows(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    write_table(folder / "pairs.parquet", rows_to_table(rows))
    return folder


def test_valid_dataset_items_have_the_contract_fields(tmp_path):
    ds = load_scp_dataset(write_rows(tmp_path / "d", [good_row(i) for i in range(4)]), expected_size=32)
    assert len(ds) == 4 and ds.skipped == 0 and ds.counts() == {"harmful": 2, "clean": 2}
    item = ds[0]
    assert set(item) >= {"prompt", "winner", "loser", "winner_cost", "loser_cost", "is_harmful", "category"}
    assert item["winner"].shape == (32, 32, 3) and item["winner"].dtype == torch.float32
    np.testing.assert_allclose(item["winner"].numpy(), _img(0) / 255.0, atol=1e-6)
    assert item["category"] == "gore" and item["is_harmful"] is True and item["winner_cost"] == -1.5
    assert ds.pair_info(0) == (True, "gore") and ds.pair_info(1) == (False, None)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=lambda b: b)))
    assert len(batch) == 2


@pytest.mark.parametrize("broken, reason", [
    (dict(winner_png=None), "winner image is missing"),
    (dict(loser_png=b""), "loser image is missing"),
    (dict(winner_png=b"\x89PNG\r\n\x1a\nnot really"), "winner image cannot be decoded"),
    (dict(loser_png=png_bytes(_img(9, (16, 16)))), "winner is 32x32 but loser is 16x16"),
    (dict(winner_cost=math.nan), "winner_cost is nan"),
    (dict(loser_reward=math.inf), "loser_reward is inf"),
    (dict(kind="weird"), "kind 'weird'"),
    (dict(is_harmful=True, category=None), "needs a category"),
    (dict(prompt=""), "prompt is missing"),
    (dict(safe_prompt=" "), "safe_prompt ' ' is not a non-empty string"),
    (dict(is_harmful=False, category=None, kind="clean", safe_prompt="a cup"), "safe_prompt is set on a harmless pair"),
])
def test_bad_rows_raise_naming_the_row_or_are_skipped_and_counted(tmp_path, broken, reason):
    rows = [good_row(0), good_row(1), good_row(2, **broken), good_row(3)]
    folder = write_rows(tmp_path / "d", rows)
    with pytest.raises(DatasetError) as err:
        load_scp_dataset(folder)
    assert "row 2" in str(err.value) and "t-2" in str(err.value) and reason in str(err.value)
    ds = load_scp_dataset(folder, skip_bad=True)
    assert len(ds) == 3 and ds.skipped == 1 and [r["pair_id"] for r in ds.rows] == ["t-0", "t-1", "t-3"]


def test_safe_prompt_column_is_read_and_optional(tmp_path):
    ds = load_scp_dataset(write_rows(tmp_path / "new", [good_row(0, safe_prompt="a red cup"), good_row(1)]))
    assert ds[0]["safe_prompt"] == "a red cup" and ds[1]["safe_prompt"] is None
    old = rows_to_table([good_row(0), good_row(1)]).drop(["safe_prompt"])  # written before the column existed
    (tmp_path / "old").mkdir()
    pq.write_table(old, tmp_path / "old" / "pairs.parquet")
    ds = load_scp_dataset(tmp_path / "old")
    assert len(ds) == 2 and ds[0]["safe_prompt"] is None and ds.rows[0]["safe_prompt"] is None


def test_wrong_expected_size_is_reported(tmp_path):
    folder = write_rows(tmp_path / "d", [good_row(0)])
    with pytest.raises(DatasetError, match="expected 64x64"):
        load_scp_dataset(folder, expected_size=64)


def test_missing_columns_and_missing_folder_are_clear(tmp_path):
    table = rows_to_table([good_row(0)]).drop(["winner_cost"])
    (tmp_path / "d").mkdir()
    pq.write_table(table, tmp_path / "d" / "pairs.parquet")
    with pytest.raises(DatasetError, match="lacks column.*winner_cost"):
        load_scp_dataset(tmp_path / "d")
    with pytest.raises(InputFileError, match="not found"):
        load_scp_dataset(tmp_path / "nothing")


def test_validate_dataset_command_counts_bad_rows(tmp_path, capsys):
    folder = write_rows(tmp_path / "d", [good_row(0), good_row(1, winner_cost=math.nan)])
    assert main(["data", "validate", str(folder)]) == 2
    assert main(["data", "validate", str(folder), "--skip-bad"]) == 0
    assert "1 valid pairs" in capsys.readouterr().out


# --- importers -------------------------------------------------------------------------------------

def _jpeg(seed: int, size=(40, 48)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_img(seed, size)).save(buf, format="JPEG")
    return buf.getvalue()


def test_pickapic_import_drops_ties_and_orders_winner_by_label(tmp_path):
    shard = tmp_path / "train-0001.parquet"
    pq.write_table(pa.table({
        "caption": ["a cat", "a dog", "tie", "broken", "a bird"],
        "jpg_0": [_jpeg(0), _jpeg(1), _jpeg(2), b"not an image", _jpeg(4)],
        "jpg_1": [_jpeg(10), _jpeg(11), _jpeg(12), _jpeg(13), _jpeg(14)],
        "label_0": [1.0, 0.0, 0.5, 1.0, 1.0],
    }), shard)
    summary = import_pickapic(shard, tmp_path / "out", resize=32, progress=False)
    assert summary["n_pairs"] == 3 and summary["ties_dropped"] == 1 and summary["bad_rows_skipped"] == 1
    ds = load_scp_dataset(tmp_path / "out", expected_size=32)
    prompts = [r["prompt"] for r in ds.rows]
    assert prompts == ["a cat", "a dog", "a bird"]
    dog = ds.rows[1]  # label_0 = 0 → jpg_1 wins
    winner = np.asarray(Image.open(io.BytesIO(dog["winner_png"])))
    ref = np.asarray(Image.open(io.BytesIO(_jpeg(11))).convert("RGB").resize((32, 32), Image.BICUBIC))
    ref_other = np.asarray(Image.open(io.BytesIO(_jpeg(1))).convert("RGB").resize((32, 32), Image.BICUBIC))
    assert np.abs(winner.astype(int) - ref).mean() < np.abs(winner.astype(int) - ref_other).mean()
    assert all(not r["is_harmful"] and r["winner_reward"] > r["loser_reward"] for r in ds.rows)


def test_pickapic_wrong_layout_is_refused(tmp_path):
    shard = tmp_path / "x.parquet"
    pq.write_table(pa.table({"caption": ["a"], "image": [b"x"]}), shard)
    with pytest.raises(InputFileError, match="Pick-a-Pic layout"):
        import_pickapic(shard, tmp_path / "out", progress=False)


def test_coprov2_import_pairs_safe_winner_with_unsafe_loser(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "safe").mkdir()
    for i in range(3):
        Image.fromarray(_img(i)).save(tmp_path / "imgs" / f"000000{i}_0.jpg")
        Image.fromarray(_img(100 + i)).save(tmp_path / "safe" / f"000000{i}_0.jpg")
    csv_path = tmp_path / "CoProv2_train.csv"
    csv_path.write_text('prompt,image,category\n"A violent scene, at night",imgs/0000000_0.jpg,Violence\n'
                        "a hateful sign,imgs/0000001_0.jpg,Hate\nmissing one,imgs/0000009_0.jpg,Hate\n"
                        "no category,imgs/0000002_0.jpg,\n")
    summary = import_coprov2(csv_path, tmp_path / "out", safe_dir=tmp_path / "safe", progress=False)
    assert summary["n_pairs"] == 2 and summary["bad_rows_skipped"] == 2
    ds = load_scp_dataset(tmp_path / "out")
    assert [r["category"] for r in ds.rows] == ["Violence", "Hate"]
    assert ds.rows[0]["prompt"] == "A violent scene, at night"
    assert all(r["is_harmful"] and r["winner_cost"] < 0 < r["loser_cost"] for r in ds.rows)
    assert all(r["safe_prompt"] is None for r in ds.rows)
    with pytest.raises(InputFileError, match="--safe-dir"):
        import_coprov2(csv_path, tmp_path / "out2", progress=False)
    # a safe_prompt column (the safe image's prompt) is kept for concept augmentation
    csv_path.write_text("prompt,image,category,safe_prompt\nknife fight,imgs/0000000_0.jpg,Violence,two people talking\n"
                        "a hateful sign,imgs/0000001_0.jpg,Hate,\n")
    import_coprov2(csv_path, tmp_path / "out3", safe_dir=tmp_path / "safe", progress=False)
    assert [r["safe_prompt"] for r in load_scp_dataset(tmp_path / "out3").rows] == ["two people talking", None]
