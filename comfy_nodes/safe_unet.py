"""SC-DPO Safe UNet: a safety LoRA applied to a ComfyUI ``MODEL`` through ComfyUI's own patching.

The file is read and validated by :func:`scdpo.lora.load_lora`; the patches are built by ComfyUI
(``comfy.lora.model_lora_keys_unet`` names every module of the loaded UNet the way ComfyUI's
LoRA loader does, ``comfy.lora.load_lora`` turns the tensors into ComfyUI's weight adapters) and
added to a clone of the model patcher, so the base weights are never copied or changed and other
LoRAs stack as usual. Unlike ComfyUI's LoRA loader, nothing is silently skipped: a LoRA for another
base model, a module that matches nothing, a shape that does not fit, or a patch the patcher did
not take is an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import comfy.lora

from scdpo.errors import IncompatibleModelError
from scdpo.lora import LoraFile, load_lora

from .comfy_schema import io, ui
from .model_folders import LORAS, SAFETY_MODELS, resolve, safety_lora_choices

# ComfyUI's model-config class (comfy.supported_models) → the ss_base_model_version of LoRAs for it.
# Exact class names: SSD-1B / Vega / KOALA subclass SDXL but have other blocks.
COMFY_MODEL_VERSIONS = {"SD15": "sd_v1", "SDXL": "sdxl_base_v1-0"}


@dataclass
class SafetyPatchReport:
    """What :func:`apply_safety_lora` did. ``modules_applied == modules_in_file`` on success."""

    lora: str
    base_model_version: str | None
    modules_in_file: int
    modules_applied: int
    rank: int
    strength: float

    def summary(self) -> str:
        return (f"{self.lora}: {self.modules_applied}/{self.modules_in_file} modules patched "
                f"(base {self.base_model_version or 'unknown'}, rank {self.rank}, strength {self.strength:g})")


def model_base_version(model) -> tuple[str | None, str]:
    """(ss_base_model_version of ``model`` or None if unknown, ComfyUI's name for its type)."""
    config = getattr(model.model, "model_config", None)
    type_name = type(config).__name__
    declared = getattr(config, "scdpo_base_model_version", None)  # models outside ComfyUI's table
    return declared or COMFY_MODEL_VERSIONS.get(type_name), type_name


def _check_base_version(model, lora: LoraFile) -> None:
    version, type_name = model_base_version(model)
    wanted = lora.base_model_version
    if wanted and wanted != version:
        raise IncompatibleModelError(
            f"{lora.describe()} was trained for base model {wanted}, but the MODEL input is ComfyUI's {type_name} "
            f"({version or 'a type SC-DPO safety LoRAs do not support'}); load a checkpoint of that base model or "
            f"pick a safety LoRA trained for {version or 'SD1.5 or SDXL'}"
        )


def _check_shapes(lora: LoraFile, to_load: dict[str, str], model_weights: dict) -> None:
    """ComfyUI adds ``up.flatten(1) @ down.flatten(1)`` reshaped to the weight: the sizes must fit
    (a misfit is only logged by ComfyUI at sampling time and the module left unpatched)."""
    for name, key in to_load.items():
        weight = model_weights.get(key)
        up = lora.tensors[f"{name}.lora_up.weight"]
        down = lora.tensors[f"{name}.lora_down.weight"]
        if weight is None or up.shape[0] != weight.shape[0] or math.prod(down.shape[1:]) != math.prod(weight.shape[1:]):
            got = "absent" if weight is None else tuple(weight.shape)
            raise IncompatibleModelError(
                f"{lora.describe()}: module {name} (lora_up {tuple(up.shape)}, lora_down {tuple(down.shape)}) does not "
                f"fit the model's {key} ({got}); the LoRA was trained on another base model"
            )


def apply_safety_lora(model, lora: LoraFile, strength: float = 1.0):
    """Return ``(patched clone of model, SafetyPatchReport)``; ``model`` (a ComfyUI ModelPatcher) is unchanged.

    Raises :class:`IncompatibleModelError` unless every module of the LoRA is patched.
    """
    _check_base_version(model, lora)
    text = [n for n in lora.module_names if not n.startswith("lora_unet_")]
    if text:
        raise IncompatibleModelError(
            f"{lora.describe()} has {len(text)} text-encoder modules (e.g. {text[0]}); SC-DPO safety LoRAs patch the "
            "UNet only: use a UNet-only safety LoRA (or ComfyUI's LoraLoader for general LoRAs)"
        )
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    names = lora.unet_module_names
    unmatched = [n for n in names if n not in key_map]
    if unmatched:
        raise IncompatibleModelError(
            f"{len(unmatched)} of {len(names)} modules of {lora.describe()} match no weight of this model "
            f"(e.g. {', '.join(unmatched[:3])}); the LoRA belongs to another base model: use one trained on this base"
        )
    to_load = {n: key_map[n] for n in names}
    _check_shapes(lora, to_load, model.model.state_dict())
    patches = comfy.lora.load_lora(lora.tensors, to_load)
    not_built = sorted(set(to_load.values()) - set(patches))
    if not_built:
        raise IncompatibleModelError(f"ComfyUI could not build a patch for {len(not_built)} modules of "
                                     f"{lora.describe()} (e.g. {not_built[0]}); re-export the LoRA in kohya format")
    patched = model.clone()
    applied = set(patched.add_patches(patches, strength))
    skipped = sorted(set(patches) - applied)
    if skipped:
        raise IncompatibleModelError(f"the model took only {len(applied)} of {len(patches)} patches of "
                                     f"{lora.describe()} (e.g. {skipped[0]} was refused); use a LoRA for this base model")
    version, _ = model_base_version(model)
    name = lora.path.name if lora.path else "LoRA"
    return patched, SafetyPatchReport(name, lora.base_model_version or version, len(names), len(applied), lora.rank,
                                      float(strength))


class SafeUNet(io.ComfyNode):
    """MODEL → MODEL with a safety LoRA patched in (ComfyUI's non-destructive patching)."""

    NODE_ID = "SCDPOSafeUNet"
    DISPLAY_NAME = "SC-DPO Safe UNet"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.NODE_ID,
            display_name=cls.DISPLAY_NAME,
            category="SC-DPO safety",
            description="Applies an SC-DPO safety LoRA to the UNet. Every module of the LoRA must match the model: "
                        "a LoRA for another base model is an error, never a silent no-op.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (from a checkpoint loader)."),
                io.Combo.Input("lora_name", options=safety_lora_choices(),
                               tooltip="Safety LoRA from models/safety_models/ (listed first) or models/loras/."),
                io.Float.Input("strength", default=1.0, min=-4.0, max=4.0, step=0.05,
                               tooltip="LoRA strength; 1.0 is what it was trained at."),
            ],
            outputs=[io.Model.Output(display_name="MODEL")],
        )

    @classmethod
    def execute(cls, model, lora_name: str, strength: float):
        lora = load_lora(resolve(lora_name, (SAFETY_MODELS, LORAS)))
        patched, report = apply_safety_lora(model, lora, strength)
        return io.NodeOutput(patched, ui=ui.PreviewText(report.summary()))
