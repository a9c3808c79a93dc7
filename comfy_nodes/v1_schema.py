"""A stand-in for ``comfy_api``'s V3 ``io`` / ``ui`` for ComfyUI builds that predate it.

Only what this pack's nodes use: ``io.Schema``, ``io.ComfyNode``, ``io.NodeOutput`` and the input /
output types below, with the same constructor arguments as the V3 originals. A node class
written against V3 (``define_schema`` + ``execute``) gets the classic protocol from
:class:`ComfyNode`: ``INPUT_TYPES()``, ``RETURN_TYPES``, ``RETURN_NAMES``, ``OUTPUT_IS_LIST``,
``FUNCTION``, ``CATEGORY``, ``OUTPUT_NODE``, ``DESCRIPTION``; its outputs become the classic
``{"ui": ..., "result": ...}`` dict, and a blocked output becomes ``ExecutionBlocker`` values
(or an error on builds too old to have it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional


class Hidden(str, Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"


class _Input:
    io_type = "*"

    def __init__(self, id: str, display_name: str = None, optional: bool = False, tooltip: str = None, **options):
        self.id, self.display_name, self.optional, self.tooltip = id, display_name, optional, tooltip
        self.options = {k: v for k, v in options.items() if v is not None}

    def v1_entry(self) -> tuple:
        opts = dict(self.options)
        if self.tooltip:
            opts["tooltip"] = self.tooltip
        if self.display_name:
            opts["display_name"] = self.display_name
        return (self.io_type, opts)


class _Output:
    io_type = "*"

    def __init__(self, id: str = None, display_name: str = None, tooltip: str = None, is_output_list: bool = False):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name, tooltip, is_output_list


def _io_kind(io_type: str, input_base=_Input):
    input_cls = type("Input", (input_base,), {"io_type": io_type})
    output_cls = type("Output", (_Output,), {"io_type": io_type})
    return type(io_type.title(), (), {"io_type": io_type, "Input": input_cls, "Output": output_cls})


class _ComboInput(_Input):
    io_type = "COMBO"

    def __init__(self, id: str, options: list = None, display_name: str = None, optional: bool = False,
                 tooltip: str = None, default: Any = None, **extra):
        super().__init__(id, display_name, optional, tooltip, default=default)
        self.choices = list(options or [])

    def v1_entry(self) -> tuple:
        return (self.choices, self.v1_options())

    def v1_options(self) -> dict:
        return super().v1_entry()[1]


Boolean = _io_kind("BOOLEAN")
Int = _io_kind("INT")
Float = _io_kind("FLOAT")
String = _io_kind("STRING")
Image = _io_kind("IMAGE")
Mask = _io_kind("MASK")
Model = _io_kind("MODEL")
Latent = _io_kind("LATENT")
Conditioning = _io_kind("CONDITIONING")
ClipVision = _io_kind("CLIP_VISION")
Combo = type("Combo", (), {"io_type": "COMBO", "Input": _ComboInput})


def Custom(io_type: str):
    return _io_kind(io_type)


@dataclass
class Schema:
    node_id: str
    display_name: Optional[str] = None
    category: str = "sd"
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    hidden: list = field(default_factory=list)
    description: str = ""
    is_output_node: bool = False
    not_idempotent: bool = False


class NodeOutput:
    def __init__(self, *args: Any, ui: Any = None, expand: dict = None, block_execution: str = None):
        self.args, self.ui, self.expand, self.block_execution = args, ui, expand, block_execution


class PreviewText:
    def __init__(self, value: str, **kwargs):
        self.value = value

    def as_dict(self) -> dict:
        return {"text": (self.value,)}


class ui:  # noqa: N801 - mirrors the comfy_api module name
    PreviewText = PreviewText


class ComfyExtension:
    async def on_load(self) -> None:
        pass

    async def get_node_list(self) -> list:
        raise NotImplementedError


class _HiddenValues:
    def __init__(self, values: dict):
        self._values = values

    def __getattr__(self, key: str):
        return self._values.get(key)


class ComfyNode:
    """Base of the pack's nodes on a pre-V3 ComfyUI: V3-style classes, classic protocol."""

    FUNCTION = "execute_v1"
    hidden = _HiddenValues({})

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "define_schema" not in cls.__dict__:
            return
        schema = cls.define_schema()
        cls.CATEGORY = schema.category
        cls.DESCRIPTION = schema.description
        cls.OUTPUT_NODE = schema.is_output_node
        cls.NOT_IDEMPOTENT = schema.not_idempotent
        cls.RETURN_TYPES = tuple(o.io_type for o in schema.outputs)
        cls.RETURN_NAMES = tuple(o.display_name or o.io_type for o in schema.outputs)
        cls.OUTPUT_IS_LIST = tuple(o.is_output_list for o in schema.outputs)
        cls.DISPLAY_NAME = schema.display_name

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802 - ComfyUI's name
        schema = cls.define_schema()
        spec: dict = {"required": {}}
        for inp in schema.inputs:
            spec.setdefault("optional" if inp.optional else "required", {})[inp.id] = inp.v1_entry()
        if schema.hidden:
            spec["hidden"] = {h.name: h.value for h in schema.hidden}
        return spec

    def execute_v1(self, unique_id=None, **inputs):
        cls = type(self)
        cls.hidden = _HiddenValues({"unique_id": unique_id})
        out = cls.execute(**inputs)
        ui_dict = out.ui.as_dict() if hasattr(out.ui, "as_dict") else out.ui
        result = tuple(out.args)
        if out.block_execution is not None:
            from .comfy_schema import ExecutionBlocker

            if ExecutionBlocker is None:
                raise RuntimeError(out.block_execution)
            result = tuple(ExecutionBlocker(out.block_execution) for _ in cls.RETURN_TYPES)
        return {"ui": ui_dict, "result": result} if ui_dict else result
