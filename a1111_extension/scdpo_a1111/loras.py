"""Safety LoRAs as webui extra networks: which ones there are, and the ``<lora:NAME:STRENGTH>`` tag.

The LoRA is applied by adding its tag to the prompts before the webui parses extra networks, so the
webui's own Lora loader applies it (A1111's ``extensions-builtin/Lora``, Forge's
``sd_forge_lora``): it stacks with the user's LoRAs, is re-activated for every batch and for the
hires pass, and "Lora hashes" in the infotext record it. The webui only finds networks under its
Lora folder (``--lora-dir``), so a LoRA from this project's own folder is copied into
``<Lora folder>/scdpo/`` the first time it is used.

Only **safety LoRAs** are offered or applied: files whose metadata says they are kohya LoRAs
(``ss_network_module``) for the loaded base model (``ss_base_model_version`` ``sd_v1`` or
``sdxl_base_v1-0``), taken from the project's safety-LoRA folder, or from the webui's Lora folder
when they also carry SC-DPO's training metadata (``scdpo_method``: the user's style LoRAs there are
not safety LoRAs). Anything else named by a request is refused with the reason (:func:`refusal`).
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
NETWORK_MODULE = "networks.lora"  # kohya's ss_network_module of a LoRA (scdpo.lora.files writes it)
SAFETY_BASE_VERSIONS = ("sd_v1", "sdxl_base_v1-0")  # the webui models SC-DPO safety LoRAs exist for
SCDPO_MARK = "scdpo_method"  # written by `scdpo lora train` / `scdpo lora merge`
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


def _metadata(path: Path) -> Optional[dict]:
    try:
        from scdpo.fileio import read_safetensors_header

        return read_safetensors_header(path, what="LoRA file").get("__metadata__", {}) or {}
    except Exception:  # unreadable, not safetensors, or no scdpo: not a usable LoRA
        return None


def not_a_safety_lora(path: Path, base_version: Optional[str], own_folder: bool) -> Optional[str]:
    """Why ``path`` is not a safety LoRA for the loaded model (``base_version``: its
    ``ss_base_model_version``, None while no model is loaded), or None when it is one."""
    meta = _metadata(path)
    if meta is None:
        return "not a readable .safetensors file"
    if meta.get("ss_network_module") != NETWORK_MODULE:
        kind = meta.get("scdpo_kind")
        return f"not a LoRA (its metadata says {kind!r})" if kind else "not a LoRA (no LoRA metadata)"
    version = meta.get("ss_base_model_version") or "an unknown base model"
    if version not in SAFETY_BASE_VERSIONS:
        return f"a LoRA for {version}, which no webui model is"
    if base_version and version != base_version:
        return f"a LoRA for {version}, but the loaded model is {base_version}"
    if not own_folder and SCDPO_MARK not in meta:
        return "not an SC-DPO safety LoRA (no scdpo_method metadata); put it in the safety LoRA folder to use it"
    return None


def own_lora_dir(opts_value: str, extension_dir: Path) -> Path:
    """The project's LoRA folder: the setting, else ``<repo>/weights`` next to the extension."""
    if opts_value and opts_value.strip():
        return Path(opts_value.strip()).expanduser()
    return extension_dir.resolve().parent / "weights"


def own_loras(opts_value: str, extension_dir: Path) -> dict[str, Path]:
    """Every ``.safetensors`` in the project's folder (safety LoRAs or not: :func:`lora_choices` filters)."""
    return lora_files(own_lora_dir(opts_value, extension_dir))


def webui_knows(name: str, lora_dir: Optional[str]) -> bool:
    """True if the webui can resolve ``name``: its Lora index (A1111 and Forge both name the module
    ``networks``) when loaded, else a file with that stem in its Lora folder."""
    networks = sys.modules.get("networks")
    aliases = getattr(networks, "available_network_aliases", None)
    if isinstance(aliases, dict) and name in aliases:
        return True
    return name in lora_files(lora_dir)


def webui_lora_path(name: str, lora_dir: Optional[str]) -> Optional[Path]:
    """The file the webui's Lora loader resolves ``name`` to: its index entry, else the file with that stem."""
    networks = sys.modules.get("networks")
    aliases = getattr(networks, "available_network_aliases", None)
    entry = aliases.get(name) if isinstance(aliases, dict) else None
    filename = getattr(entry, "filename", None)
    return Path(filename) if filename else lora_files(lora_dir).get(name)


def safety_loras(lora_dir: Optional[str], own: dict[str, Path], base_version: Optional[str]) -> dict[str, Path]:
    """``{name: path}`` of the safety LoRAs for ``base_version``: the project's folder first, then the
    webui's Lora folder (SC-DPO files only); a name in both resolves as the webui would resolve it."""
    found = {n: p for n, p in own.items() if not not_a_safety_lora(p, base_version, own_folder=True)}
    for name, path in lora_files(lora_dir).items():
        if name not in found and not not_a_safety_lora(path, base_version, own_folder=False):
            found[name] = path
    return found


def lora_choices(lora_dir: Optional[str], own: dict[str, Path], base_version: Optional[str] = None) -> list[str]:
    return sorted(safety_loras(lora_dir, own, base_version), key=str.lower)


def refusal(name: str, lora_dir: Optional[str], own: dict[str, Path], base_version: Optional[str]) -> Optional[str]:
    """Why the LoRA ``name`` (from a request or the enforce setting) must not be applied, or None.

    The file the webui would load is checked: the user's own file of that name in the Lora folder
    wins over the project's copy source, as :func:`make_available` leaves it in place."""
    webui_path = webui_lora_path(name, lora_dir)
    own_path = own.get(name)
    if webui_path is None and own_path is None:
        return f"LoRA {name} not found in the webui's Lora folder or the safety LoRA folder"
    our_copy = Path(lora_dir) / COPY_SUBDIR / f"{name}.safetensors" if lora_dir else None
    from_own_folder = own_path is not None and (webui_path is None or webui_path == our_copy)
    path = own_path if from_own_folder else webui_path
    why = not_a_safety_lora(path, base_version, own_folder=from_own_folder)
    return f"LoRA {name} refused: {path.name} is {why}" if why else None


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
