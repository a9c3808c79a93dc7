"""Stand-in for comfy.lora: the LoRA key map ComfyUI derives from a model, and kohya tensors ->
weight adapters. Same rules as ComfyUI's for the layouts these tests use:

* every ``diffusion_model.<path>.weight`` of the model's state dict is reachable as
  ``lora_unet_<path with . -> _>`` and as ``diffusion_model.<path>`` (the generic names);
* for LDM UNets, every diffusers name of ``comfy.utils.unet_to_diffusers`` is reachable as
  ``lora_unet_<diffusers path with . -> _>`` (kohya) and as ``[unet.]<path with .processor.>`` (old
  diffusers), pointing at the LDM weight.
"""

from __future__ import annotations

import logging

import torch

import comfy.utils

log = logging.getLogger("comfy.lora")


class LoRAAdapter:
    """``weight += strength * (alpha / rank) * (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)``."""

    name = "lora"

    def __init__(self, loaded_keys, weights):
        self.loaded_keys, self.weights = loaded_keys, weights  # (up, down, alpha, mid, dora_scale, reshape)

    def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                         intermediate_dtype=torch.float32, original_weight=None):
        up, down, alpha = self.weights[0], self.weights[1], self.weights[2]
        scale = alpha / down.shape[0] if alpha is not None else 1.0
        diff = torch.mm(up.to(intermediate_dtype).flatten(1), down.to(intermediate_dtype).flatten(1))
        try:
            return weight + (strength * scale * diff.reshape(weight.shape)).to(weight.dtype)
        except RuntimeError as exc:  # ComfyUI logs and leaves the weight unpatched
            log.error("ERROR lora %s %s", key, exc)
            return weight


def load_lora(lora, to_load, log_missing=True):
    patch_dict, loaded = {}, set()
    for name, target in to_load.items():
        up, down = f"{name}.lora_up.weight", f"{name}.lora_down.weight"
        if up not in lora or down not in lora:
            continue
        alpha = None
        if f"{name}.alpha" in lora:
            alpha = lora[f"{name}.alpha"].item()
            loaded.add(f"{name}.alpha")
        loaded.update({up, down})
        patch_dict[target] = LoRAAdapter({up, down}, (lora[up], lora[down], alpha, None, None, None))
    if log_missing:
        for key in lora.keys():
            if key not in loaded:
                log.warning("lora key not loaded: %s", key)
    return patch_dict


def model_lora_keys_unet(model, key_map={}):  # noqa: B006 - ComfyUI's signature
    for key in model.state_dict().keys():
        if key.startswith("diffusion_model.") and key.endswith(".weight"):
            path = key[len("diffusion_model."):-len(".weight")]
            key_map[f"lora_unet_{path.replace('.', '_')}"] = key
            key_map[key[:-len(".weight")]] = key
    for diffusers_key, ldm_key in comfy.utils.unet_to_diffusers(model.model_config.unet_config).items():
        if not diffusers_key.endswith(".weight"):
            continue
        path = diffusers_key[:-len(".weight")]
        target = f"diffusion_model.{ldm_key}"
        key_map[f"lora_unet_{path.replace('.', '_')}"] = target
        old_diffusers = path.replace(".to_", ".processor.to_")
        if old_diffusers.endswith(".to_out.0"):
            old_diffusers = old_diffusers[:-2]
        key_map[old_diffusers] = target
        key_map[f"unet.{old_diffusers}"] = target
    return key_map
