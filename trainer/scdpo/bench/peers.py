"""The two-UNet trainer designs of the peer projects, for the footprint benchmark.

Written here (no code taken from them) after the structure of the Diffusion-DPO and SafetyDPO
training scripts, which load a diffusers model the same way:

* tokenizer, CLIP text encoder, VAE and UNet with ``from_pretrained``, plus a **second UNet**
  loaded the same way as the frozen reference;
* ``full``: every UNet weight trains (AdamW over all of them: the Diffusion-DPO design);
  ``lora``: a peft LoRA on the attention projections trains, the policy's base weights and the
  reference copy are frozen (the SafetyDPO design);
* an ``accelerate.Accelerator`` (no mixed precision on a CPU, as their defaults run there) with a
  TensorBoard tracker, and at every step: both images of each pair through the VAE (latent
  sample × scaling factor), the prompt through the text encoder, shared noise and timestep per
  pair, the policy on ``[winners; losers]`` with gradients, the reference without, the
  Diffusion-DPO loss ``-log σ(-β/2 · ((e_w - e_l) - (e_w^ref - e_l^ref)))``, gradient clipping and
  an AdamW step.

Run as a child process by :mod:`.footprint`; prints one JSON line with per-step seconds and losses.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def run(design: str, model_dir: str, data: str, out: str, steps: int, batch_size: int, rank: int,
        lr: float, beta: float, seed: int) -> dict:
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from ..dpo.pairs import collate_pairs
    from ..scp.dataset import load_scp_dataset

    accelerator = Accelerator(mixed_precision="no", log_with="tensorboard", project_dir=out)
    accelerator.init_trackers(f"{design}-peer")
    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(model_dir, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")
    ref_unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")
    scheduler = DDPMScheduler.from_pretrained(model_dir, subfolder="scheduler")
    for frozen in (text_encoder, vae, ref_unet):
        frozen.requires_grad_(False)
    if design == "lora":
        from peft import LoraConfig

        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                    target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
        params = [p for p in unet.parameters() if p.requires_grad]
    else:
        params = list(unet.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    device = accelerator.device
    for module in (text_encoder, vae, ref_unet):
        module.to(device)
    dataset = load_scp_dataset(data)
    unet.train()
    g = torch.Generator().manual_seed(seed)
    step_seconds, losses = [], []
    for step in range(steps):
        began = time.perf_counter()
        idx = torch.randint(0, len(dataset), (batch_size,), generator=g).tolist()
        batch = collate_pairs([dataset[i] for i in idx])
        pixels = torch.cat([batch.winners, batch.losers]).permute(0, 3, 1, 2).to(device) * 2 - 1
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            ids = tokenizer(list(batch.prompts), padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids.to(device)
            hidden = text_encoder(ids)[0].repeat(2, 1, 1)
        noise = torch.randn(latents[:batch_size].shape, generator=g).to(device).repeat(2, 1, 1, 1)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=g).to(device).repeat(2)
        noisy = scheduler.add_noise(latents, noise, t)
        pred = unet(noisy, t, hidden).sample
        err = (pred.float() - noise.float()).pow(2).mean(dim=[1, 2, 3])
        with torch.no_grad():
            ref_err = (ref_unet(noisy, t, hidden).sample.float() - noise.float()).pow(2).mean(dim=[1, 2, 3])
        model_diff = err[:batch_size] - err[batch_size:]
        ref_diff = ref_err[:batch_size] - ref_err[batch_size:]
        loss = -F.logsigmoid(-0.5 * beta * (model_diff - ref_diff)).mean()
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        accelerator.log({"train_loss": float(loss.detach())}, step=step)
        step_seconds.append(time.perf_counter() - began)
        losses.append(float(loss.detach()))
    accelerator.end_training()
    return {"design": design, "step_seconds": step_seconds, "losses": losses,
            "trainable_params": sum(p.numel() for p in params)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("design", choices=("lora", "full"))
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--beta", type=float, default=2500.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    report = run(a.design, a.model, a.data, a.out, a.steps, a.batch_size, a.rank, a.lr, a.beta, a.seed)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
