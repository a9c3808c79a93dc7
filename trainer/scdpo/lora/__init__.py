"""Safety LoRA files in the kohya format that ComfyUI, A1111/Forge and diffusers load.

Public API (see the submodules for details):

* :data:`DEFAULT_TARGET_MODULES`, :func:`kohya_name`, :func:`kohya_names_for_unet` (naming);
* :class:`LoraFile`, :func:`save_lora`, :func:`load_lora` (files);
* :func:`peft_unet_to_kohya`, :func:`apply_lora`, :func:`remove_lora`, :func:`check_compatible`
  (peft adapters ↔ kohya tensors);
* :func:`kohya_to_diffusers_layout`, :func:`peft_layout_to_kohya` (layout conversion).
"""

from .convert import kohya_to_diffusers_layout, peft_layout_to_kohya
from .files import LoraFile, load_lora, save_lora
from .naming import DEFAULT_TARGET_MODULES, kohya_name, kohya_names_for_unet
from .peft_bridge import apply_lora, check_compatible, lora_coverage, peft_unet_to_kohya, remove_lora

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "LoraFile",
    "apply_lora",
    "check_compatible",
    "kohya_name",
    "kohya_names_for_unet",
    "kohya_to_diffusers_layout",
    "load_lora",
    "lora_coverage",
    "peft_layout_to_kohya",
    "peft_unet_to_kohya",
    "remove_lora",
    "save_lora",
]
