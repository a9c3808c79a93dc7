"""ComfyUI entry point: ComfyUI imports this file when the repository is cloned into
``ComfyUI/custom_nodes/`` (what ComfyUI-Manager does). It exports only the node pack's names.

The nodes are thin adapters over the ``scdpo`` package in ``trainer/``; when ``scdpo`` is not
installed in ComfyUI's Python, ``trainer/`` is put on ``sys.path`` (its dependencies come from
``requirements.txt``). Not imported by anything else: pytest collects ``tests/`` only.
"""

import importlib.util
import os
import sys

def _inside_comfyui() -> bool:
    if "folder_paths" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("folder_paths") is not None
    except (ImportError, ValueError):
        return False


if not _inside_comfyui():
    # Not inside ComfyUI (e.g. pytest importing the repository root as a package while it
    # collects tests/): export nothing rather than fail on ComfyUI's missing modules.
    NODE_CLASS_MAPPINGS: dict = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict = {}
else:
    try:
        import scdpo  # noqa: F401  (installed with pip install -e .)
    except ImportError:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "trainer"))

    from .comfy_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
