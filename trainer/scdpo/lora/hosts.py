"""Which hosts apply every key of a kohya LoRA file, and how much of the UNet it covers.

Host rules (each checked against the host's own key-mapping code and in the real hosts with the
host rigs; see docs/formats.md#lora-files):

* **ComfyUI** (a125cd84) maps ``lora_unet_<diffusers path>`` for every weight of its diffusers
  ↔ LDM table (``comfy.utils.unet_to_diffusers``): all 282 SD1.5 / 794 SDXL Linear and Conv2d
  modules.
* **Forge** (2024+ backend) uses ComfyUI's LoRA key map: same as ComfyUI.
* **A1111** 1.10 converts names with regexes (``convert_diffusers_name_to_compvis``): all 282
  SD1.5 modules; on SDXL 791/794 — ``add_embedding.linear_1/2`` have no rule and
  ``up_blocks.0.upsamplers.0.conv`` is sent to the wrong LDM index (the rule assumes
  ``up_blocks.0`` has no attention, as in SD1.5).
* **diffusers**: checked live with the installed diffusers' own kohya converter (on SDXL it folds
  ``add_embedding.linear_1/2`` into one name, so neither loads).

The shipped default targets (attention projections) load everywhere on SD1.5 and SDXL.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import torch

from .files import LoraFile
from .naming import DEFAULT_TARGET_MODULES, matches_target

HOSTS = ("ComfyUI", "Forge", "A1111", "diffusers")


@dataclass
class HostCheck:
    host: str
    applied: int
    total: int
    missing: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def loads_every_key(self) -> bool:
        return self.total > 0 and self.applied == self.total


def _unet_config(base_model_version: str) -> dict:
    if base_model_version == "toy_v1":
        from ..toy.model import UNET_CONFIG

        return dict(UNET_CONFIG)
    from ..sd.configs import family_for_version, unet_config

    return unet_config(family_for_version(base_model_version))


def _a1111_maps(path: str, unet_config: dict) -> bool:
    if path.startswith("add_embedding."):
        return False
    up0_has_attention = "CrossAttn" in unet_config.get("up_block_types", ["UpBlock2D"])[0]
    return not (path == "up_blocks.0.upsamplers.0.conv" and up0_has_attention)


def _diffusers_paths(lora: LoraFile) -> set[str]:
    """Module paths the installed diffusers derives from the file's UNet keys (its own converter)."""
    from diffusers.loaders import StableDiffusionXLLoraLoaderMixin
    from diffusers.utils import convert_unet_state_dict_to_peft

    tensors = {k: v for k, v in lora.tensors.items() if k.startswith("lora_unet_")}
    level = logging.getLogger("diffusers").level
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    try:
        state_dict, _ = StableDiffusionXLLoraLoaderMixin.lora_state_dict(tensors)
    finally:
        logging.getLogger("diffusers").setLevel(level)
    unet_sd = {k[len("unet."):]: v for k, v in state_dict.items() if k.startswith("unet.")}
    return {k.split(".lora_")[0] for k in convert_unet_state_dict_to_peft(unet_sd)}


def host_compatibility(lora: LoraFile, module_paths: Optional[dict[str, str]] = None) -> list[HostCheck]:
    """Per host: how many of the file's UNet modules it applies. ``module_paths`` (kohya name →
    diffusers path) defaults to the table of the file's base model version."""
    from .convert import _meta_unet_table

    names = lora.unet_module_names
    version = lora.base_model_version
    if module_paths is None:
        if version not in ("toy_v1", "sd_v1", "sdxl_base_v1-0"):
            note = f"unknown base model {version!r}: cannot check"
            return [HostCheck(h, 0, len(names), list(names), note) for h in HOSTS]
        table = _meta_unet_table(version)
        module_paths = {n: table[n] for n in names if n in table}
    config = _unet_config(version) if version in ("toy_v1", "sd_v1", "sdxl_base_v1-0") else {}
    unknown = [n for n in names if n not in module_paths]
    checks = []
    for host in HOSTS:
        if host == "diffusers":
            try:
                derived = _diffusers_paths(lora)
                ok = [n for n in names if n in module_paths and module_paths[n] in derived]
                note = ""
            except Exception as exc:  # noqa: BLE001 - any converter failure means "does not load"
                ok, note = [], f"diffusers' converter failed: {exc}"
        elif version == "toy_v1":
            checks.append(HostCheck(host, 0, len(names), [], "toy base model: not a host model"))
            continue
        elif host == "A1111":
            ok, note = [n for n in names if n in module_paths and _a1111_maps(module_paths[n], config)], ""
        else:
            ok, note = [n for n in names if n in module_paths], ""
        if unknown:
            note = (note + "; " if note else "") + f"{len(unknown)} names match no module of {version}"
        checks.append(HostCheck(host, len(ok), len(names), sorted(set(names) - set(ok)), note))
    return checks


def target_coverage(lora: LoraFile) -> tuple[list[str], int, int]:
    """(targets, covered, expected): the module kinds the file trains (last path parts such as
    ``to_q`` or ``to_out.0``) and how many of the base UNet's modules of those kinds it holds."""
    from .convert import _meta_unet_table

    version = lora.base_model_version
    if version not in ("toy_v1", "sd_v1", "sdxl_base_v1-0"):
        return [], 0, 0
    table = _meta_unet_table(version)
    paths = [table[n] for n in lora.unet_module_names if n in table]
    targets = sorted({".".join(p.split(".")[-2:]) if p.split(".")[-1].isdigit() else p.split(".")[-1] for p in paths})
    expected = {n for n, p in table.items() if matches_target(p, targets)}
    return targets, len(expected & set(lora.unet_module_names)), len(expected)


def default_targets_load_everywhere(base_model_version: str) -> bool:
    """True if every host applies a LoRA on :data:`DEFAULT_TARGET_MODULES` of this base model."""
    from .convert import _meta_unet_table

    table = _meta_unet_table(base_model_version)
    tensors = {}
    for name, path in table.items():
        if matches_target(path, DEFAULT_TARGET_MODULES):
            tensors[f"{name}.lora_down.weight"] = torch.zeros(1, 1)
            tensors[f"{name}.lora_up.weight"] = torch.zeros(1, 1)
    lora = LoraFile(tensors, {"ss_base_model_version": base_model_version})
    return all(c.loads_every_key for c in host_compatibility(lora))
