"""Safety LoRAs as webui extra networks: which ones there are, and the ``<lora:NAME:STRENGTH>`` tag.

The LoRA is applied by adding its tag to the prompts before the webui parses extra networks, so the
webui's own Lora loader applies it (A1111's ``extensions-builtin/Lora``, Forge's
``sd_forge_lora``): it stacks with the user's LoRAs, is re-activated for every batch and for the
hires pass, and "Lora hashes" in the infotext record it. The webui only finds networks under its
Lora folder (``--lora-dir``), so a LoRA from this project's own folder is copied into
``<Lora folder>/scdpo/`` the first time it is used.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional

LORA_SUFFIXES = (".safetensors",)
WEBUI_BASE_VERSIONS_SKIPPED = ("toy_v1",)  # toy-world LoRAs cannot apply to any webui model
COPY_SUBDIR = "scdpo"


def lora_files(folder: Optional[str | Path]) -> dict[str, Path]:
    """``{name: path}`` of the LoRA files under ``folder`` (recursive; name = file stem, as the webui)."""
    out: dict[str, Path] = {}
    if not folder or not os.path.isdir(folder):
        return out
    for root, _dirs, files in os.walk(folder, followlinks=True):
        for fn in sorted(files):
            if fn.lower().endswith(LORA_SUFFIXES):
                out.setdefault(os.path.splitext(fn)[0], Path(root) / fn)
    return out


def usable_in_webui(path: Path) -> bool:
    """A readable LoRA file whose ``ss_base_model_version`` is a real SD model (not the toy world)."""
    try:
        from scdpo.fileio import read_safetensors_header

        meta = read_safetensors_header(path, what="LoRA file").get("__metadata__", {})
    except Exception:
        return False
    return meta.get("ss_base_model_version", "") not in WEBUI_BASE_VERSIONS_SKIPPED


def own_lora_dir(opts_value: str, extension_dir: Path) -> Path:
    """The project's LoRA folder: the setting, else ``<repo>/weights`` next to the extension."""
    if opts_value and opts_value.strip():
        return Path(opts_value.strip()).expanduser()
    return extension_dir.resolve().parent / "weights"


def own_loras(opts_value: str, extension_dir: Path) -> dict[str, Path]:
    return {n: p for n, p in lora_files(own_lora_dir(opts_value, extension_dir)).items() if usable_in_webui(p)}


def webui_knows(name: str, lora_dir: Optional[str]) -> bool:
    """True if the webui can resolve ``name``: its Lora index (A1111 and Forge both name the module
    ``networks``) when loaded, else a file with that stem in its Lora folder."""
    networks = sys.modules.get("networks")
    aliases = getattr(networks, "available_network_aliases", None)
    if isinstance(aliases, dict) and name in aliases:
        return True
    return name in lora_files(lora_dir)


def lora_choices(lora_dir: Optional[str], own: dict[str, Path]) -> list[str]:
    return sorted(set(lora_files(lora_dir)) | set(own), key=str.lower)


def make_available(name: str, lora_dir: Optional[str], own: dict[str, Path]) -> Optional[str]:
    """Make ``name`` resolvable by the webui's Lora loader; returns an error message or None.

    A LoRA only in the project's folder is copied (atomically; again if the source changed) to
    ``<lora_dir>/scdpo/<name>.safetensors``; the webui picks new files up by name on first use.
    """
    source = own.get(name)
    if source is None:
        return None if webui_knows(name, lora_dir) else f"LoRA {name} not found in the webui's Lora folder"
    if not lora_dir:
        return "the webui has no Lora folder (--lora-dir)"
    target = Path(lora_dir) / COPY_SUBDIR / f"{name}.safetensors"
    existing = lora_files(lora_dir).get(name)
    if existing is not None and existing != target:
        return None  # the user's own file of that name wins, as the webui would pick it anyway
    try:
        src = source.stat()
        if target.exists() and target.stat().st_size == src.st_size and target.stat().st_mtime >= src.st_mtime:
            return None
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        try:
            shutil.copy2(source, tmp)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        return f"could not copy LoRA {name} into {target.parent}: {exc}"
    return None


def with_lora(prompt: str, name: str, strength: float) -> str:
    """``prompt`` with exactly one ``<lora:name:strength>``: earlier tags of the same network (a
    pasted infotext, or a ``<lora:name:-1>`` meant to cancel it) are removed first."""
    pattern = re.compile(r"<(?:lora|lyco):" + re.escape(name) + r"(?::[^>]*)?>")
    stripped = pattern.sub("", prompt).rstrip()
    tag = f"<lora:{name}:{strength:g}>"
    return f"{stripped} {tag}" if stripped else tag
