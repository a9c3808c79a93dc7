"""Moving LoRAs between peft adapters on a diffusers UNet and kohya tensors.

Training attaches a peft adapter to the UNet; :func:`peft_unet_to_kohya` exports it under kohya
names. :func:`apply_lora` does the reverse for inference and evaluation: it injects a peft
adapter with the file's per-module ranks / alphas and loads the weights, so the result computes
``W x + scale * alpha / r * up(down(x))``, exactly what ComfyUI / A1111 / diffusers apply.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..errors import IncompatibleModelError
from .convert import lora_config_for
from .files import LoraFile
from .naming import kohya_module_table, kohya_name, lora_able_modules


def _peft_layers(unet: torch.nn.Module, adapter_name: str):
    for path, module in unet.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "base_layer") and adapter_name in module.lora_A:
            yield path, module


def peft_unet_to_kohya(unet: torch.nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The peft adapter ``adapter_name`` of ``unet`` as kohya tensors (weights copied to CPU).

    ``alpha`` is peft's ``lora_alpha`` (times √r for rsLoRA, so that hosts' ``alpha / r`` gives
    the same scale). DoRA and LoRA biases have no kohya LoRA form and are refused.
    """
    out: dict[str, torch.Tensor] = {}
    for path, layer in _peft_layers(unet, adapter_name):
        if getattr(layer, "use_dora", {}).get(adapter_name, False):
            raise ValueError(f"adapter {adapter_name!r} uses DoRA, which kohya LoRA files cannot hold")
        if getattr(layer, "lora_bias", {}).get(adapter_name, False):
            raise ValueError(f"adapter {adapter_name!r} has LoRA biases, which kohya LoRA files cannot hold")
        path = path[len("base_model.model."):] if path.startswith("base_model.model.") else path
        r = layer.r[adapter_name]
        alpha = float(layer.lora_alpha[adapter_name])
        if layer.use_rslora.get(adapter_name, False):
            alpha *= math.sqrt(r)
        name = kohya_name(path)
        out[f"{name}.lora_down.weight"] = layer.lora_A[adapter_name].weight.detach().cpu().contiguous().clone()
        out[f"{name}.lora_up.weight"] = layer.lora_B[adapter_name].weight.detach().cpu().contiguous().clone()
        out[f"{name}.alpha"] = torch.tensor(alpha)
    if not out:
        raise ValueError(f"the UNet has no LoRA adapter named {adapter_name!r}")
    return out


def _expected_shapes(module: torch.nn.Module, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if isinstance(module, torch.nn.Conv2d):
        return (rank, module.in_channels // module.groups, *module.kernel_size), (module.out_channels, rank, 1, 1)
    return (rank, module.in_features), (module.out_features, rank)


def check_compatible(unet: torch.nn.Module, lora: LoraFile, base_model_version: Optional[str] = None) -> dict[str, str]:
    """Raise :class:`IncompatibleModelError` unless every key of ``lora`` fits a module of ``unet``.

    Returns kohya name → diffusers module path.
    """
    if base_model_version and lora.base_model_version and lora.base_model_version != base_model_version:
        raise IncompatibleModelError(
            f"{lora.describe()} was trained for base model {lora.base_model_version}, but the model it is applied "
            f"to is {base_model_version}; use a LoRA trained on this base model or load the matching base"
        )
    text = [n for n in lora.module_names if not n.startswith("lora_unet_")]
    if text:
        raise IncompatibleModelError(
            f"{lora.describe()} has {len(text)} text-encoder modules (e.g. {text[0]}); safety LoRAs are UNet-only "
            "here; remove the lora_te* keys or use a UNet-only LoRA"
        )
    table = kohya_module_table(unet)
    unknown = [n for n in lora.unet_module_names if n not in table]
    if unknown:
        raise IncompatibleModelError(
            f"{len(unknown)} of {len(lora.unet_module_names)} modules of {lora.describe()} match no module of this "
            f"UNet (e.g. {', '.join(unknown[:3])}); the LoRA belongs to another base model "
            f"(its ss_base_model_version is {lora.base_model_version!r}); use a LoRA trained on this base model"
        )
    ranks = lora.ranks
    for name in lora.unet_module_names:
        path, module = table[name]
        want_down, want_up = _expected_shapes(module, ranks[name])
        down = tuple(lora.tensors[f"{name}.lora_down.weight"].shape)
        up = tuple(lora.tensors[f"{name}.lora_up.weight"].shape)
        if down != want_down or up != want_up:
            raise IncompatibleModelError(
                f"{lora.describe()}: module {name} has lora_down {down} / lora_up {up}, but this UNet's {path} needs "
                f"{want_down} / {want_up}; the LoRA belongs to another base model; use one trained on this base"
            )
    return {n: table[n][0] for n in lora.unet_module_names}


@torch.no_grad()
def apply_lora(
    unet: torch.nn.Module,
    lora: LoraFile,
    scale: float = 1.0,
    adapter_name: str = "safety",
    base_model_version: Optional[str] = None,
    trainable: bool = False,
) -> list[str]:
    """Attach ``lora`` to ``unet`` as peft adapter ``adapter_name`` (replacing one of that name)
    and make it the active adapter. ``unet`` may also be a :class:`~scdpo.pipeline.TextToImageModel`,
    whose ``base_model_version`` is then checked against the file's. Returns the module paths.
    ``trainable``: leave the adapter's weights trainable, in fp32 (to resume training from a file);
    otherwise they are frozen, in the base layer's dtype.

    Raises :class:`IncompatibleModelError` if the base model versions differ or if any key does not
    fit a UNet module (name or shape).
    """
    if hasattr(unet, "unet") and hasattr(unet, "base_model_version"):
        base_model_version = base_model_version or unet.base_model_version
        unet = unet.unet
    paths = check_compatible(unet, lora, base_model_version)
    if adapter_name in (getattr(unet, "peft_config", None) or {}):
        unet.delete_adapters(adapter_name)
    from peft import LoraConfig

    ranks, alphas = lora.ranks, lora.alphas
    config = LoraConfig(**lora_config_for({paths[n]: ranks[n] for n in paths}, {paths[n]: alphas[n] for n in paths}))
    if hasattr(unet, "add_adapter"):
        unet.add_adapter(config, adapter_name=adapter_name)
    else:  # a plain nn.Module
        from peft import inject_adapter_in_model

        inject_adapter_in_model(config, unet, adapter_name=adapter_name)
    return _copy_weights(unet, lora, paths, adapter_name, scale, trainable)


def _copy_weights(unet: torch.nn.Module, lora: LoraFile, paths: dict[str, str], adapter_name: str, scale: float,
                  trainable: bool) -> list[str]:
    """Copy ``lora``'s down/up weights into adapter ``adapter_name`` (already attached at ``paths``)."""
    by_path = {p: n for n, p in paths.items()}
    loaded = set()
    for path, layer in _peft_layers(unet, adapter_name):
        path = path[len("base_model.model."):] if path.startswith("base_model.model.") else path
        name = by_path.get(path)
        if name is None:
            continue  # load_into_adapter checks that the module sets are equal
        if trainable:  # train LoRA weights in fp32 even on an fp16/bf16 base (see the memory plan)
            layer.lora_A[adapter_name].float()
            layer.lora_B[adapter_name].float()
        a, b = layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight
        with torch.no_grad():
            a.copy_(lora.tensors[f"{name}.lora_down.weight"].to(a.device, a.dtype))
            b.copy_(lora.tensors[f"{name}.lora_up.weight"].to(b.device, b.dtype))
        layer.set_scale(adapter_name, scale)
        a.requires_grad_(trainable)
        b.requires_grad_(trainable)
        loaded.add(path)
    if loaded != set(by_path):  # peft did not wrap a module we asked for: a bug, never silent
        raise RuntimeError(f"peft did not attach {sorted(set(by_path) - loaded)[:3]}")
    return sorted(loaded)


def load_into_adapter(unet: torch.nn.Module, lora: LoraFile, adapter_name: str, rank: int, alpha: float,
                      base_model_version: Optional[str] = None, what: str = "LoRA") -> None:
    """Overwrite the weights of the attached, trainable adapter ``adapter_name`` (rank ``rank``,
    ``lora_alpha`` ``alpha``) with ``lora``'s, which must cover exactly the same modules with the same
    rank and alpha. Raises :class:`IncompatibleModelError` naming what differs."""
    paths = check_compatible(unet, lora, base_model_version)
    attached = set()
    for path, _ in _peft_layers(unet, adapter_name):
        attached.add(path[len("base_model.model."):] if path.startswith("base_model.model.") else path)
    ranks, alphas = set(lora.ranks.values()), set(lora.alphas.values())
    if set(paths.values()) != attached or ranks != {rank} or alphas != {float(alpha)}:
        raise IncompatibleModelError(
            f"{what} adapts {len(paths)} modules with rank {sorted(ranks)} and alpha {sorted(alphas)}, but this "
            f"training adapter has {len(attached)} modules with rank {rank} and alpha {alpha:g}; pass the "
            "--rank, --alpha and target modules (--target-modules, --train-proj, --train-ff) it was trained with")
    _copy_weights(unet, lora, paths, adapter_name, 1.0, trainable=True)


def remove_lora(unet: torch.nn.Module, adapter_name: str = "safety") -> None:
    """Remove adapter ``adapter_name`` (no-op if absent)."""
    if adapter_name in (getattr(unet, "peft_config", None) or {}):
        unet.delete_adapters(adapter_name)


def lora_coverage(lora: LoraFile, unet: torch.nn.Module, target_modules) -> tuple[int, int, list[str]]:
    """(covered, expected, missing names): how many of the UNet's ``target_modules`` the file covers."""
    from .naming import kohya_names_for_unet

    expected = kohya_names_for_unet(unet, target_modules)
    have = set(lora.unet_module_names)
    return len(expected & have), len(expected), sorted(expected - have)


__all__ = ["peft_unet_to_kohya", "apply_lora", "check_compatible", "remove_lora", "lora_coverage", "lora_able_modules"]
