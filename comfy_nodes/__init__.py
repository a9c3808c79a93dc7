"""SC-DPO Safe Diffusion nodes for ComfyUI.

Nodes (all in the "SC-DPO safety" category): SC-DPO Safe UNet, SC-DPO Cost Model Loader,
SC-DPO Safety Gate, SC-DPO Cost Score, SC-DPO Safe KSampler (live previews gated). Importing registers the ``safety_models`` model folder
and logs one line if a package of ``requirements.txt`` is missing (:mod:`.dependencies`), and
nothing else: no model is loaded and nothing touches the network until a node runs.

Export: ``NODE_CLASS_MAPPINGS`` / ``NODE_DISPLAY_NAME_MAPPINGS``, which every ComfyUI build
reads (V3 node classes are registered through it as they are; on builds without the V3 schema
the same classes speak the classic protocol, see :mod:`.comfy_schema`). ``comfy_entrypoint`` is
deliberately not defined: ComfyUI at a125cd84 uses NODE_CLASS_MAPPINGS when a module has both and
never calls the entrypoint, so a second export would only be dead code that could drift.
"""

from __future__ import annotations

import logging
import os

from .dependencies import missing_message
from .model_folders import register_safety_models_folder

register_safety_models_folder()
_missing = missing_message(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _missing:  # a clone without ComfyUI-Manager's requirements step: say so while ComfyUI starts
    logging.warning(_missing)

from .comfy_schema import HAS_V3_SCHEMA  # noqa: E402
from .cost_model_loader import CostModelLoader  # noqa: E402
from .safe_sampler import SafeKSampler  # noqa: E402
from .safe_unet import SafeUNet  # noqa: E402
from .safety_gate import CostScore, SafetyGate  # noqa: E402

NODES = [SafeUNet, CostModelLoader, SafetyGate, CostScore, SafeKSampler]
# ids/names are class constants: building schemas here would list model folders at import time
NODE_CLASS_MAPPINGS = {node.NODE_ID: node for node in NODES}
NODE_DISPLAY_NAME_MAPPINGS = {node.NODE_ID: node.DISPLAY_NAME for node in NODES}

__all__ = ["HAS_V3_SCHEMA", "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
