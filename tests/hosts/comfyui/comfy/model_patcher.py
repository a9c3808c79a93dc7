"""Stand-in for comfy.model_patcher.ModelPatcher: patches are recorded per weight key and only
applied to the weights by patch_model() (ComfyUI does that when the model is loaded to sample)."""

from __future__ import annotations

import torch


def _get_param(module: torch.nn.Module, key: str):
    *path, leaf = key.split(".")
    for part in path:
        module = getattr(module, part)
    return getattr(module, leaf)


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model, self.load_device, self.offload_device = model, load_device, offload_device
        self.size = size
        self.patches: dict[str, list] = {}
        self.backup: dict[str, torch.Tensor] = {}
        self.additional_models: dict[str, list] = {}

    def clone(self):
        n = self.__class__(self.model, self.load_device, self.offload_device, self.size)
        n.patches = {k: list(v) for k, v in self.patches.items()}
        n.additional_models = {k: [m.clone() for m in v] for k, v in self.additional_models.items()}
        return n

    def set_additional_models(self, key: str, models: list):
        """Models ComfyUI loads together with this one when it samples (``prepare_sampling``)."""
        self.additional_models[key] = models

    def get_additional_models_with_key(self, key: str) -> list:
        return self.additional_models.get(key, [])

    def get_nested_additional_models(self) -> list:
        out = []
        for models in self.additional_models.values():
            for m in models:
                out += [m, *m.get_nested_additional_models()]
        return out

    def is_clone(self, other) -> bool:
        return getattr(other, "model", None) is self.model

    def model_state_dict(self, filter_prefix=None):
        sd = self.model.state_dict()
        return {k: v for k, v in sd.items() if filter_prefix is None or k.startswith(filter_prefix)}

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        model_sd = self.model.state_dict()
        taken = set()
        for k in patches:
            key = k if isinstance(k, str) else k[0]
            if key in model_sd:
                taken.add(k)
                self.patches.setdefault(key, []).append((strength_patch, patches[k], strength_model, None, None))
        return list(taken)

    def patch_model(self):
        """Apply the patches to the shared model's weights (backed up); returns the model."""
        with torch.no_grad():
            for key, plist in self.patches.items():
                param = _get_param(self.model, key)
                self.backup.setdefault(key, param.detach().clone())
                weight = param.detach().float()
                for strength, adapter, strength_model, offset, function in plist:
                    if strength_model != 1.0:
                        weight = weight * strength_model
                    weight = adapter.calculate_weight(weight, key, strength, strength_model, offset, function)
                param.copy_(weight.to(param.dtype))
        return self.model

    def unpatch_model(self):
        with torch.no_grad():
            for key, saved in self.backup.items():
                _get_param(self.model, key).copy_(saved)
        self.backup = {}
