"""What the pack needs from ComfyUI's Python beyond ComfyUI's own requirements, checked at import.

A plain ``git clone`` into ``custom_nodes/`` skips ComfyUI-Manager's ``pip install -r
requirements.txt``: every node still registers, but the ones that need a missing package fail when
they run. :func:`missing_message` says so once, in the console, while ComfyUI starts. It only asks
``importlib`` whether each package can be found (nothing is imported, so start-up stays cheap).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Optional

# import name -> (requirement name in requirements.txt, what needs it); a test keeps it in step
# with requirements.txt
REQUIREMENTS = {
    "safetensors": ("safetensors", "every node"),
    "numpy": ("numpy", "every node"),
    "PIL": ("pillow", "every node"),
    "tqdm": ("tqdm", "every node"),
    "transformers": ("transformers", "CLIP-based cost models"),
    "diffusers": ("diffusers", "the Cost Model Loader"),
    "nudenet": ("nudenet", "the Cost Model Loader's NudeNet choice"),
}


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_requirements() -> list[str]:
    """Import names of :data:`REQUIREMENTS` that ComfyUI's Python cannot find."""
    return [module for module in REQUIREMENTS if not _findable(module)]


def missing_message(pack_dir: str) -> Optional[str]:
    """One console line naming what is missing, what needs it and the command that installs it;
    None when nothing is missing."""
    missing = missing_requirements()
    if not missing:
        return None
    what = ", ".join(f"{REQUIREMENTS[m][0]} ({REQUIREMENTS[m][1]})" for m in missing)
    requirements = os.path.join(pack_dir, "requirements.txt")
    return (f"[SC-DPO] missing Python packages: {what}; the nodes are registered but those parts fail until "
            f"you run: {sys.executable} -m pip install -r {requirements}")
