"""``weights/MANIFEST.json``: what each shipped file is, how it was made, and how good it is.

Each entry: ``file``, ``sha256``, ``bytes``, ``what``, ``reproduce`` (the command + seed that
re-creates it), ``quality`` (measured numbers). A test checks every entry against the file on disk.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .fileio import write_json_atomic


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(weights_dir: str | Path) -> dict[str, Any]:
    path = Path(weights_dir) / "MANIFEST.json"
    if not path.exists():
        return {"files": {}}
    return json.loads(path.read_text(encoding="utf-8"))


def record(weights_dir: str | Path, filename: str, what: str, reproduce: str, quality: dict[str, Any],
           **extra: Any) -> dict[str, Any]:
    """Add or replace the entry for ``weights_dir/filename`` (hash and size computed now)."""
    weights_dir = Path(weights_dir)
    manifest = read_manifest(weights_dir)
    path = weights_dir / filename
    manifest.setdefault("files", {})[filename] = {
        "sha256": sha256_of(path),
        "bytes": path.stat().st_size,
        "what": what,
        "reproduce": reproduce,
        "quality": quality,
        **extra,
    }
    write_json_atomic(weights_dir / "MANIFEST.json", manifest)
    return manifest
