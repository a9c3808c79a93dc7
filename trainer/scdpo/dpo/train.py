"""Training a safety LoRA with SC-DPO (or Diffusion-DPO / a SafetyDPO expert: same loop).

Read top to bottom: config → accelerator → model + LoRA → data → optimiser + schedule →
(resume) → loop → checkpoint → export. Every random draw of micro-batch ``k`` on process ``r``
(which pairs, prompt dropout, ε, t) is a pure function of ``(seed, k, r)`` and the learning rate
a pure function of the step, so resuming from the checkpoint of step ``s`` (LoRA + optimiser +
LR scheduler + RNG + data position) replays steps ``s+1..N`` exactly: a run killed with ``-9``
and restarted with the same command ends with the same LoRA as an uninterrupted run.

Outputs in ``cfg.out``: ``<name>.safetensors`` (kohya LoRA), ``<name>.config.toml`` (resolved
config), ``logs/<name>/`` (TensorBoard), and while training ``<name>.state.safetensors``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from pathlib import Path
from typing import Any, Optional

import torch

from ..checkpointing import (json_safe, load_training_checkpoint, optimizer_from_tensors, rng_state,
                             save_training_checkpoint, set_rng_state)
from ..errors import ScdpoError
from ..fileio import ensure_writable_dir
from ..lora import load_lora, peft_unet_to_kohya, remove_lora, save_lora
from .config import TOY_ORACLE_DATA, TrainConfig, save_train_config
from .inputs import encoded_inputs, encoders_parked, pair_texts
from .pairs import PairOrder, collate_pairs, load_pair_dataset, select_pairs
from .step import (TRAIN_ADAPTER, attach_training_lora, disabled_adapter_reference, dpo_batch_loss,
                   lora_named_parameters, unet_call)

log = logging.getLogger(__name__)
STATE_KIND = "dpo_train_state"
# Options that may change between a run and its resume without changing the trajectory.
_RESUME_FREE = {"out", "name", "resume", "checkpoint_every", "log_every", "cpu", "skip_bad"}
_LOG_KEYS = ("loss", "implicit_accuracy", "margin_accuracy", "reward_margin", "safety_margin",
             "focus_weight_min", "focus_weight_max", "focus_weight_std")


def output_paths(cfg: TrainConfig) -> dict[str, Path]:
    out = Path(cfg.out)
    return {
        "lora": out / f"{cfg.name}.safetensors",
        "state": out / f"{cfg.name}.state.safetensors",
        "inputs": out / f"{cfg.name}.inputs.safetensors",
        "config": out / f"{cfg.name}.config.toml",
        "logs": out / "logs" / cfg.name,
    }


def resolve_mixed_precision(cfg: TrainConfig) -> str:
    """``auto`` → bf16 (or fp16 without bf16 support) on CUDA, ``no`` elsewhere."""
    cuda = torch.cuda.is_available() and not cfg.cpu
    if cfg.mixed_precision == "auto":
        if not cuda:
            return "no"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if cfg.mixed_precision == "fp16" and not cuda:
        raise ScdpoError("mixed_precision fp16 needs a CUDA GPU; use --mixed-precision no (or auto) on CPU")
    return cfg.mixed_precision


def _micro_generator(seed: int, micro_step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + micro_step) * 131 + rank)


def _build_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ScdpoError("--optimizer adamw8bit needs bitsandbytes (pip install bitsandbytes, CUDA only); "
                             "or use --optimizer adamw") from None
        return bnb.optim.AdamW8bit(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _check_resumable(saved: dict[str, Any], cfg: TrainConfig, state_path: Path, world_size: int,
                     saved_world: int) -> None:
    free = set(_RESUME_FREE) | ({"steps"} if cfg.lr_schedule == "constant" else set())
    now = json_safe(cfg.to_dict())
    for key, value in now.items():
        if key not in free and key in saved and saved[key] != value:
            raise ScdpoError(
                f"{state_path} was written with {key}={saved[key]!r}, not {value!r}; rerun with the same options "
                "to resume, pass --no-resume to start over, or delete the file"
            )
    if saved_world != world_size:
        raise ScdpoError(f"{state_path} was written by {saved_world} processes, not {world_size}; resume with the "
                         "same number of processes or pass --no-resume")


class _Ema:
    """Exponential moving averages of logged scalars (part of the checkpoint, so summaries resume too)."""

    def __init__(self, decay: float = 0.95, values: Optional[dict[str, float]] = None):
        self.decay, self.values = decay, dict(values or {})

    def update(self, scalars: dict[str, float]) -> None:
        for k, v in scalars.items():
            self.values[k] = v if k not in self.values else self.decay * self.values[k] + (1 - self.decay) * v


def _training_metadata(cfg: TrainConfig, model, summary: dict[str, Any], started: float) -> dict[str, str]:
    cost_model = cfg.cost_model or ("toy-oracle (rendered ground truth)" if cfg.data == TOY_ORACLE_DATA else "")
    if not cost_model and cfg.data != TOY_ORACLE_DATA:
        info = Path(cfg.data) / "dataset.json"
        if info.is_file():
            with contextlib.suppress(OSError, ValueError, AttributeError):
                cost_model = str(json.loads(info.read_text(encoding="utf-8")).get("cost_model", ""))
    comment = (f"{cfg.method} safety LoRA: {summary['steps']} steps on {summary['pairs']} pairs; "
               f"final loss {summary['loss_ema']:.4f}, implicit accuracy {summary['implicit_accuracy_ema']:.2f}")
    meta: dict[str, Any] = {
        "ss_base_model_version": model.base_model_version,
        "ss_sd_model_name": getattr(model, "model_id", cfg.base),
        "ss_output_name": cfg.name,
        "ss_training_comment": comment,
        "ss_training_started_at": f"{started:.0f}",
        "ss_training_finished_at": f"{time.time():.0f}",
        "ss_steps": str(summary["steps"]),
        "ss_max_train_steps": str(cfg.steps),
        "ss_learning_rate": str(cfg.lr),
        "ss_unet_lr": str(cfg.lr),
        "ss_lr_scheduler": cfg.lr_schedule,
        "ss_lr_warmup_steps": str(cfg.warmup_steps),
        "ss_batch_size_per_device": str(cfg.batch_size),
        "ss_total_batch_size": str(summary["total_batch_size"]),
        "ss_gradient_accumulation_steps": str(cfg.grad_accum),
        "ss_num_train_images": str(2 * summary["pairs"]),
        "ss_mixed_precision": summary["mixed_precision"],
        "ss_gradient_checkpointing": str(cfg.gradient_checkpointing),
        "ss_optimizer": cfg.optimizer,
        "ss_seed": str(cfg.seed),
        "ss_network_args": json.dumps({"target_modules": cfg.lora_target_modules()}),
        "ss_network_dropout": "0",
        "scdpo_method": cfg.method,
        "scdpo_beta": str(cfg.beta),
        "scdpo_lambda": str(cfg.lam),
        "scdpo_gamma": str(cfg.gamma),
        "scdpo_cost_model": cost_model,
        "scdpo_dataset": cfg.data,
        "scdpo_category": ",".join(cfg.categories),
        "scdpo_clean_pairs": str(cfg.clean_pairs),
        "scdpo_init_lora": cfg.init_lora,  # a second round: ss_steps counts this round's steps only
        "scdpo_training_summary": json.dumps(summary, sort_keys=True),
        "scdpo_train_config": json.dumps(cfg.to_dict(), sort_keys=True),
    }
    return meta


def train_lora(config: TrainConfig, model=None, dataset=None, *, progress: bool = True,
               stop_after: Optional[int] = None, keep_adapter: bool = False) -> Path:
    """Train a safety LoRA and write it (kohya format) to ``<out>/<name>.safetensors``; returns its path.

    ``model``: a :class:`~scdpo.pipeline.TextToImageModel` (default: ``load_base_model(config.base)``);
    its UNet gets a temporary training adapter (peft adapter ``scdpo_train``) that is removed
    again before returning, so the same in-memory model can train several LoRAs; with
    ``keep_adapter=True`` the trained adapter stays attached and active (frozen) instead. ``dataset``: a pair dataset (default: from
    ``config.data``). ``stop_after``: stop after this many optimiser steps of this call, leaving
    only the checkpoint (tests use it to simulate an interruption); the state path is returned.
    """
    from accelerate import Accelerator
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    cfg = config.validate()
    mixed_precision = resolve_mixed_precision(cfg)
    accelerator = Accelerator(cpu=cfg.cpu, mixed_precision=mixed_precision)
    rank, world = accelerator.process_index, accelerator.num_processes
    paths = output_paths(cfg)
    if accelerator.is_main_process:
        ensure_writable_dir(paths["lora"].parent)

    owns_model = model is None
    if model is None:
        from ..models import load_base_model

        weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
        model = load_base_model(cfg.base, device=str(accelerator.device), dtype=weight_dtype)
    dataset = dataset if dataset is not None else load_pair_dataset(cfg)
    indices = select_pairs(dataset, cfg.categories, cfg.clean_pairs)
    order = PairOrder(indices, cfg.seed)

    if cfg.cache_inputs:
        with accelerator.main_process_first():
            inputs = encoded_inputs(model, dataset, indices, paths["inputs"], cfg.data,
                                    progress=progress and accelerator.is_main_process)
        make_batch = inputs.batch
        if cfg.concept_augment > 0 and not any(bool(d.abs().sum() > 0) for d in inputs.concept_directions().values()):
            log.warning("concept augmentation has no direction to push along: the selected harmful pairs need a "
                        "safe_prompt (their safe rewrite) or clean / near-miss pairs to compare with")
    else:
        attack = sum(1 for i in indices if pair_texts(dataset, i)[2])
        if attack:
            raise ScdpoError(f"{attack} of the selected pairs are attack pairs (concept_push set), which train on "
                             "a pushed text embedding that only the encoded inputs provide: drop --no-cache-inputs, "
                             "or build the data with --attack-candidates 0")

        def make_batch(idx: list[int]):
            return collate_pairs([dataset[i] for i in idx])

    unet = model.unet
    unet.to(accelerator.device)
    lora_params = attach_training_lora(unet, cfg.rank, cfg.alpha, cfg.lora_target_modules(), seed=cfg.seed)
    if cfg.init_lora:  # a second round: continue from a finished LoRA (a resumed run then loads its checkpoint)
        from ..lora.peft_bridge import load_into_adapter

        try:
            load_into_adapter(unet, load_lora(cfg.init_lora), TRAIN_ADAPTER, cfg.rank, cfg.alpha,
                              model.base_model_version, what=f"--init-lora {cfg.init_lora}")
        except Exception:
            remove_lora(unet, TRAIN_ADAPTER)
            raise
    policy = None
    parked = contextlib.ExitStack()
    try:
        if cfg.cache_inputs:  # the text encoders and VAE are not needed any more
            parked.enter_context(encoders_parked(model, free=owns_model))
        if cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        optimizer = _build_optimizer(cfg, lora_params)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cfg.lr_factor(s))
        start, ema, elapsed, started = 0, _Ema(), 0.0, time.time()
        if cfg.resume and paths["state"].exists():
            tensors, meta = load_training_checkpoint(paths["state"], STATE_KIND)
            _check_resumable(meta.get("config", {}), cfg, paths["state"], world, int(meta.get("world_size", 1)))
            named = lora_named_parameters(unet)
            with torch.no_grad():
                for name, param in named.items():
                    if f"lora.{name}" not in tensors:
                        raise ScdpoError(f"{paths['state']} lacks LoRA tensor {name}; pass --no-resume to start over")
                    param.copy_(tensors[f"lora.{name}"])
            optimizer_from_tensors(optimizer, tensors, meta["optimizer"])
            scheduler.load_state_dict(meta["scheduler"])
            set_rng_state(meta.get("rng", {}))
            if "python_rng" in meta:
                random.setstate((meta["python_rng"][0], tuple(meta["python_rng"][1]), meta["python_rng"][2]))
            start, elapsed = int(meta["step"]), float(meta.get("elapsed_seconds", 0.0))
            if start > cfg.steps:
                raise ScdpoError(f"{paths['state']} is at step {start}, past --steps {cfg.steps}; raise --steps "
                                 "or pass --no-resume to start over")
            started = float(meta.get("started_at", started))
            ema = _Ema(values=meta.get("ema", {}))
            if accelerator.is_main_process:
                log.info("resuming from %s at step %d/%d", paths["state"], start, cfg.steps)
        policy, optimizer = accelerator.prepare(unet, optimizer)
        policy_call, reference_call = unet_call(policy), disabled_adapter_reference(unet)

        def checkpoint(step: int) -> None:
            if accelerator.is_main_process:
                base_opt = getattr(optimizer, "optimizer", optimizer)
                save_training_checkpoint(
                    paths["state"],
                    {f"lora.{n}": p.detach() for n, p in lora_named_parameters(unet).items()},
                    base_opt,
                    {
                        "step": step, "pairs_seen": step * cfg.grad_accum * cfg.batch_size * world,
                        "world_size": world, "config": cfg.to_dict(), "scheduler": json_safe(scheduler.state_dict()),
                        "rng": rng_state(), "python_rng": json_safe(random.getstate()), "ema": ema.values,
                        "elapsed_seconds": elapsed + time.time() - t_resume, "started_at": started,
                    },
                    STATE_KIND,
                )
            accelerator.wait_for_everyone()

        writer = SummaryWriter(str(paths["logs"]), purge_step=start) if accelerator.is_main_process else None
        bar = tqdm(total=cfg.steps, initial=start, desc=f"{cfg.method} {cfg.name}", unit="step",
                   disable=not (progress and accelerator.is_main_process), dynamic_ncols=True)
        t_resume = time.time()
        step = start
        for step in range(start, cfg.steps):
            if stop_after is not None and step - start >= stop_after:
                break
            sums = torch.zeros(len(_LOG_KEYS), dtype=torch.float64)
            for micro in range(cfg.grad_accum):
                micro_step = step * cfg.grad_accum + micro
                batch = make_batch(order.batch(micro_step, rank, world, cfg.batch_size))
                sync = micro == cfg.grad_accum - 1
                with (contextlib.nullcontext() if sync else accelerator.no_sync(policy)), accelerator.autocast():
                    loss, diag = dpo_batch_loss(
                        model, policy_call, reference_call, batch, _micro_generator(cfg.seed, micro_step, rank),
                        cfg.beta, cfg.lam, cfg.gamma, cfg.prompt_dropout, accelerator.device,
                        cfg.concept_augment, cfg.concept_scale,
                        cfg.adversarial_share, cfg.adversarial_steps, cfg.adversarial_budget, cfg.winner_anchor,
                    )
                    accelerator.backward(loss / cfg.grad_accum)
                scal = {"loss": float(loss.detach()), **diag.scalars()}
                sums += torch.tensor([scal[k] for k in _LOG_KEYS], dtype=torch.float64)
            grad_norm = float("nan")
            if cfg.max_grad_norm > 0:
                grad_norm = float(accelerator.clip_grad_norm_(lora_params, cfg.max_grad_norm))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            means = accelerator.reduce((sums / cfg.grad_accum).to(accelerator.device), reduction="mean").cpu()
            scalars = dict(zip(_LOG_KEYS, means.tolist()))
            ema.update(scalars)
            done = step + 1
            if writer is not None and (done % max(1, cfg.log_every) == 0 or done == cfg.steps):
                for k, v in scalars.items():
                    writer.add_scalar(f"train/{k}", v, done)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], done)
                if grad_norm == grad_norm:
                    writer.add_scalar("train/grad_norm", grad_norm, done)
            bar.update(1)
            bar.set_postfix(loss=f"{ema.values['loss']:.4f}", acc=f"{ema.values['implicit_accuracy']:.2f}")
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
                checkpoint(done)
        else:
            step = cfg.steps
        bar.close()
        if writer is not None:
            writer.close()
        if step < cfg.steps:  # stopped early on purpose: leave a checkpoint of where we are
            checkpoint(step)
            return paths["state"]

        summary = {
            "steps": cfg.steps, "pairs": len(indices), "pairs_seen": cfg.steps * cfg.grad_accum * cfg.batch_size * world,
            "total_batch_size": cfg.batch_size * cfg.grad_accum * world, "world_size": world,
            "mixed_precision": mixed_precision, "seconds": round(elapsed + time.time() - t_resume, 1),
            **{f"{k}_ema": round(float(v), 6) for k, v in ema.values.items()},
        }
        if accelerator.is_main_process:
            tensors = peft_unet_to_kohya(unet, TRAIN_ADAPTER)
            save_lora(paths["lora"], tensors, _training_metadata(cfg, model, summary, started))
            save_train_config(cfg, paths["config"], header=f"scdpo train --config {paths['config'].name}\n"
                              f"resolved configuration of {paths['lora'].name} ({cfg.method})")
            for leftover in (paths["state"], paths["inputs"]):
                if leftover.exists():
                    leftover.unlink()
        accelerator.wait_for_everyone()
        return paths["lora"]
    finally:
        if policy is not None:
            accelerator.unwrap_model(policy, keep_fp32_wrapper=False)
        accelerator.free_memory()
        if cfg.gradient_checkpointing and hasattr(unet, "disable_gradient_checkpointing"):
            unet.disable_gradient_checkpointing()
        if not keep_adapter:
            unet.delete_adapters(TRAIN_ADAPTER)
        unet.requires_grad_(False).eval()
        parked.close()


def summary_of(lora_path: str | Path) -> dict[str, Any]:
    """The training summary stored in a LoRA written by :func:`train_lora`."""
    from ..lora import load_lora

    return json.loads(load_lora(lora_path).metadata.get("scdpo_training_summary", "{}"))


__all__ = ["train_lora", "output_paths", "summary_of", "STATE_KIND"]
