"""Training a safety LoRA with SC-DPO (or Diffusion-DPO / a SafetyDPO expert: same loop).

Read :func:`train_lora` top to bottom: config → accelerator → model → data → LoRA → a
:class:`_TrainingRun` (optimiser + LR schedule) → resume → loop → checkpoint → export. Every
random draw of micro-batch ``k`` on process ``r`` (which pairs, prompt dropout, ε, t) is a pure
function of ``(seed, k, r)`` and the learning rate a pure function of the step, so resuming from
the checkpoint of step ``s`` (LoRA + optimiser + LR scheduler + RNG + data position) replays steps
``s+1..N`` exactly: a run killed with ``-9`` and restarted with the same command ends with the same
LoRA as an uninterrupted run.

Outputs in ``cfg.out``: ``<name>.safetensors`` (kohya LoRA), ``<name>.config.toml`` (resolved
config), ``logs/<name>/`` (TensorBoard), and while training ``<name>.state.safetensors``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..checkpointing import (json_safe, load_training_checkpoint, optimizer_from_tensors, rng_state,
                             save_training_checkpoint, set_rng_state)
from ..errors import ScdpoError
from ..fileio import ensure_writable_dir
from ..lora import load_lora, peft_unet_to_kohya, remove_lora, save_lora
from .config import TOY_ORACLE_DATA, TrainConfig, save_train_config
from .inputs import encoded_inputs, encoders_parked, pair_texts
from .runtime import dtype_name, make_accelerator, release_freed_memory, resolve_base_dtype
from .pairs import PairOrder, collate_pairs, load_pair_dataset, select_pairs
from .step import (TRAIN_ADAPTER, attach_training_lora, disabled_adapter_reference, dpo_batch_loss,
                   lora_named_parameters, unet_call)

log = logging.getLogger(__name__)
STATE_KIND = "dpo_train_state"
# Options that may change between a run and its resume without changing the trajectory.
_RESUME_FREE = {"out", "name", "resume", "checkpoint_every", "log_every", "cpu", "skip_bad", "export_strength"}
_LOG_KEYS = ("loss", "implicit_accuracy", "margin_accuracy", "reward_margin", "safety_margin",
             "focus_weight_min", "focus_weight_max", "focus_weight_std", "erasure_error", "preservation_error")


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
        "scdpo_export_strength": str(cfg.export_strength),  # alpha here = training alpha x this
        "scdpo_init_lora": cfg.init_lora,  # a second round: ss_steps counts this round's steps only
        "scdpo_training_summary": json.dumps(summary, sort_keys=True),
        "scdpo_train_config": json.dumps(cfg.to_dict(), sort_keys=True),
    }
    return meta


def _load_base_model(cfg: TrainConfig, device: torch.device, base_dtype: torch.dtype):
    """The whole base model of ``cfg.base`` on the training device, its UNet in ``base_dtype``."""
    from ..models import load_base_model

    model = load_base_model(cfg.base, device=str(device), dtype=base_dtype)
    if model.dtype != base_dtype:  # the toy loader keeps its stored fp32
        model.unet.to(dtype=base_dtype)
    return model


def _unet_on_encoded_inputs(cfg: TrainConfig, accelerator, base_dtype: torch.dtype, dataset, indices: list[int],
                            inputs_path: Path, progress: bool):
    """An SD model's UNet alone, and its batch source, for training on cached inputs.

    Two phases, so the process never holds the encoders and the UNet at once: the text encoders
    and VAE are loaded (unless ``inputs_path`` already holds these inputs), encode every pair,
    and are released; then the UNet alone is loaded (:func:`~scdpo.sd.loader.load_sd_unet`)."""
    from ..sd.configs import FAMILY_VERSIONS
    from ..sd.detect import inspect_base_model
    from ..sd.loader import load_sd_model, load_sd_unet

    info = inspect_base_model(cfg.base)
    device = accelerator.device
    identity = [info.path.stem, FAMILY_VERSIONS[info.family], str(base_dtype)]
    with accelerator.main_process_first():
        inputs = encoded_inputs(lambda: load_sd_model(cfg.base, device=device, dtype=base_dtype, unet=False),
                                dataset, indices, inputs_path, cfg.data,
                                progress=progress and accelerator.is_main_process, identity=identity)
    _check_directions(cfg, inputs)
    model = load_sd_unet(cfg.base, device=device, dtype=base_dtype)
    release_freed_memory()
    return model, inputs.batch


def _check_directions(cfg: TrainConfig, inputs) -> None:
    if cfg.concept_augment > 0 and not any(bool(d.abs().sum() > 0) for d in inputs.concept_directions().values()):
        log.warning("concept augmentation has no direction to push along: the selected harmful pairs need a "
                    "safe_prompt (their safe rewrite) or clean / near-miss pairs to compare with")


def _batch_source(cfg: TrainConfig, accelerator, model, dataset, indices: list[int], inputs_path: Path,
                  progress: bool) -> Callable[[list[int]], Any]:
    """Pair indices → a training batch: from inputs encoded once before training (``cache_inputs``,
    main process first, the others then read its file) or collated from the dataset every step."""
    if cfg.cache_inputs:
        with accelerator.main_process_first():
            inputs = encoded_inputs(model, dataset, indices, inputs_path, cfg.data,
                                    progress=progress and accelerator.is_main_process)
        _check_directions(cfg, inputs)
        return inputs.batch
    attack = sum(1 for i in indices if pair_texts(dataset, i)[2])
    if attack:
        raise ScdpoError(f"{attack} of the selected pairs are attack pairs (concept_push set), which train on "
                         "a pushed text embedding that only the encoded inputs provide: drop --no-cache-inputs, "
                         "or build the data with --attack-candidates 0")

    def collated(idx: list[int]):
        return collate_pairs([dataset[i] for i in idx])

    return collated


def _attach_lora(cfg: TrainConfig, model) -> list[torch.nn.Parameter]:
    """Add the training adapter to ``model.unet`` (fresh, or ``cfg.init_lora``'s weights for a second
    round; a resumed run then loads its checkpoint over them); returns its trainable parameters."""
    unet = model.unet
    lora_params = attach_training_lora(unet, cfg.rank, cfg.alpha, cfg.lora_target_modules(), seed=cfg.seed)
    if cfg.init_lora:
        from ..lora.peft_bridge import load_into_adapter

        try:
            load_into_adapter(unet, load_lora(cfg.init_lora), TRAIN_ADAPTER, cfg.rank, cfg.alpha,
                              model.base_model_version, what=f"--init-lora {cfg.init_lora}")
        except Exception:
            remove_lora(unet, TRAIN_ADAPTER)
            raise
    return lora_params


class _TrainingRun:
    """A run's optimiser, LR schedule and position: what a checkpoint saves and :meth:`resume` restores.

    Lifecycle: construct (optimiser + schedule) → :meth:`resume` (into the plain optimiser) →
    :meth:`prepare` (accelerate wraps the UNet and optimiser) → :meth:`train` → :meth:`export`, or
    :meth:`checkpoint` when stopped early.
    """

    def __init__(self, cfg: TrainConfig, accelerator, model, lora_params: list[torch.nn.Parameter],
                 paths: dict[str, Path]):
        self.cfg, self.accelerator, self.model, self.paths = cfg, accelerator, model, paths
        self.unet, self.lora_params = model.unet, lora_params
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.optimizer = _build_optimizer(cfg, lora_params)
        # a lambda, not the bound method cfg.lr_factor: LambdaLR saves a function as None but a method's
        # __dict__, which would change what the checkpoint holds
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: cfg.lr_factor(s))
        self.start = 0  # optimiser steps done before this process began
        self.ema = _Ema()
        self.seconds_before = 0.0  # training time of the processes this run resumes
        self.started_at = time.time()  # wall clock of the run's first start
        self.resumed_at = self.started_at  # wall clock when this process's first step began
        self.policy = self.policy_call = self.reference_call = None
        self.attacker = None  # the universal attacker, made on the first batch (it needs the concept directions)
        self.attacker_state: dict[str, torch.Tensor] = {}  # its checkpointed state, until it is made

    def resume(self) -> None:
        """Restore the LoRA, optimiser, LR schedule, RNG states, EMAs and clock from the checkpoint, if
        there is one and ``cfg.resume``; checks first that it was written by the same options."""
        cfg, state_path = self.cfg, self.paths["state"]
        if not (cfg.resume and state_path.exists()):
            return
        tensors, meta = load_training_checkpoint(state_path, STATE_KIND)
        _check_resumable(meta.get("config", {}), cfg, state_path, self.world, int(meta.get("world_size", 1)))
        with torch.no_grad():
            for name, param in lora_named_parameters(self.unet).items():
                if f"lora.{name}" not in tensors:
                    raise ScdpoError(f"{state_path} lacks LoRA tensor {name}; pass --no-resume to start over")
                param.copy_(tensors[f"lora.{name}"])
        optimizer_from_tensors(self.optimizer, tensors, meta["optimizer"])
        self.attacker_state = {k[len("attack."):]: v for k, v in tensors.items() if k.startswith("attack.")}
        self.scheduler.load_state_dict(meta["scheduler"])
        set_rng_state(meta.get("rng", {}))
        if "python_rng" in meta:  # JSON turned the state tuple into lists
            version, internal, gauss = meta["python_rng"]
            random.setstate((version, tuple(internal), gauss))
        self.start, self.seconds_before = int(meta["step"]), float(meta.get("elapsed_seconds", 0.0))
        if self.start > cfg.steps:
            raise ScdpoError(f"{state_path} is at step {self.start}, past --steps {cfg.steps}; raise --steps "
                             "or pass --no-resume to start over")
        self.started_at = float(meta.get("started_at", self.started_at))
        self.ema = _Ema(values=meta.get("ema", {}))
        if self.accelerator.is_main_process:
            log.info("resuming from %s at step %d/%d", state_path, self.start, cfg.steps)

    def prepare(self) -> None:
        """Hand the UNet and optimiser to accelerate (DDP wrapper, mixed precision); the reference is the
        same UNet with its adapter disabled."""
        self.policy, self.optimizer = self.accelerator.prepare(self.unet, self.optimizer)
        self.policy_call, self.reference_call = unet_call(self.policy), disabled_adapter_reference(self.unet)

    def seconds(self) -> float:
        """Training time of the whole run so far, resumed processes included."""
        return self.seconds_before + time.time() - self.resumed_at

    def train(self, order: PairOrder, make_batch: Callable[[list[int]], Any], stop_after: Optional[int],
              progress: bool) -> int:
        """Optimiser steps from where the run stands to ``cfg.steps`` (at most ``stop_after`` of them),
        logging and checkpointing on the way; returns the number of steps done."""
        from tqdm import tqdm

        from ..eventlog import EventWriter

        cfg, main = self.cfg, self.accelerator.is_main_process
        end = cfg.steps if stop_after is None else min(cfg.steps, self.start + max(0, stop_after))
        writer = EventWriter(self.paths["logs"], purge_step=self.start) if main else None
        bar = tqdm(total=cfg.steps, initial=self.start, desc=f"{cfg.method} {cfg.name}", unit="step",
                   disable=not (progress and main), dynamic_ncols=True)
        self.resumed_at = time.time()
        done = self.start
        for step in range(self.start, end):
            scalars, grad_norm = self.step(step, order, make_batch)
            self.ema.update(scalars)
            done = step + 1
            if writer is not None and (done % max(1, cfg.log_every) == 0 or done == cfg.steps):
                self.log(writer, done, scalars, grad_norm)
            bar.update(1)
            bar.set_postfix(loss=f"{self.ema.values['loss']:.4f}", acc=f"{self.ema.values['implicit_accuracy']:.2f}")
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
                self.checkpoint(done)
        bar.close()
        if writer is not None:
            writer.close()
        return done

    def step(self, step: int, order: PairOrder, make_batch: Callable[[list[int]], Any]
             ) -> tuple[dict[str, float], Optional[float]]:
        """Optimiser step ``step`` (0-based): ``grad_accum`` micro-batches, clipping, update. Returns the
        logged scalars (mean over micro-batches and processes) and the gradient norm before clipping
        (None when clipping is off)."""
        cfg, accelerator = self.cfg, self.accelerator
        sums = torch.zeros(len(_LOG_KEYS), dtype=torch.float64)
        for micro in range(cfg.grad_accum):
            micro_step = step * cfg.grad_accum + micro
            batch = make_batch(order.batch(micro_step, self.rank, self.world, cfg.batch_size))
            if self.attacker is None and cfg.adversarial_share > 0 and cfg.adversarial_mode == "universal":
                self.attacker = self._make_attacker(batch)
            if micro == 0 and cfg.adversarial_refresh > 0 and step % cfg.adversarial_refresh == 0:
                self._refresh_attacker(step, batch.inputs)
            sync = micro == cfg.grad_accum - 1  # processes exchange gradients once, on the last micro-batch
            with (contextlib.nullcontext() if sync else accelerator.no_sync(self.policy)), accelerator.autocast():
                loss, diag = dpo_batch_loss(
                    self.model, self.policy_call, self.reference_call, batch,
                    _micro_generator(cfg.seed, micro_step, self.rank),
                    beta=cfg.beta, lam=cfg.lam, gamma=cfg.gamma, prompt_dropout=cfg.prompt_dropout,
                    device=accelerator.device, concept_augment=cfg.concept_augment, concept_scale=cfg.concept_scale,
                    adversarial_share=cfg.adversarial_share, adversarial_steps=cfg.adversarial_steps,
                    adversarial_budget=cfg.adversarial_budget, winner_anchor=cfg.winner_anchor,
                    shift_augment=cfg.shift_augment, shift_fraction=cfg.shift_fraction,
                    universal_attack=self.attacker, adversarial_objective=cfg.adversarial_objective,
                    erase_weight=cfg.erase_weight, erase_guidance=cfg.erase_guidance,
                    preserve_weight=cfg.preserve_weight, erase_shift=cfg.erase_shift,
                    preserve_shift=cfg.preserve_shift, preserve_shift_pairs=cfg.preserve_shift_pairs,
                )
                accelerator.backward(loss / cfg.grad_accum)
            scalars = {"loss": float(loss.detach()), **diag.scalars()}
            sums += torch.tensor([scalars[k] for k in _LOG_KEYS], dtype=torch.float64)
        grad_norm = None
        if cfg.max_grad_norm > 0:
            grad_norm = float(accelerator.clip_grad_norm_(self.lora_params, cfg.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        means = accelerator.reduce((sums / cfg.grad_accum).to(accelerator.device), reduction="mean").cpu()
        return dict(zip(_LOG_KEYS, means.tolist())), grad_norm

    def _refresh_attacker(self, step: int, inputs) -> None:
        """``--adversarial-refresh``: a fresh attack on the LoRA as it is at ``step`` replaces the shifts.
        Its draws come from a generator of (seed, step, rank) alone, so a resumed run repeats it."""
        from .step import refresh_draws

        cfg, accelerator = self.cfg, self.accelerator
        generator = _micro_generator(cfg.seed + 0x5EED, step, self.rank)
        draws = refresh_draws(self.model, inputs, generator, cfg.adversarial_refresh_steps, cfg.batch_size,
                              accelerator.device)
        with accelerator.no_sync(self.policy), accelerator.autocast():
            self.attacker.refresh(self.policy_call, draws)

    def _make_attacker(self, batch):
        from .adversarial import UniversalAttack

        cfg = self.cfg
        attacker = UniversalAttack(batch.inputs.concept_directions()["hidden"], cfg.adversarial_budget,
                                   cfg.adversarial_steps, cfg.adversarial_lr, cfg.adversarial_restart)
        if self.attacker_state:
            attacker.load_state(self.attacker_state)
        return attacker

    def log(self, writer, done: int, scalars: dict[str, float], grad_norm: Optional[float]) -> None:
        """TensorBoard scalars of the step that made ``done`` steps: ``train/<key>``, ``train/lr``,
        ``train/grad_norm``."""
        for key, value in scalars.items():
            writer.add_scalar(f"train/{key}", value, done)
        writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], done)
        # a NaN norm is left out, as it was when NaN stood for "not clipped"; an infinite one (fp16
        # overflow) is logged, which is why this is not math.isfinite
        if grad_norm is not None and not math.isnan(grad_norm):
            writer.add_scalar("train/grad_norm", grad_norm, done)

    def checkpoint(self, step: int) -> None:
        """Write where the run stands after ``step`` optimiser steps to ``<name>.state.safetensors``
        (atomically, main process); every process waits for it."""
        cfg, world = self.cfg, self.world
        if self.accelerator.is_main_process:
            save_training_checkpoint(
                self.paths["state"],
                {**{f"lora.{n}": p.detach() for n, p in lora_named_parameters(self.unet).items()},
                 **{f"attack.{k}": v for k, v in (self.attacker.state() if self.attacker else {}).items()}},
                getattr(self.optimizer, "optimizer", self.optimizer),  # the plain optimiser inside accelerate's
                {
                    "step": step, "pairs_seen": step * cfg.grad_accum * cfg.batch_size * world,
                    "world_size": world, "config": cfg.to_dict(), "scheduler": json_safe(self.scheduler.state_dict()),
                    "rng": rng_state(), "python_rng": json_safe(random.getstate()), "ema": self.ema.values,
                    "elapsed_seconds": self.seconds(), "started_at": self.started_at,
                },
                STATE_KIND,
            )
        self.accelerator.wait_for_everyone()

    def export(self, n_pairs: int, mixed_precision: str) -> None:
        """Write the finished LoRA (kohya, with the training summary in its metadata) and the resolved
        config, and remove the checkpoint and the encoded inputs (main process)."""
        cfg, world, paths = self.cfg, self.world, self.paths
        summary = {
            "steps": cfg.steps, "pairs": n_pairs, "pairs_seen": cfg.steps * cfg.grad_accum * cfg.batch_size * world,
            "total_batch_size": cfg.batch_size * cfg.grad_accum * world, "world_size": world,
            "mixed_precision": mixed_precision, "base_dtype": dtype_name(self.model.dtype),
            "seconds": round(self.seconds(), 1),
            **{f"{k}_ema": round(float(v), 6) for k, v in self.ema.values.items()},
        }
        if self.accelerator.is_main_process:
            tensors = peft_unet_to_kohya(self.unet, TRAIN_ADAPTER)
            if cfg.export_strength != 1.0:  # hosts scale by alpha / rank: the strength travels in the file
                tensors = {k: v * cfg.export_strength if k.endswith(".alpha") else v for k, v in tensors.items()}
            save_lora(paths["lora"], tensors, _training_metadata(cfg, self.model, summary, self.started_at))
            save_train_config(cfg, paths["config"], header=f"scdpo lora train --config {paths['config'].name}\n"
                              f"resolved configuration of {paths['lora'].name} ({cfg.method})")
            for leftover in (paths["state"], paths["inputs"]):
                if leftover.exists():
                    leftover.unlink()
        self.accelerator.wait_for_everyone()


def train_lora(config: TrainConfig, model=None, dataset=None, *, progress: bool = True,
               stop_after: Optional[int] = None, keep_adapter: bool = False) -> Path:
    """Train a safety LoRA and write it (kohya format) to ``<out>/<name>.safetensors``; returns its path.

    ``model``: a :class:`~scdpo.pipeline.TextToImageModel` (default: ``load_base_model(config.base)``);
    its UNet gets a temporary training adapter (peft adapter ``scdpo_train``) that is removed
    again before returning, so the same in-memory model can train several LoRAs; with
    ``keep_adapter=True`` the trained adapter stays attached and active (frozen) instead. ``dataset``: a pair
    dataset (default: from ``config.data``). ``stop_after``: stop after this many optimiser steps of this call,
    leaving only the checkpoint (tests use it to simulate an interruption); the state path is returned.
    """
    cfg = config.validate()
    mixed_precision = resolve_mixed_precision(cfg)
    accelerator = make_accelerator(cfg.cpu, mixed_precision)
    paths = output_paths(cfg)
    if accelerator.is_main_process:
        ensure_writable_dir(paths["lora"].parent)

    dataset = dataset if dataset is not None else load_pair_dataset(cfg)
    indices = select_pairs(dataset, cfg.categories, cfg.clean_pairs)
    order = PairOrder(indices, cfg.seed)
    owns_model = model is None
    make_batch = None
    if owns_model:
        from ..models import is_toy_base

        toy = is_toy_base(cfg.base)
        base_dtype = resolve_base_dtype(cfg.base_dtype, accelerator.device, toy)
        if cfg.cache_inputs and not toy:
            model, make_batch = _unet_on_encoded_inputs(cfg, accelerator, base_dtype, dataset, indices,
                                                        paths["inputs"], progress)
        else:
            model = _load_base_model(cfg, accelerator.device, base_dtype)
    elif cfg.base_dtype != "auto" and resolve_base_dtype(cfg.base_dtype, model.device, False) != model.dtype:
        raise ScdpoError(f"base_dtype {cfg.base_dtype}: the model passed in is {dtype_name(model.dtype)}; a model "
                         "passed to train_lora trains in its own dtype (leave base_dtype at auto)")
    if make_batch is None:
        make_batch = _batch_source(cfg, accelerator, model, dataset, indices, paths["inputs"], progress)

    unet = model.unet
    unet.to(accelerator.device)
    lora_params = _attach_lora(cfg, model)
    run: Optional[_TrainingRun] = None
    parked = contextlib.ExitStack()
    try:
        if cfg.cache_inputs:  # the text encoders and VAE are not needed any more
            parked.enter_context(encoders_parked(model, free=owns_model))
        if cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        run = _TrainingRun(cfg, accelerator, model, lora_params, paths)
        run.resume()
        run.prepare()
        done = run.train(order, make_batch, stop_after, progress)
        if done < cfg.steps:  # stopped early on purpose: leave a checkpoint of where we are
            run.checkpoint(done)
            return paths["state"]
        run.export(len(indices), mixed_precision)
        return paths["lora"]
    finally:
        if run is not None and run.policy is not None:
            accelerator.unwrap_model(run.policy, keep_fp32_wrapper=False)
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
