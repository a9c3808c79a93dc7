"""The shipped CLIP tokenizer files are CLIP's real vocabulary, and small."""

import gzip
import json

from scdpo.sd.tokenizers import TOKENIZER_DIR, clip_tokenizer, derive_clip_bpe_files


def test_shipped_vocabulary_is_clips(tmp_path):
    vocab = json.loads((TOKENIZER_DIR / "vocab.json").read_text(encoding="utf-8"))
    merges = (TOKENIZER_DIR / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == 49408 and len(merges) == 1 + 48894
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407 and vocab["!"] == 0
    size = sum(p.stat().st_size for p in TOKENIZER_DIR.iterdir())
    assert size < 2_000_000  # ~1.5 MB of package data
    tok = clip_tokenizer()
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert clip_tokenizer("!").pad_token_id == 0 and tok.pad_token_id == 49407


def test_derivation_reproduces_the_shipped_files(tmp_path):
    """Re-derive from a gz in CLIP's source format built from the shipped merges (the real gz is in
    open-clip-torch, not a dependency): the derivation is deterministic and byte-identical."""
    merges = (TOKENIZER_DIR / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    gz = tmp_path / "bpe.txt.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as fh:
        fh.write("\"bpe_simple_vocab_16e6.txt#version: 0.2\n" + "\n".join(merges + ["x y", "z w"]) + "\n")
    vocab_path, merges_path = derive_clip_bpe_files(gz, tmp_path / "out")
    assert vocab_path.read_bytes() == (TOKENIZER_DIR / "vocab.json").read_bytes()
    assert merges_path.read_bytes() == (TOKENIZER_DIR / "merges.txt").read_bytes()
