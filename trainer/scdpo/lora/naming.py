"""kohya LoRA names from diffusers module paths, and which UNet modules a LoRA targets.

The kohya rule every host understands (ComfyUI, A1111/Forge, diffusers' ``load_lora_weights``):
a UNet module at diffusers path ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``
is named ``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q``; its tensors
are ``<name>.lora_down.weight`` ``[r, in(, kh, kw)]``, ``<name>.lora_up.weight``
``[out, r(, 1, 1)]`` and ``<name>.alpha`` (scalar). A host adds
``scale * alpha / r * up @ down`` to the module's weight.

The rule is not invertible on its own (module names contain ``_``), so names are mapped back by
building the table of every LoRA-able module of the UNet at hand (:func:`kohya_module_table`).
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import torch

KOHYA_UNET_PREFIX = "lora_unet_"
# The attention projections of every transformer block: the modules that every host maps on
# SD1.x and SDXL (ComfyUI and A1111 apply 128/128 of them on SD1.5; checked in the real hosts).
DEFAULT_TARGET_MODULES: list[str] = ["to_q", "to_k", "to_v", "to_out.0"]

_LORA_ABLE = (torch.nn.Linear, torch.nn.Conv2d)


def kohya_name(module_path: str) -> str:
    """diffusers module path (``a.b.0.c``) → kohya LoRA module name (``lora_unet_a_b_0_c``)."""
    return KOHYA_UNET_PREFIX + module_path.replace(".", "_")


def _is_peft_layer(module: torch.nn.Module) -> bool:
    return hasattr(module, "base_layer") and hasattr(module, "lora_A")


def _strip_wrapper_prefix(path: str) -> str:
    # a UNet wrapped by peft.get_peft_model names its modules base_model.model.<path>
    return path[len("base_model.model."):] if path.startswith("base_model.model.") else path


def lora_able_modules(unet: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    """Yield ``(diffusers path, base module)`` for every Linear / Conv2d of the UNet.

    A module that already carries peft adapters is reported once, as its base layer; the peft
    internals (``base_layer``, ``lora_A.<name>``...) are skipped.
    """
    skip_prefixes: list[str] = []
    for path, module in unet.named_modules():
        if any(path.startswith(p) for p in skip_prefixes):
            continue
        if _is_peft_layer(module):
            skip_prefixes.append(path + ".")
            base = module.get_base_layer() if hasattr(module, "get_base_layer") else module.base_layer
            if isinstance(base, _LORA_ABLE):
                yield _strip_wrapper_prefix(path), base
            continue
        if isinstance(module, _LORA_ABLE):
            yield _strip_wrapper_prefix(path), module


def matches_target(module_path: str, target_modules: Iterable[str]) -> bool:
    """peft's rule: the path equals a target or ends with ``.<target>``."""
    return any(module_path == t or module_path.endswith("." + t) for t in target_modules)


def kohya_module_table(unet: torch.nn.Module) -> dict[str, tuple[str, torch.nn.Module]]:
    """kohya name → (diffusers path, module) for every LoRA-able module of ``unet``."""
    return {kohya_name(path): (path, module) for path, module in lora_able_modules(unet)}


def kohya_names_for_unet(unet: torch.nn.Module, target_modules: Sequence[str] = DEFAULT_TARGET_MODULES) -> set[str]:
    """The kohya names a LoRA trained on ``target_modules`` of this UNet must contain (coverage check)."""
    return {kohya_name(path) for path, _ in lora_able_modules(unet) if matches_target(path, target_modules)}


def split_kohya_key(key: str) -> tuple[str, str]:
    """``lora_unet_x.lora_down.weight`` → (``lora_unet_x``, ``lora_down.weight``)."""
    name, _, part = key.partition(".")
    return name, part
