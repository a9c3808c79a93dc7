"""The CLIP BPE tokenizer that SD 1.x and SDXL use, from files shipped in the package.

``scdpo/configs/clip_tokenizer/{vocab.json,merges.txt}`` are derived (by
:func:`derive_clip_bpe_files`) from OpenAI CLIP's ``bpe_simple_vocab_16e6.txt.gz`` (MIT licence,
as redistributed by open-clip-torch): 48 894 merges, a 49 408-token vocabulary whose ids match
every SD checkpoint's embedding table (``<|startoftext|>`` = 49406, ``<|endoftext|>`` = 49407).
Nothing is fetched at run time. Regenerate with
``python -m scdpo.sd.tokenizers PATH/TO/bpe_simple_vocab_16e6.txt.gz``.
"""

from __future__ import annotations

import gzip
import json
import sys
from functools import lru_cache
from pathlib import Path

from .configs import CONFIG_ROOT

TOKENIZER_DIR = CONFIG_ROOT / "clip_tokenizer"
MAX_LENGTH = 77
N_MERGES = 49152 - 256 - 2  # the merges CLIP uses out of the file's list


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible byte → printable character table (in CLIP's vocabulary order)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def derive_clip_bpe_files(bpe_gz: str | Path, out_dir: str | Path = TOKENIZER_DIR) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` (Hugging Face CLIPTokenizer format) from CLIP's gz."""
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = lines[1 : N_MERGES + 1]
    units = list(_bytes_to_unicode().values())
    vocab = units + [u + "</w>" for u in units] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from ..fileio import write_text_atomic

    write_text_atomic(out_dir / "vocab.json", json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    write_text_atomic(out_dir / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    return out_dir / "vocab.json", out_dir / "merges.txt"


@lru_cache(maxsize=4)
def _load(pad_token: str):
    from transformers import CLIPTokenizer

    # a local folder: works offline with transformers 4 (vocab_file/merges_file) and 5 (vocab/merges)
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), pad_token=pad_token, local_files_only=True)


def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """The CLIP tokenizer (77 tokens). SD 1.x and SDXL's first encoder pad with ``<|endoftext|>``,
    SDXL's second (OpenCLIP bigG) with ``!``."""
    import copy

    return copy.deepcopy(_load(pad_token))


if __name__ == "__main__":  # pragma: no cover - maintenance tool
    print(derive_clip_bpe_files(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else TOKENIZER_DIR))
