"""Entry point for the webui's script loader; keeps one copy of the extension active.

The webui executes every ``scripts/*.py`` of every extension on each script-loading pass (start-up
and "Reload UI"; it clears all callbacks first) and registers every ``Script`` subclass it finds
in the module's namespace. This extension has two such files: ``a1111_extension/scripts/`` (when
``a1111_extension/`` is copied or linked into ``extensions/``) and the repository root's
``scripts/`` (when the repository is installed from its URL). If both installs are present, only
the first file loaded in a pass registers anything; the other is skipped with one log line.
"""

from __future__ import annotations

import os
from pathlib import Path

_owner: dict = {"path": None}


def _registered_this_pass(script_callbacks) -> bool:
    """Our save hook still being registered means this loading pass already ran :func:`load`."""
    from . import callbacks

    callback_map = getattr(script_callbacks, "callback_map", None)
    if not isinstance(callback_map, dict):
        return _owner["path"] is not None
    return any(getattr(c, "callback", None) is callbacks.before_image_saved
               for c in callback_map.get("callbacks_before_image_saved", []))


def _extension_dir(script_file: str) -> Path:
    """``a1111_extension/`` of the install that ``script_file`` belongs to (``<ext>/scripts/x.py``, or
    ``<repo>/scripts/x.py`` → ``<repo>/a1111_extension``)."""
    root = Path(os.path.abspath(script_file)).parent.parent
    return root if (root / "scdpo_a1111").is_dir() else root / "a1111_extension"


def load(script_file: str) -> dict:
    """Names for the calling script module's namespace: ``{"ScdpoSafetyScript": cls}``, or ``{}``
    when another install of this extension already registered in this loading pass."""
    from modules import script_callbacks, shared

    from . import runtime

    me = os.path.realpath(script_file)
    if _registered_this_pass(script_callbacks) and _owner["path"] != me:
        if runtime.scdpo_problem and not runtime.find_scdpo(_extension_dir(script_file)):
            print("[SC-DPO] scdpo found beside the second install; the gate can score again")
        print(f"[SC-DPO] another install of this extension is already loaded ({_owner['path']}); "
              f"skipping {me}. Remove one of the two from extensions/.")
        return {}
    _owner["path"] = me
    from . import callbacks

    problem = runtime.find_scdpo(_extension_dir(script_file))
    if problem:
        print(f"[SC-DPO] {problem}. The gate blocks every image while it is enabled.")
    callbacks.register(script_callbacks, shared)
    from .script import ScdpoSafetyScript

    return {"ScdpoSafetyScript": ScdpoSafetyScript}
