"""Pretraining the toy text-to-image model from scratch on the toy world (all surface forms).

Read top to bottom: config → data → model → optimiser → loop → checkpoint. Every random draw of
step ``s`` (the batch's scenes, the noise, the timesteps, caption dropout) is a pure function of
``(seed, s)`` and the learning rate is a pure function of ``s``, so resuming from the checkpoint of
step ``k`` replays steps ``k+1..N`` exactly: a run killed at any moment and restarted with the same
command ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..checkpointing import load_training_checkpoint, optimizer_from_tensors, save_training_checkpoint
from ..errors import ScdpoError
from ..fileio import ensure_writable_dir
from .model import ToyTextToImage
from .world import ToyWorld

STATE_KIND = "toy_pretrain_state"


@dataclass
class PretrainConfig:
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    decay_fraction: float = 0.3  # linear decay to 0 over the last 30% of the steps
    ema_decay: float = 0.995  # the shipped weights are the exponential moving average
    weight_decay: float = 0.01
    caption_dropout: float = 0.1  # empty captions teach the unconditional branch for CFG
    seed: int = 0
    checkpoint_every: int = 100
    out: str = "weights"
    name: str = "toy_base"

    def lr_at(self, step: int) -> float:
        """Linear warm-up, constant, then linear decay to zero over the last ``decay_fraction``."""
        warm = min(1.0, (step + 1) / max(1, self.warmup_steps))
        decay_start = self.steps * (1 - self.decay_fraction)
        decay = 1.0 if step < decay_start else max(0.0, (self.steps - step) / max(1.0, self.steps - decay_start))
        return self.lr * warm * decay


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def training_loss(model: ToyTextToImage, world: ToyWorld, cfg: PretrainConfig, step: int) -> torch.Tensor:
    """Denoising MSE (on the model's own target, v) for the batch of ``step`` (deterministic in
    ``(cfg.seed, step)``)."""
    images, captions = world.training_batch(cfg.seed * 7_919 + step, cfg.batch_size)
    gen = _step_generator(cfg.seed, step)
    drop = torch.rand(len(captions), generator=gen) < cfg.caption_dropout
    captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
    latents = model.encode_images(torch.from_numpy(images).float() / 255.0)
    noise = torch.randn(latents.shape, generator=gen)
    timesteps = torch.randint(0, model.noise_scheduler.config.num_train_timesteps, (len(captions),), generator=gen)
    noisy = model.noise_scheduler.add_noise(latents, noise, timesteps)
    cond = model.encode_prompt(captions)
    target = model.training_target(latents, noise, timesteps)
    return F.mse_loss(model.unet_output(noisy, timesteps, cond), target)


def pretrain(cfg: PretrainConfig, progress: bool = True, stop_after: Optional[int] = None) -> Path:
    """Train (or resume) and write ``<out>/<name>.safetensors``. Returns its path.

    The training state lives in ``<out>/<name>.state.safetensors`` (written every
    ``checkpoint_every`` steps, atomically) and is removed when the run completes.
    ``stop_after`` ends the process's work early (tests use it to simulate interruption).
    """
    out = ensure_writable_dir(cfg.out)
    final_path = out / f"{cfg.name}.safetensors"
    state_path = out / f"{cfg.name}.state.safetensors"
    torch.manual_seed(cfg.seed)
    model = ToyTextToImage.from_scratch(cfg.seed)
    params = list(model.unet.parameters()) + list(model.text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    if state_path.exists():
        tensors, meta = load_training_checkpoint(state_path, STATE_KIND)
        saved = meta.get("config", {})
        start = int(meta["step"])
        for key in ("seed", "batch_size", "lr", "warmup_steps", "weight_decay", "caption_dropout",
                    "decay_fraction", "ema_decay"):
            if saved.get(key) != getattr(cfg, key):
                raise ScdpoError(
                    f"{state_path} was written with {key}={saved.get(key)!r}, not {getattr(cfg, key)!r}; "
                    "rerun with the same options to resume, or delete the file to start over"
                )
        # A different --steps is fine while the LR schedules agree on every step already taken
        # (the decay phase has not started): the result is then exactly a run of the new length.
        saved_cfg = PretrainConfig(**{**asdict(cfg), "steps": int(saved.get("steps", cfg.steps))})
        if any(saved_cfg.lr_at(s) != cfg.lr_at(s) for s in range(start)) or start > cfg.steps:
            raise ScdpoError(
                f"{state_path} is at step {start} of a {saved_cfg.steps}-step run whose learning-rate schedule "
                f"differs from a {cfg.steps}-step run; rerun with --steps {saved_cfg.steps} or delete the file"
            )
        model.load_state_tensors({k: v for k, v in tensors.items() if k.startswith(("unet.", "text_encoder."))})
        optimizer_from_tensors(optimizer, tensors, meta["optimizer"])
        ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        print(f"resuming from {state_path} at step {start}/{cfg.steps}", file=sys.stderr)
    else:
        ema = {}
    if not ema:
        ema = {k: v.detach().clone() for k, v in model.state_tensors().items()}
    model.unet.train()
    model.text_encoder.train()
    world = ToyWorld("all")

    def checkpoint(step: int) -> None:
        tensors = {**model.state_tensors(), **{f"ema.{k}": v for k, v in ema.items()}}
        save_training_checkpoint(state_path, tensors, optimizer, {"step": step, "config": asdict(cfg)}, STATE_KIND)

    bar = tqdm(total=cfg.steps, initial=start, desc="toy pretrain", disable=not progress, unit="step")
    t0 = time.time()
    loss_ema = None
    for step in range(start, cfg.steps):
        if stop_after is not None and step - start >= stop_after:
            bar.close()
            return state_path
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr_at(step)
        loss = training_loss(model, world, cfg, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        with torch.no_grad():
            for k, v in model.state_tensors().items():
                if v.dtype.is_floating_point:
                    ema[k].mul_(cfg.ema_decay).add_(v.detach(), alpha=1 - cfg.ema_decay)
                else:
                    ema[k].copy_(v)
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{loss_ema:.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            checkpoint(step + 1)
    bar.close()
    model.load_state_tensors(ema)
    model.save(
        final_path,
        {
            "scdpo_pretrain_config": json.dumps(asdict(cfg)),
            "scdpo_reproduce": "scdpo toy pretrain " + " ".join(
                shlex.quote(a) for a in [f"--steps={cfg.steps}", f"--seed={cfg.seed}",
                                         f"--batch-size={cfg.batch_size}", f"--out={cfg.out}"]
            ),
            "scdpo_final_loss_ema": f"{loss_ema:.5f}" if loss_ema is not None else "nan",
            "scdpo_train_seconds": f"{time.time() - t0:.0f}",
        },
    )
    if state_path.exists():
        state_path.unlink()
    return final_path

