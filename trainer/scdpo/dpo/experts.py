"""The SafetyDPO baseline: one Diffusion-DPO LoRA expert per unsafe category, merged into one LoRA.

Experts are :func:`~scdpo.dpo.train.train_lora` runs with a category filter (only that category's
harmful (safe, unsafe) pairs) and ``λ = 0, γ = 0`` (plain Diffusion-DPO). :func:`merge_loras`
combines kohya LoRA files in one of two ways, both represented *exactly* in kohya format.

Notation: expert ``e`` has, per module, ``down_e`` ``[r_e, in]`` (``[r_e, in, kh, kw]`` for convs),
``up_e`` ``[out, r_e]`` and scale ``s_e = alpha_e / r_e``, so its weight delta is
``ΔW_e = s_e · up_e @ down_e`` ``[out, in(·kh·kw)]``.

* ``average``: ``ΔW = (1/E) Σ_e ΔW_e`` (the mean weight delta; a module an expert lacks counts
  as a zero delta).
* ``activation`` ("keep, for each weight, the most active expert", done per output row, i.e. per
  neuron — a selection that stays low-rank): for each module and output row ``o`` the merged
  delta's row is expert ``e*(o)``'s row, ``ΔW[o,:] = ΔW_{e*(o)}[o,:]``, with
  ``e*(o) = argmax_e a_e[o]`` and the activity

  - with calibration data (the default when a model and pairs are at hand): ``a_e[o] = mean_x
    |(ΔW_e x)_o|`` over the module's inputs ``x`` recorded while the *base* UNet (no adapter)
    denoises that expert's category pairs (winner and loser latents, their prompts, random
    shared ε and t; :func:`collect_calibration_inputs`). Linear layers and 1×1 convolutions use
    these inputs; for larger convolution kernels the rule below is used for that module;
  - without calibration data: ``a_e[o] = ‖ΔW_e[o,:]‖₂`` (the row's weight-delta magnitude).

  Ties go to the lower expert index.

The merged file stacks the experts along the rank axis: ``down = cat_e(down_e)`` ``[Σr_e, in]``
and ``up[:, block_e] = c_e ⊙ s_e · up_e`` with ``c_e = 1/E`` (average) or the row mask
``[e*(o) = e]`` (activation); its alpha equals its rank ``Σr_e`` (host scale 1). Hosts computing
``alpha/rank · up @ down`` therefore apply exactly ``ΔW`` above: no SVD truncation, rank ``Σr_e``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch

from ..errors import IncompatibleModelError, InputFileError
from ..lora import LoraFile, load_lora, save_lora
from ..lora.naming import kohya_module_table
from .config import TrainConfig
from .pairs import PairOrder, collate_pairs, load_pair_dataset, select_pairs

log = logging.getLogger(__name__)
MERGE_METHODS = ("average", "activation")
_MAX_TOKENS_PER_MODULE = 1024


def dataset_categories(dataset) -> list[str]:
    """Sorted unsafe categories that have harmful pairs in ``dataset``."""
    from .pairs import _pair_info

    cats = set()
    for i in range(len(dataset)):
        harmful, category = _pair_info(dataset, i)
        if harmful and category:
            cats.add(category)
    return sorted(cats)


def train_safetydpo_experts(config: TrainConfig, categories: Optional[Sequence[str]] = None, model=None,
                            dataset=None, progress: bool = True) -> dict[str, Path]:
    """Train one Diffusion-DPO expert per category (default: every category in the data).

    Each expert is ``config`` with ``categories=[c]``, ``lam=0``, ``gamma=0`` and the name
    ``<name>_expert_<c>``. Returns category → LoRA path.
    """
    from .train import train_lora

    if model is None:
        from ..models import load_base_model

        model = load_base_model(config.base)
    dataset = dataset if dataset is not None else load_pair_dataset(config)
    categories = list(categories) if categories else dataset_categories(dataset)
    if not categories:
        raise InputFileError("the dataset has no harmful pairs with a category; SafetyDPO experts need them")
    out: dict[str, Path] = {}
    for cat in categories:
        cfg = dataclasses.replace(config, categories=[cat], lam=0.0, gamma=0.0, name=f"{config.name}_expert_{cat}")
        out[cat] = train_lora(cfg, model=model, dataset=dataset, progress=progress)
    return out


@torch.no_grad()
def collect_calibration_inputs(model, dataset, categories: Sequence[str], module_names: Sequence[str],
                               pairs_per_category: int = 16, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Inputs of the named UNet modules (kohya names) while the base UNet denoises each category's pairs.

    Returns category → kohya name → ``[N, in]`` float32 CPU (tokens: batch × positions; for a
    1×1 conv, channels at each pixel), at most 1024 random tokens per module. Modules that are
    neither Linear nor 1×1 Conv2d are not recorded.
    """
    table = kohya_module_table(model.unet)
    missing = [n for n in module_names if n not in table]
    if missing:
        raise IncompatibleModelError(f"LoRA modules {missing[:3]} are not in this UNet; pass the base model the "
                                     "experts were trained on")
    out: dict[str, dict[str, torch.Tensor]] = {}
    gen = torch.Generator().manual_seed(seed)
    for cat in categories:
        idx = select_pairs(dataset, [cat])
        order = PairOrder(idx, seed)
        batch = collate_pairs([dataset[order.at(p)] for p in range(min(pairs_per_category, len(idx)))])
        recorded: dict[str, list[torch.Tensor]] = {}
        hooks = []
        for name in module_names:
            module = table[name][1]
            if isinstance(module, torch.nn.Conv2d) and module.kernel_size != (1, 1):
                continue

            def hook(mod, args, _name=name):
                x = args[0].detach().float()
                if x.ndim == 4:  # conv input [N,C,H,W] -> tokens [N·H·W, C]
                    x = x.permute(0, 2, 3, 1)
                recorded.setdefault(_name, []).append(x.reshape(-1, x.shape[-1]).cpu())

            hooks.append(module.register_forward_pre_hook(hook))
        try:
            b = len(batch)
            latents = model.encode_images(torch.cat([batch.winners, batch.losers]).to(model.device))
            h, w = batch.winners.shape[1:3]
            cond = model.conditioning_for_size(model.encode_prompt(batch.prompts), h, w).to(model.device)
            noise = torch.randn((b, *latents.shape[1:]), generator=gen).to(latents.device, latents.dtype)
            t = torch.randint(0, model.noise_scheduler.config.num_train_timesteps, (b,), generator=gen)
            t2 = torch.cat([t, t]).to(latents.device)
            noisy = model.noise_scheduler.add_noise(latents, torch.cat([noise, noise]), t2)
            model.unet(noisy, t2, **cond.cat(cond).unet_kwargs())
        finally:
            for hk in hooks:
                hk.remove()
        per_module = {}
        for name, chunks in recorded.items():
            tokens = torch.cat(chunks)
            if len(tokens) > _MAX_TOKENS_PER_MODULE:
                tokens = tokens[torch.randperm(len(tokens), generator=gen)[:_MAX_TOKENS_PER_MODULE]]
            per_module[name] = tokens
        out[cat] = per_module
    return out


def _delta_rows(lora: LoraFile, name: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    down = lora.tensors[f"{name}.lora_down.weight"].float()
    up = lora.tensors[f"{name}.lora_up.weight"].float()
    scale = lora.alphas[name] / down.shape[0]
    return down, up, scale


def _activity(down, up, scale, inputs: Optional[torch.Tensor]) -> torch.Tensor:
    """``a_e[o]`` ``[out]`` for one expert and module (see module docstring)."""
    up2 = up.reshape(up.shape[0], -1)
    down2 = down.reshape(down.shape[0], -1)
    if inputs is None:
        return (scale * up2 @ down2).norm(dim=1)
    if inputs.ndim != 2 or inputs.shape[1] != down2.shape[1]:
        raise ValueError(f"calibration inputs of shape {tuple(inputs.shape)} do not fit a LoRA down "
                         f"projection of shape {tuple(down.shape)}")
    return (scale * (inputs.float() @ down2.T) @ up2.T).abs().mean(dim=0)


def merge_loras(paths: Sequence[str | Path | LoraFile], method: str = "average",
                calibration: Optional[Mapping[str, Mapping[str, torch.Tensor]]] = None,
                out: Optional[str | Path] = None, metadata: Optional[Mapping[str, str]] = None) -> LoraFile:
    """Merge kohya LoRA experts into one (exact; see the module docstring for the rules).

    ``calibration`` (activation only): category → kohya module name → inputs ``[N, in]`` from
    :func:`collect_calibration_inputs`; each expert's category is its ``scdpo_category``
    metadata. Without it the activation rule uses ``‖ΔW_e[o,:]‖₂``. ``out``: also write the merged
    file there. Returns the merged :class:`LoraFile`.
    """
    if method not in MERGE_METHODS:
        raise ValueError(f"merge method must be one of {MERGE_METHODS}, not {method!r}")
    experts = [p if isinstance(p, LoraFile) else load_lora(p) for p in paths]
    if not experts:
        raise ValueError("merge_loras needs at least one LoRA")
    versions = {e.base_model_version for e in experts}
    if len(versions) != 1:
        raise IncompatibleModelError(f"the LoRAs to merge belong to different base models {sorted(map(str, versions))}; "
                                     "merge only experts trained on one base model")
    cats = [e.metadata.get("scdpo_category", "") for e in experts]
    if method == "activation" and calibration is not None:
        lacking = [str(e.path or i) for i, (e, c) in enumerate(zip(experts, cats)) if c not in calibration]
        if lacking:
            raise ValueError(f"no calibration inputs for the category of {lacking} (categories {cats}); "
                             "pass calibration for every expert's scdpo_category or none")
    n = len(experts)
    names = sorted({name for e in experts for name in e.unet_module_names})
    tensors: dict[str, torch.Tensor] = {}
    chosen = torch.zeros(n)
    for name in names:
        parts = [(_delta_rows(e, name) if f"{name}.lora_down.weight" in e.tensors else None) for e in experts]
        present = [p for p in parts if p is not None]
        out_dim = present[0][1].shape[0]
        if method == "activation":
            act = torch.zeros(n, out_dim)
            for i, part in enumerate(parts):
                if part is not None:
                    inputs = calibration[cats[i]].get(name) if calibration is not None else None
                    act[i] = _activity(*part, inputs)
            winner = act.argmax(dim=0)  # first maximum on ties
            chosen += torch.bincount(winner, minlength=n).float()
        downs, ups = [], []
        for i, part in enumerate(parts):
            if part is None:
                continue
            down, up, scale = part
            coeff = (winner == i).float() if method == "activation" else torch.full((out_dim,), 1.0 / n)
            coeff = coeff.reshape(-1, *([1] * (up.ndim - 1)))
            downs.append(down)
            ups.append(up * scale * coeff)
        down, up = torch.cat(downs, 0), torch.cat(ups, 1)
        tensors[f"{name}.lora_down.weight"] = down.contiguous()
        tensors[f"{name}.lora_up.weight"] = up.contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(float(down.shape[0]))
    base_meta = experts[0].metadata
    meta = {k: v for k, v in base_meta.items() if k.startswith("ss_") and k not in ("ss_network_dim", "ss_network_alpha")}
    meta.update({
        "ss_base_model_version": experts[0].base_model_version or "",
        "ss_training_comment": f"SafetyDPO merge ({method}) of {n} category experts: {', '.join(c or '?' for c in cats)}",
        "scdpo_method": "safetydpo" if method == "activation" else "safetydpo-average",
        "scdpo_merge_method": method,
        "scdpo_merge_calibrated": str(method == "activation" and calibration is not None),
        "scdpo_merged_from": json.dumps([{"file": Path(e.path).name if e.path else None, "category": c}
                                         for e, c in zip(experts, cats)]),
        "scdpo_beta": base_meta.get("scdpo_beta", ""),
        "scdpo_lambda": "0.0",
        "scdpo_gamma": "0.0",
        "scdpo_cost_model": base_meta.get("scdpo_cost_model", ""),
        "scdpo_category": ",".join(c for c in cats if c),
    })
    if method == "activation":
        meta["scdpo_merge_row_share"] = json.dumps({c or str(i): round(float(chosen[i] / chosen.sum()), 4)
                                                   for i, c in enumerate(cats)})
    meta.update(metadata or {})
    if out is not None:
        save_lora(out, tensors, meta)
        return load_lora(out)
    from ..lora.files import network_metadata

    return LoraFile(tensors, network_metadata(tensors, meta), None, "kohya")
