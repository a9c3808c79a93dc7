"""Training-memory plan for SC-DPO LoRA training on SD 1.x / SDXL, and a CPU measurement of it.

The plan (see docs/training.md#memory-plan-estimate): fp16/bf16 base UNet, LoRA weights + AdamW states in
fp32, gradient checkpointing, SDPA attention, text embeddings and VAE latents cached before
training (text encoders and VAE not resident while training), one preference pair per micro-batch
(winner + loser = 2 latents through one batched forward; the reference is the same UNet with the
adapter disabled, run under ``no_grad``), gradient accumulation for larger effective batches.

``scdpo lora train`` applies all of it with ``--gradient-checkpointing --batch-size 1 --grad-accum N``
(input caching is its default, :mod:`scdpo.dpo.inputs`); with ``--no-cache-inputs`` it keeps
the encoders resident and encodes every step, which ``estimate_training_memory(...,
cached_inputs=False)`` accounts for (without the VAE encoder's activations).
``tests/benchmarks/bench_sd_train_memory.py`` measures that difference for the real command on CPU.

:func:`estimate_training_memory` adds the terms up from parameter counts of the real
architectures (built weightless on the meta device) and an activation term per latent pixel;
:func:`measure_training_step` runs one real step of that configuration on CPU at a reduced
resolution and reports the peak resident memory above the resident weights.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional

import torch

GIB = 1024**3


@lru_cache(maxsize=4)
def parameter_counts(family: str) -> dict[str, int]:
    """Parameter counts of the real ``family`` components (weightless models on the meta device)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from .configs import read_config

    counts = {}
    with torch.device("meta"):
        counts["unet"] = sum(p.numel() for p in UNet2DConditionModel.from_config(read_config(family, "unet")).parameters())
        counts["vae"] = sum(p.numel() for p in AutoencoderKL.from_config(read_config(family, "vae")).parameters())
        counts["text_encoder"] = sum(p.numel() for p in CLIPTextModel(CLIPTextConfig(**read_config(family, "text_encoder"))).parameters())
        if family == "sdxl":
            te2 = CLIPTextModelWithProjection(CLIPTextConfig(**read_config(family, "text_encoder_2")))
            counts["text_encoder_2"] = sum(p.numel() for p in te2.parameters())
    return counts


def lora_parameter_count(family: str, rank: int, target_modules=None) -> tuple[int, int]:
    """(LoRA parameters, adapted modules) for rank ``rank`` on ``target_modules`` of the family's UNet."""
    from ..lora.convert import _meta_unet
    from ..lora.naming import DEFAULT_TARGET_MODULES, lora_able_modules, matches_target
    from .configs import FAMILY_VERSIONS

    targets = target_modules or DEFAULT_TARGET_MODULES
    n = modules = 0
    for path, m in lora_able_modules(_meta_unet(FAMILY_VERSIONS[family])):
        if matches_target(path, targets):
            modules += 1
            if isinstance(m, torch.nn.Linear):
                n += rank * (m.in_features + m.out_features)
            else:
                n += rank * (m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels)
    return n, modules


def activation_elements(family: str, resolution: int, batch: int = 2) -> dict[str, int]:
    """Activation element counts of one policy forward with gradient checkpointing, counted by
    running the real UNet on the meta device (no memory, no compute) with hooks.

    ``stored_checkpoint_inputs``: inputs of every checkpointed block (diffusers checkpoints each
    ``ResnetBlock2D`` and ``Transformer2DModel``), kept until backward;
    ``non_checkpointed_outputs``: outputs of the layers between them (conv_in, samplers, norms...);
    ``largest_block_recompute``: the outputs of every layer inside the largest block, recomputed in
    backward one block at a time (SDPA never materialises the attention matrix). ``batch`` = 2:
    one preference pair (winner + loser).
    """
    from diffusers import UNet2DConditionModel
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    from .configs import read_config, unet_config

    cfg = unet_config(family)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(cfg)
    counts = {"stored_checkpoint_inputs": 0, "non_checkpointed_outputs": 0}
    block_work: dict[int, int] = {}
    current: list = [None]

    def enter(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        counts["stored_checkpoint_inputs"] += x.numel()
        current[0] = module
        block_work[id(module)] = 0

    def leave(module, args, out):
        current[0] = None

    def leaf(module, args, out):
        if isinstance(out, torch.Tensor):
            if current[0] is not None:
                block_work[id(current[0])] += out.numel()
            else:
                counts["non_checkpointed_outputs"] += out.numel()

    handles = []
    for m in unet.modules():
        if isinstance(m, (ResnetBlock2D, Transformer2DModel)):
            handles.append(m.register_forward_pre_hook(enter, with_kwargs=True))
            handles.append(m.register_forward_hook(leave))
        elif not any(True for _ in m.children()):
            handles.append(m.register_forward_hook(leaf))
    h = resolution // 8
    context = cfg["cross_attention_dim"]
    kwargs = {}
    if cfg.get("addition_embed_type") == "text_time":
        pooled = read_config(family, "text_encoder_2")["projection_dim"]
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.zeros(batch, pooled, device="meta"),
                                       "time_ids": torch.zeros(batch, 6, device="meta")}
    with torch.no_grad():
        unet(torch.zeros(batch, cfg["in_channels"], h, h, device="meta"), torch.zeros(batch, device="meta"),
             encoder_hidden_states=torch.zeros(batch, 77, context, device="meta"), **kwargs)
    for handle in handles:
        handle.remove()
    counts["largest_block_recompute"] = max(block_work.values())
    return counts


@dataclass
class MemoryTerm:
    name: str
    count: int  # parameters / elements
    bytes_each: float
    note: str = ""

    @property
    def bytes(self) -> float:
        return self.count * self.bytes_each


@dataclass
class MemoryPlan:
    family: str
    resolution: int
    rank: int
    terms: list[MemoryTerm] = field(default_factory=list)

    @property
    def total_bytes(self) -> float:
        return sum(t.bytes for t in self.terms)

    def table(self) -> str:
        rows = ["| term | count | bytes each | GiB |", "| --- | ---: | ---: | ---: |"]
        for t in self.terms:
            rows.append(f"| {t.name}{' (' + t.note + ')' if t.note else ''} | {t.count:,} | {t.bytes_each:g} | {t.bytes / GIB:.2f} |")
        rows.append(f"| **total** | | | **{self.total_bytes / GIB:.2f}** |")
        return "\n".join(rows)


def estimate_training_memory(
    family: str, resolution: int, rank: int = 16, target_modules=None, base_bytes: int = 2,
    optimizer: str = "adamw", cached_inputs: bool = True,
) -> MemoryPlan:
    """Analytical GPU-memory estimate of one SC-DPO training step (terms with their counts)."""
    counts = parameter_counts(family)
    n_lora, n_modules = lora_parameter_count(family, rank, target_modules)
    plan = MemoryPlan(family, resolution, rank)
    plan.terms.append(MemoryTerm("UNet weights", counts["unet"], base_bytes, "fp16/bf16"))
    if not cached_inputs:
        for name in ("text_encoder", "text_encoder_2"):
            if name in counts:
                plan.terms.append(MemoryTerm(name.replace("_", " ") + " weights", counts[name], base_bytes))
        plan.terms.append(MemoryTerm("VAE weights", counts["vae"], 4 if family == "sdxl" else base_bytes))
    plan.terms.append(MemoryTerm("LoRA weights", n_lora, 4, f"fp32, rank {rank}, {n_modules} modules"))
    plan.terms.append(MemoryTerm("LoRA gradients", n_lora, 4, "fp32"))
    opt_bytes = {"adamw": 8, "adamw8bit": 2}[optimizer]
    plan.terms.append(MemoryTerm("optimizer states", n_lora, opt_bytes, "AdamW fp32 m,v" if opt_bytes == 8 else "8-bit AdamW"))
    act = activation_elements(family, resolution)
    plan.terms.append(MemoryTerm("activations: checkpointed block inputs", act["stored_checkpoint_inputs"], base_bytes))
    plan.terms.append(MemoryTerm("activations: layers between blocks", act["non_checkpointed_outputs"], base_bytes))
    plan.terms.append(MemoryTerm("activations: largest block recomputed + its gradients", 2 * act["largest_block_recompute"],
                                 base_bytes, "upper bound"))
    return plan


# ---- measurement on CPU -----------------------------------------------------------------------
def _rss_bytes(field_name: str = "VmRSS") -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field_name} not in /proc/self/status (Linux only)")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM to the current RSS


def _random_unet(family: str, dtype: torch.dtype, config: Optional[dict] = None):
    """The family's full-size UNet (or one of ``config``) with random weights, built without an fp32 copy."""
    from diffusers import UNet2DConditionModel

    from .configs import unet_config

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config or unet_config(family))
    unet = unet.to_empty(device="cpu").to(dtype)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_((torch.randn(p.shape, generator=g) * 0.02).to(dtype)) if p.ndim > 1 else p.zero_()
    return unet.requires_grad_(False)


def measure_training_step(family: str, resolution: int, rank: int = 16, dtype: torch.dtype = torch.bfloat16,
                          gradient_checkpointing: bool = True, steps: int = 2) -> dict:
    """One SC-DPO step (as planned above) on CPU; peak resident bytes above the loaded weights."""
    from peft import LoraConfig

    from ..dpo.loss import sc_dpo_loss
    from ..dpo.runtime import release_freed_memory
    from ..lora.naming import DEFAULT_TARGET_MODULES
    from .configs import read_config

    torch.manual_seed(0)
    unet = _random_unet(family, dtype)
    unet.set_attn_processor(__import__("diffusers").models.attention_processor.AttnProcessor2_0())  # SDPA
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=DEFAULT_TARGET_MODULES, init_lora_weights="gaussian"))
    for n, p in unet.named_parameters():
        if p.requires_grad:
            p.data = p.data.float()  # LoRA weights in fp32
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=1e-5)
    h = resolution // 8
    te = [read_config(family, "text_encoder")["hidden_size"]]
    if family == "sdxl":
        te.append(read_config(family, "text_encoder_2")["hidden_size"])
    # cached inputs: winner+loser latents, their text embeddings (+ SDXL pooled / time ids)
    latents = torch.randn(2, 4, h, h, dtype=dtype)
    cond = {"encoder_hidden_states": torch.randn(2, 77, sum(te), dtype=dtype)}
    if family == "sdxl":
        cond["added_cond_kwargs"] = {"text_embeds": torch.randn(2, te[-1], dtype=dtype),
                                     "time_ids": torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]] * 2, dtype=dtype)}
    release_freed_memory()
    resident = _rss_bytes()
    peaks, seconds = [], []
    for _ in range(steps):
        release_freed_memory()
        _reset_peak()
        t0 = time.time()
        noise = torch.randn_like(latents[:1]).repeat(2, 1, 1, 1)
        t = torch.tensor([500, 500])
        noisy = latents + noise  # the scheduler's scaling does not change memory
        with torch.no_grad():
            unet.disable_adapters()
            ref = (unet(noisy, t, **cond).sample.float() - noise.float()).pow(2).mean(dim=(1, 2, 3))
            unet.enable_adapters()
        err = (unet(noisy, t, **cond).sample.float() - noise.float()).pow(2).mean(dim=(1, 2, 3))
        loss, _ = sc_dpo_loss(err[:1], err[1:], ref[:1], ref[1:], torch.tensor([-1.0]), torch.tensor([1.0]),
                              beta=2500.0, lam=1.0, gamma=1.0)
        loss.mean().backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        seconds.append(time.time() - t0)
        peaks.append(_rss_bytes("VmHWM") - resident)
    weights = sum(p.numel() * p.element_size() for p in unet.parameters())
    return {
        "family": family, "resolution": resolution, "latent_pixels": h * h, "rank": rank,
        "dtype": str(dtype).replace("torch.", ""), "gradient_checkpointing": gradient_checkpointing,
        "unet_weight_bytes": weights, "resident_after_load_bytes": resident,
        "step_peak_above_resident_bytes": max(peaks), "peaks": peaks, "seconds_per_step": seconds,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }


if __name__ == "__main__":  # pragma: no cover - maintenance tool
    # python -m scdpo.sd.memory plan FAMILY RESOLUTION [RANK]      -> markdown table
    # MALLOC_MMAP_THRESHOLD_=65536 python -m scdpo.sd.memory measure FAMILY RESOLUTION [RANK] -> JSON line
    action, fam, res = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rank = int(sys.argv[4]) if len(sys.argv) > 4 else 16
    if action == "plan":
        print(estimate_training_memory(fam, res, rank).table())
    else:
        print(json.dumps(measure_training_step(fam, res, rank)))
