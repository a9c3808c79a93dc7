"""Stand-in for comfy_api.latest._io (the V3 node schema): the types, Schema, ComfyNode and
NodeOutput the pack uses, with ComfyUI's constructor arguments and V1-info serialisation
(``("COMBO", {"options": [...]})`` for combos, ``optional`` inputs under "optional", hidden
inputs under "hidden", output names = display_name or io_type)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from comfy_api.internal import _ComfyNodeInternal, _NodeOutputInternal, prune_dict
from comfy_execution.graph_utils import ExecutionBlocker


class NumberDisplay(str, Enum):
    number = "number"
    slider = "slider"


class Input:
    io_type = "*"

    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 extra_dict=None):
        self.id, self.display_name, self.optional, self.tooltip, self.lazy = id, display_name, optional, tooltip, lazy
        self.extra_dict = extra_dict or {}

    def as_dict(self):
        return prune_dict({"display_name": self.display_name, "optional": self.optional, "tooltip": self.tooltip,
                           "lazy": self.lazy}) | prune_dict(self.extra_dict)

    def get_io_type(self):
        return self.io_type


class WidgetInput(Input):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, socketless=None,
                 widget_type=None, force_input=None, extra_dict=None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict)
        self.default, self.socketless, self.widget_type, self.force_input = default, socketless, widget_type, force_input

    def as_dict(self):
        return super().as_dict() | prune_dict({"default": self.default, "socketless": self.socketless,
                                               "widgetType": self.widget_type, "forceInput": self.force_input})


class Output:
    io_type = "*"

    def __init__(self, id: str = None, display_name: str = None, tooltip: str = None, is_output_list=False):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name, tooltip, is_output_list


def _kind(io_type: str, input_base=Input, **input_attrs):
    inp = type("Input", (input_base,), {"io_type": io_type, **input_attrs})
    out = type("Output", (Output,), {"io_type": io_type})
    return type(io_type.title().replace("_", ""), (), {"io_type": io_type, "Input": inp, "Output": out})


class _NumberInput(WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, min=None,
                 max=None, step=None, round=None, control_after_generate=None, display_mode=None, socketless=None,
                 force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.min, self.max, self.step, self.round = min, max, step, round
        self.control_after_generate, self.display_mode = control_after_generate, display_mode

    def as_dict(self):
        return super().as_dict() | prune_dict({"min": self.min, "max": self.max, "step": self.step,
                                               "round": self.round,
                                               "control_after_generate": self.control_after_generate,
                                               "display": self.display_mode})


class _BooleanInput(WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, label_on=None,
                 label_off=None, socketless=None, force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.label_on, self.label_off = label_on, label_off


class _StringInput(WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, multiline=False,
                 placeholder=None, default=None, dynamic_prompts=None, socketless=None, force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.multiline, self.placeholder = multiline, placeholder

    def as_dict(self):
        return super().as_dict() | prune_dict({"multiline": self.multiline, "placeholder": self.placeholder})


class _ComboInput(WidgetInput):
    def __init__(self, id, options=None, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                 control_after_generate=None, upload=None, image_folder=None, remote=None, socketless=None):
        if isinstance(options, type) and issubclass(options, Enum):
            options = [v.value for v in options]
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless)
        self.options, self.control_after_generate = options, control_after_generate

    def as_dict(self):
        return super().as_dict() | prune_dict({"multiselect": False, "options": self.options,
                                               "control_after_generate": self.control_after_generate})


Boolean = _kind("BOOLEAN", _BooleanInput)
Int = _kind("INT", _NumberInput)
Float = _kind("FLOAT", _NumberInput)
String = _kind("STRING", _StringInput)
Combo = _kind("COMBO", _ComboInput)
Image = _kind("IMAGE")
Mask = _kind("MASK")
Latent = _kind("LATENT")
Conditioning = _kind("CONDITIONING")
Model = _kind("MODEL")
Clip = _kind("CLIP")
Vae = _kind("VAE")
ClipVision = _kind("CLIP_VISION")
AnyType = _kind("*")


def Custom(io_type: str):
    return _kind(io_type)


class Hidden(str, Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"


class HiddenHolder:
    def __init__(self, values: dict):
        self._values = values

    def __getattr__(self, key):
        return self._values.get(Hidden[key]) if key in Hidden.__members__ else None

    @classmethod
    def from_dict(cls, d):
        return cls(dict(d or {}))


@dataclass
class Schema:
    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list = None
    outputs: list = None
    hidden: list = None
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False

    def validate(self):
        ins = [i.id for i in self.inputs or []]
        outs = [o.id for o in self.outputs or []]
        if len(set(ins)) != len(ins) or len(set(outs)) != len(outs) or set(ins) & set(outs):
            raise ValueError(f"Input/output ids must be unique: {ins} / {outs}")

    def finalize(self):
        if self.is_output_node:
            self.hidden = list(self.hidden or [])
            for h in (Hidden.prompt, Hidden.extra_pnginfo):
                if h not in self.hidden:
                    self.hidden.append(h)
        for i, o in enumerate(self.outputs or []):
            if o.id is None:
                o.id = f"_{i}_{o.io_type}_"

    def get_v1_info(self, cls) -> dict:
        inputs: dict = {"required": {}}
        for i in self.inputs or []:
            opts = i.as_dict()
            opts.pop("optional", None)
            inputs.setdefault("optional" if i.optional else "required", {})[i.id] = (i.get_io_type(), opts)
        for h in self.hidden or []:
            inputs.setdefault("hidden", {})[h.name] = (h.value,)
        outs = self.outputs or []
        return dict(
            input=inputs, input_order={k: list(v) for k, v in inputs.items()},
            output=[o.io_type for o in outs], output_is_list=[o.is_output_list for o in outs],
            output_name=[o.display_name or o.io_type for o in outs], output_tooltips=[o.tooltip for o in outs],
            name=self.node_id, display_name=self.display_name, description=self.description,
            python_module=getattr(cls, "RELATIVE_PYTHON_MODULE", "nodes"), category=self.category,
            output_node=self.is_output_node, deprecated=self.is_deprecated, experimental=self.is_experimental,
            api_node=self.is_api_node,
        )


class _classproperty:
    def __init__(self, f):
        self.f = f

    def __get__(self, obj, owner):
        return self.f(owner)


class NodeOutput(_NodeOutputInternal):
    def __init__(self, *args: Any, ui=None, expand: dict = None, block_execution: str = None):
        self.args, self.ui, self.expand, self.block_execution = args, ui, expand, block_execution

    @property
    def result(self):
        return self.args if len(self.args) > 0 else None

    def __getitem__(self, index):
        return self.args[index]


class ComfyNode(_ComfyNodeInternal):
    RELATIVE_PYTHON_MODULE = None
    SCHEMA = None
    hidden: HiddenHolder = None

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs) -> NodeOutput:
        raise NotImplementedError

    @classmethod
    def GET_BASE_CLASS(cls):
        return ComfyNode

    @classmethod
    def VALIDATE_CLASS(cls):
        for name in ("define_schema", "execute"):
            if getattr(cls, name).__func__ is getattr(ComfyNode, name).__func__:
                raise Exception(f"No {name} function was defined for node class {cls.__name__}.")

    @classmethod
    def FINALIZE_SCHEMA(cls):
        schema = cls.define_schema()
        schema.finalize()
        return schema

    @classmethod
    def GET_SCHEMA(cls) -> Schema:
        cls.VALIDATE_CLASS()
        schema = cls.FINALIZE_SCHEMA()
        schema.validate()
        cls.SCHEMA = schema
        return schema

    @classmethod
    def GET_NODE_INFO_V1(cls) -> dict:
        return cls.GET_SCHEMA().get_v1_info(cls)

    @classmethod
    def INPUT_TYPES(cls, include_hidden=True, return_schema=False):
        schema = cls.FINALIZE_SCHEMA()
        inputs = schema.get_v1_info(cls)["input"]
        if not include_hidden:
            inputs.pop("hidden", None)
        return (inputs, schema) if return_schema else inputs

    FUNCTION = "EXECUTE_NORMALIZED"
    CATEGORY = _classproperty(lambda cls: cls.GET_SCHEMA().category)
    DESCRIPTION = _classproperty(lambda cls: cls.GET_SCHEMA().description)
    OUTPUT_NODE = _classproperty(lambda cls: cls.GET_SCHEMA().is_output_node)
    INPUT_IS_LIST = _classproperty(lambda cls: cls.GET_SCHEMA().is_input_list)
    NOT_IDEMPOTENT = _classproperty(lambda cls: cls.GET_SCHEMA().not_idempotent)
    RETURN_TYPES = _classproperty(lambda cls: [o.io_type for o in cls.GET_SCHEMA().outputs or []])
    RETURN_NAMES = _classproperty(lambda cls: [o.display_name or o.io_type for o in cls.GET_SCHEMA().outputs or []])
    OUTPUT_IS_LIST = _classproperty(lambda cls: [o.is_output_list for o in cls.GET_SCHEMA().outputs or []])

    @classmethod
    def PREPARE_CLASS_CLONE(cls, hidden_inputs: dict):
        return type(cls.__name__, (cls,), {"hidden": HiddenHolder.from_dict(hidden_inputs)})

    @classmethod
    def EXECUTE_NORMALIZED(cls, *args, **kwargs) -> NodeOutput:
        out = cls.execute(*args, **kwargs)
        if out is None:
            out = NodeOutput()
        elif isinstance(out, tuple):
            out = NodeOutput(*out)
        elif isinstance(out, ExecutionBlocker):
            out = NodeOutput(block_execution=out.message)
        elif not isinstance(out, NodeOutput):
            raise Exception(f"Invalid return type from node: {type(out)}")
        return out


__all__ = [name for name in dir() if not name.startswith("_")]
