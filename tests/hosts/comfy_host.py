"""Loads the node pack and runs its nodes the way ComfyUI does (nodes.load_custom_node and
execution.py at a125cd84), inside the fake ComfyUI of ``comfyui/`` (the ``comfyui`` fixture)."""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from fake_hosts import HOSTS, REPO

FAKE_COMFYUI = HOSTS["comfyui"].folder
REPO_ROOT = REPO
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


@dataclass
class LoadedPack:
    module: object
    node_classes: dict
    display_names: dict


def load_pack(pack_dir: Path = REPO_ROOT, module_parent: str = "custom_nodes") -> LoadedPack:
    """Import ``pack_dir/__init__.py`` as ComfyUI imports a custom-node folder and register its nodes
    (the NODE_CLASS_MAPPINGS branch first, comfy_entrypoint only if there is none)."""
    module_path = str(pack_dir)
    sys_module_name = module_path.replace(".", "_x_")
    if sys_module_name in sys.modules:
        module = sys.modules[sys_module_name]
    else:
        spec = importlib.util.spec_from_file_location(sys_module_name, os.path.join(module_path, "__init__.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[sys_module_name] = module
        spec.loader.exec_module(module)
    classes, names = {}, {}
    if getattr(module, "NODE_CLASS_MAPPINGS", None) is not None:
        for name, node_cls in module.NODE_CLASS_MAPPINGS.items():
            classes[name] = node_cls
            node_cls.RELATIVE_PYTHON_MODULE = f"{module_parent}.{os.path.basename(module_path)}"
        names.update(getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {})
    elif hasattr(module, "comfy_entrypoint"):
        raise AssertionError("the pack should export NODE_CLASS_MAPPINGS (every ComfyUI build reads it)")
    return LoadedPack(module, classes, names)


def validation_errors(node_cls, inputs: dict) -> list[str]:
    """What ComfyUI's prompt validation would reject (missing required input, out-of-range number,
    combo value not in the list). Non-widget inputs are links and only checked for presence."""
    info = node_cls.INPUT_TYPES()
    errors = []
    for section in ("required", "optional"):
        for name, (io_type, opts) in info.get(section, {}).items():
            if name not in inputs:
                if section == "required":
                    errors.append(f"required_input_missing: {name}")
                continue
            value = inputs[name]
            kind = "COMBO" if isinstance(io_type, list) else io_type
            if kind in ("INT", "FLOAT"):
                if "min" in opts and value < opts["min"]:
                    errors.append(f"value_smaller_than_min: {name}")
                if "max" in opts and value > opts["max"]:
                    errors.append(f"value_bigger_than_max: {name}")
            elif kind == "COMBO":
                options = io_type if isinstance(io_type, list) else opts.get("options", [])
                if value not in options:
                    errors.append(f"value_not_in_list: {name}: {value!r}")
    return errors


def pack_module(name: str):
    """A module of the loaded pack, e.g. ``pack_module("safety_gate")`` (the pack is loaded if needed)."""
    pack = load_pack(REPO_ROOT)
    return sys.modules[f"{pack.module.__name__}.comfy_nodes.{name}"]


@dataclass
class NodeRun:
    outputs: tuple | None  # one value per output (a list for list outputs), or ExecutionBlocker each
    ui: dict = field(default_factory=dict)
    block_message: str | None = None

    @property
    def blocked(self) -> bool:
        from comfy_execution.graph_utils import ExecutionBlocker

        return self.outputs is not None and all(isinstance(o, ExecutionBlocker) for o in self.outputs)

    @property
    def text(self) -> str:
        return "\n".join(self.ui.get("text", ()))


def run_node(node_cls, unique_id: str = "7", **inputs) -> NodeRun:
    """Validate the inputs, then execute as execution.py does for a V3 node: class clone with the
    hidden inputs it asked for, EXECUTE_NORMALIZED, outputs replaced by ExecutionBlockers when the
    node blocks (ComfyUI only does so when the NodeOutput carries values)."""
    from comfy_api.latest import io
    from comfy_execution.graph_utils import ExecutionBlocker

    errors = validation_errors(node_cls, inputs)
    if errors:
        raise AssertionError(f"ComfyUI would reject the prompt: {errors}")
    schema = node_cls.GET_SCHEMA()
    hidden = {io.Hidden.unique_id: unique_id} if io.Hidden.unique_id in (schema.hidden or []) else {}
    out = node_cls.PREPARE_CLASS_CLONE(hidden).EXECUTE_NORMALIZED(**inputs)
    ui = out.ui if isinstance(out.ui, dict) or out.ui is None else out.ui.as_dict()
    result = out.result
    if result is not None and out.block_execution is not None:
        result = tuple(ExecutionBlocker(out.block_execution) for _ in node_cls.RETURN_TYPES)
    return NodeRun(result, ui or {}, out.block_execution)
