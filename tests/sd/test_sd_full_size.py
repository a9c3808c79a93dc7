"""Full-size SD1.5 (and SDXL's full block structure at reduced width), random weights, offline.

The checkpoints are built once by ``sd_ldm_checkpoints`` in the original LDM key layout and
cached under ``~/.cache/scdpo-tests`` (SD1.5: 2.0 GiB fp16, ~50 s to build). The conftest's socket
guard denies any network access and ``HF_HUB_OFFLINE=1`` is set.
"""

import os

import pytest
import torch
from peft import LoraConfig

from sd_ldm_checkpoints import CACHE, cached_checkpoint, write_narrow_sdxl_configs
from scdpo.lora import DEFAULT_TARGET_MODULES, kohya_names_for_unet, load_lora, peft_unet_to_kohya, save_lora
from scdpo.models import load_base_model
from scdpo.sd.configs import config_dir
from scdpo.sd.loader import load_sd_model

pytestmark = pytest.mark.slow


def _sc_dpo_step(model, size: int) -> torch.Tensor:
    """One SC-DPO step (winner, loser share noise and timestep; reference = adapter disabled)."""
    from scdpo.dpo.loss import sc_dpo_loss

    images = torch.rand(2, size, size, 3, generator=torch.Generator().manual_seed(0))
    latents = model.encode_images(images)
    cond = model.conditioning_for_size(model.encode_prompt(["a photo of a cat"] * 2), size, size)
    noise = torch.randn_like(latents[:1]).repeat(2, 1, 1, 1)
    t = torch.tensor([300, 300])
    noisy = model.noise_scheduler.add_noise(latents, noise, t)
    err = (model.predict_noise(noisy, t, cond).float() - noise.float()).pow(2).mean(dim=(1, 2, 3))
    with torch.no_grad():
        model.unet.disable_adapters()
        ref = (model.predict_noise(noisy, t, cond).float() - noise.float()).pow(2).mean(dim=(1, 2, 3))
        model.unet.enable_adapters()
    loss, _ = sc_dpo_loss(err[:1], err[1:], ref[:1], ref[1:], torch.tensor([-1.0]), torch.tensor([3.0]),
                          beta=2500.0, lam=1.0, gamma=1.0)
    loss.mean().backward()
    return loss


def _check_lora_grads_and_export(model, tmp_path, n_expected):
    lora_params = [(n, p) for n, p in model.unet.named_parameters() if p.requires_grad]
    assert lora_params and all("lora_" in n for n, _ in lora_params)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in lora_params)
    assert sum(p.grad.abs().sum().item() for n, p in lora_params if "lora_B" in n) > 0
    path = save_lora(tmp_path / "safety.safetensors", peft_unet_to_kohya(model.unet),
                     {"ss_base_model_version": model.base_model_version})
    lora = load_lora(path)
    model.unet.delete_adapters("default")
    assert set(lora.module_names) == kohya_names_for_unet(model.unet, DEFAULT_TARGET_MODULES)
    assert len(lora.module_names) == n_expected


def test_full_size_sd15_single_file_loads_offline_generates_and_trains(tmp_path):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    ckpt = cached_checkpoint("sd15_random_fp16", config_dir("sd15"), "sd15")
    model = load_base_model(str(ckpt), device="cpu")  # the project's entry point dispatches here
    assert model.base_model_version == "sd_v1" and model.default_size == 512
    # stored fp16; on a CPU loaded as bf16 (fp16 kernels run ~10x slower there)
    assert model.unet.dtype == torch.bfloat16 and model.text_encoder.dtype == torch.bfloat16
    counts = [sum(p.numel() for p in m.parameters()) for m in (model.unet, model.vae, model.text_encoder)]
    assert counts == [859_520_964, 83_653_863, 123_060_480]  # SD1.5's published sizes

    model.to(dtype=torch.float32)
    image = model.generate(["a photo of a cat"], seed=0, steps=2, height=64, width=64)
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()

    model.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=DEFAULT_TARGET_MODULES, init_lora_weights="gaussian"))
    loss = _sc_dpo_step(model, 64)
    assert torch.isfinite(loss).all()
    _check_lora_grads_and_export(model, tmp_path, 128)


def test_sdxl_structure_single_file_loads_offline_generates_and_trains(tmp_path):
    cfg = write_narrow_sdxl_configs(CACHE / "sdxl_narrow_cfg")
    ckpt = cached_checkpoint("sdxl_narrow_random_fp16", cfg, "sdxl")
    model = load_sd_model(ckpt, "cpu", None, config_dir=cfg)
    assert model.base_model_version == "sdxl_base_v1-0" and model.unet.dtype == torch.float16
    assert model.vae.dtype == torch.float32  # SDXL's VAE is upcast (force_upcast)
    assert len(model.text_encoder_2.text_model.encoder.layers) == 32
    model.to(dtype=torch.float32)
    cond = model.encode_prompt(["a photo of a cat"])
    assert cond.hidden.shape == (1, 77, 160) and cond.added["text_embeds"].shape == (1, 96)
    image = model.generate(["a photo of a cat"], seed=0, steps=2, height=64, width=64)
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()

    model.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=DEFAULT_TARGET_MODULES, init_lora_weights="gaussian"))
    loss = _sc_dpo_step(model, 64)
    assert torch.isfinite(loss).all()
    _check_lora_grads_and_export(model, tmp_path, 560)  # every attention projection of SDXL base
