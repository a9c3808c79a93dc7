"""Stable Diffusion 1.x / SDXL behind the project's :class:`~scdpo.pipeline.TextToImageModel` interface.

* SD 1.x: CLIP ViT-L text encoder, last hidden state ``[B,77,768]`` as cross-attention context.
* SDXL: both text encoders' penultimate hidden states concatenated ``[B,77,2048]``, the second
  encoder's projected pooled embedding ``text_embeds [B,1280]`` and the size/crop conditioning
  ``time_ids [B,6] = (orig_h, orig_w, crop_top, crop_left, target_h, target_w)`` as
  ``added_cond_kwargs``; an empty prompt is encoded as zeros (SDXL base's
  ``force_zeros_for_empty_prompt``), as diffusers' SDXL pipeline does for the negative prompt.
* latents: VAE mean (deterministic, so cached dataset latents are reproducible) × scaling factor.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..pipeline import Conditioning, TextToImageModel
from .configs import FAMILY_VERSIONS


class SDTextToImage(TextToImageModel):
    default_steps = 30
    default_guidance = 7.5

    def __init__(self, family: str, unet, vae, text_encoders: Sequence, tokenizers: Sequence, noise_scheduler,
                 model_id: str = "sd", vae_scale_factor: Optional[int] = None):
        self.family = family
        self.base_model_version = FAMILY_VERSIONS[family]
        self.unet = unet
        self.vae = vae
        self.text_encoders = list(text_encoders)
        self.tokenizers = list(tokenizers)
        self.noise_scheduler = noise_scheduler
        self.model_id = model_id
        if vae_scale_factor is None:
            vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.vae_scale_factor = int(vae_scale_factor)
        self.default_size = int(unet.config.sample_size) * self.vae_scale_factor if unet is not None else 0

    @property
    def _anchor(self) -> torch.nn.Module:
        """The module whose parameters say where the model lives: the UNet, or for an encoders-only
        model (see :func:`~scdpo.sd.loader.load_sd_model` ``unet=False``) the first text encoder."""
        return self.unet if self.unet is not None else self.text_encoders[0]

    @property
    def device(self) -> torch.device:
        return next(self._anchor.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self._anchor.parameters()).dtype

    # convenient names, as in diffusers pipelines
    @property
    def text_encoder(self):
        return self.text_encoders[0]

    @property
    def text_encoder_2(self):
        return self.text_encoders[1] if len(self.text_encoders) > 1 else None

    @property
    def tokenizer(self):
        return self.tokenizers[0]

    @property
    def is_sdxl(self) -> bool:
        return self.family == "sdxl"

    # -- devices / dtypes
    def to(self, device=None, dtype=None) -> "SDTextToImage":
        """Move every component; ``dtype`` applies to UNet and text encoders. The VAE stays fp32 when
        its config asks for upcasting (SDXL's VAE overflows in fp16)."""
        if self.unet is not None:
            self.unet.to(device=device, dtype=dtype)
        for te in self.text_encoders:
            te.to(device=device, dtype=dtype)
        if self.vae is not None:
            vae_dtype = torch.float32 if getattr(self.vae.config, "force_upcast", False) else dtype
            self.vae.to(device=device, dtype=vae_dtype)
        return self

    def encoder_modules(self) -> list[torch.nn.Module]:
        return [m for m in (*self.text_encoders, self.vae) if m is not None]

    # -- text
    def _token_ids(self, tokenizer, prompts: Sequence[str]) -> torch.Tensor:
        return tokenizer(
            list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids

    @torch.no_grad()
    def encode_prompt(self, prompts: Sequence[str]) -> Conditioning:
        prompts = list(prompts)
        device = self.text_encoder.device
        if not self.is_sdxl:
            hidden = self.text_encoder(self._token_ids(self.tokenizer, prompts).to(device))[0]
            return Conditioning(hidden.to(self.dtype))
        hiddens, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders):
            out = encoder(self._token_ids(tokenizer, prompts).to(encoder.device), output_hidden_states=True)
            hiddens.append(out.hidden_states[-2])
            pooled = out.text_embeds if hasattr(out, "text_embeds") else pooled
        hidden = torch.cat([h.to(self.dtype) for h in hiddens], dim=-1)
        pooled = pooled.to(self.dtype)
        empty = torch.tensor([p == "" for p in prompts], device=hidden.device)
        hidden = torch.where(empty[:, None, None], torch.zeros_like(hidden), hidden)
        pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
        cond = Conditioning(hidden, {"text_embeds": pooled, "time_ids": torch.zeros(len(prompts), 6, device=hidden.device)})
        return self.conditioning_for_size(cond, self.default_size, self.default_size)

    def conditioning_for_size(self, cond: Conditioning, height: int, width: int,
                              crop_top_left: tuple[int, int] = (0, 0),
                              original_size: Optional[tuple[int, int]] = None) -> Conditioning:
        """SDXL: set ``time_ids`` to (original size, crop, target size); identity for SD 1.x."""
        if not self.is_sdxl:
            return cond
        orig = original_size or (height, width)
        ids = torch.tensor([*orig, *crop_top_left, height, width], dtype=cond.hidden.dtype, device=cond.hidden.device)
        added = dict(cond.added)
        added["time_ids"] = ids.expand(len(cond), 6).clone()
        return Conditioning(cond.hidden, added)

    # -- images
    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        s = self.vae_scale_factor
        if height % s or width % s:
            raise ValueError(f"image size must be a multiple of {s}, got {height}x{width}")
        return (int(self.unet.config.in_channels), height // s, width // s)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``[B,H,W,C]`` float 0..1 → latents ``[B,4,H/8,W/8]`` (VAE mean × scaling factor)."""
        x = images.permute(0, 3, 1, 2).to(self.vae.device, self.vae.dtype) * 2.0 - 1.0
        latents = self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor
        return latents.to(self.dtype)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        x = self.vae.decode(latents.to(self.vae.device, self.vae.dtype) / self.vae.config.scaling_factor).sample
        return ((x.float() + 1.0) / 2.0).clamp(0, 1).permute(0, 2, 3, 1).cpu().contiguous()
