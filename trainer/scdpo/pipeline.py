"""The text-to-image model interface every part of the project uses.

The toy model (:mod:`scdpo.toy.model`) and real Stable Diffusion models (:mod:`scdpo.sd`) both
subclass :class:`TextToImageModel`, so dataset building, training, evaluation and the hosts'
adapters run one code path. What a subclass provides:

* ``unet``: a diffusers ``UNet2DConditionModel`` (LoRA adapters are attached to it with peft);
* ``noise_scheduler``: a diffusers DDPM-family scheduler used for training (``add_noise``) and
  whose config builds the DDIM sampler;
* :meth:`encode_prompt` → :class:`Conditioning`;
* :meth:`encode_images` / :meth:`decode_latents`: images ``[B,H,W,C]`` float 0..1 ↔ model latents;
* ``base_model_version``: the kohya ``ss_base_model_version`` string (``toy_v1``, ``sd_v1``,
  ``sdxl_base_v1-0``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from diffusers import DDIMScheduler


@dataclass
class Conditioning:
    """Text conditioning for a batch: what ``UNet2DConditionModel.forward`` takes besides latents.

    ``hidden``: ``[B, L, D]`` encoder hidden states. ``added``: SDXL's ``added_cond_kwargs``
    (``text_embeds`` ``[B, 1280]``, ``time_ids`` ``[B, 6]``) or empty for SD1.x / toy.
    """

    hidden: torch.Tensor
    added: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def cat(self, other: "Conditioning") -> "Conditioning":
        return Conditioning.concat([self, other])

    @staticmethod
    def concat(parts: Sequence["Conditioning"]) -> "Conditioning":
        """The rows of every part, in order, in one copy (not one copy per part)."""
        return Conditioning(
            torch.cat([p.hidden for p in parts]),
            {k: torch.cat([p.added[k] for p in parts]) for k in parts[0].added},
        )

    def repeat(self, n: int) -> "Conditioning":
        """Each row repeated ``n`` times in place order (row0,row0,...,row1,...)."""
        return Conditioning(
            self.hidden.repeat_interleave(n, 0), {k: v.repeat_interleave(n, 0) for k, v in self.added.items()}
        )

    def index(self, idx) -> "Conditioning":
        return Conditioning(self.hidden[idx], {k: v[idx] for k, v in self.added.items()})

    def to(self, device=None, dtype=None) -> "Conditioning":
        return Conditioning(
            self.hidden.to(device=device, dtype=dtype),
            {k: v.to(device=device, dtype=dtype) for k, v in self.added.items()},
        )

    def shifted(self, shift: dict) -> "Conditioning":
        """A copy with ``shift[key]`` added to ``hidden`` (key ``"hidden"``) and to ``added[key]``;
        shifts broadcast over the batch, are added in float32 and cast back to each tensor's dtype."""
        def add(key, value):
            if key not in shift:
                return value
            return (value.float() + shift[key].to(value.device, torch.float32)).to(value.dtype)

        return Conditioning(add("hidden", self.hidden), {k: add(k, v) for k, v in self.added.items()})

    def unet_kwargs(self) -> dict:
        kw = {"encoder_hidden_states": self.hidden}
        if self.added:
            kw["added_cond_kwargs"] = self.added
        return kw


# (eps_uncond, eps_cond, timestep, step_index, model_input_latents) -> guided eps; lets methods such
# as Safe Latent Diffusion replace classifier-free guidance (and run extra UNet passes on the
# latents) without forking the sampler.
GuidanceFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, torch.Tensor], torch.Tensor]


class TextToImageModel:
    """Base class: shared sampling, noise prediction and LoRA handling. See module docstring."""

    unet: torch.nn.Module
    noise_scheduler: object
    base_model_version: str = "unknown"
    model_id: str = "unknown"
    default_size: int = 512
    default_steps: int = 30
    default_guidance: float = 7.5

    # --- provided by subclasses -------------------------------------------------------------
    def encode_prompt(self, prompts: Sequence[str]) -> Conditioning:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """``[B,H,W,C]`` float 0..1 → latents ``[B,c,h,w]`` (scaled as the UNet expects)."""
        raise NotImplementedError

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Latents → ``[B,H,W,C]`` float 0..1 on CPU."""
        raise NotImplementedError

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:  # pragma: no cover
        raise NotImplementedError

    def conditioning_for_size(self, cond: Conditioning, height: int, width: int) -> Conditioning:
        """Hook for size conditioning (SDXL ``time_ids``); identity otherwise."""
        return cond

    def encoder_modules(self) -> list[torch.nn.Module]:
        """The frozen modules behind :meth:`encode_prompt` / :meth:`encode_images` (text encoders,
        VAE): what a trainer on cached inputs does not need resident."""
        return []

    # --- shared -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    def unet_output(self, latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The UNet's raw output (ε or v, see :attr:`prediction_type`) with whatever adapters are active."""
        return self.unet(latents, timesteps, **cond.unet_kwargs()).sample

    def training_target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the UNet's raw output is trained to match: ε, or v for v-prediction models."""
        if self.prediction_type == "v_prediction":
            return self.noise_scheduler.get_velocity(latents, noise, timesteps)
        return noise

    def predict_noise(self, latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """ε-prediction (with whatever adapters are active); v-prediction models are converted,
        ``ε = sqrt(ᾱ_t)·v + sqrt(1-ᾱ_t)·x_t``, so every caller works in ε."""
        out = self.unet_output(latents, timesteps, cond)
        if self.prediction_type == "v_prediction":
            abar = self.noise_scheduler.alphas_cumprod.to(latents.device)[timesteps.to(latents.device).long()]
            abar = abar.reshape(-1, *([1] * (latents.ndim - 1))).to(out.dtype)
            out = abar.sqrt() * out + (1 - abar).sqrt() * latents
        return out

    def sampler(self) -> DDIMScheduler:
        """DDIM over ε (:meth:`predict_noise` always returns ε)."""
        return DDIMScheduler.from_config(self.noise_scheduler.config, prediction_type="epsilon")

    @torch.no_grad()
    def generate(
        self,
        prompts: Optional[Sequence[str]] = None,
        *,
        cond: Optional[Conditioning] = None,
        negative_prompt: str | Sequence[str] = "",
        seed: int | Sequence[int] = 0,
        steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        guidance_fn: Optional[GuidanceFn] = None,
        callback: Optional[Callable[[int, int], None]] = None,
    ) -> torch.Tensor:
        """Generate images ``[B,H,W,C]`` float 0..1 (CPU) with DDIM + classifier-free guidance.

        ``seed`` may be one int per image: image ``i``'s starting noise depends only on its own
        seed, so a prompt renders the same whatever batch it is in. ``cond`` replaces ``prompts``
        for attacks that edit text embeddings directly.
        """
        if cond is None:
            if prompts is None:
                raise ValueError("generate() needs prompts or cond")
            cond = self.encode_prompt(list(prompts))
        n = len(cond)
        negs = [negative_prompt] * n if isinstance(negative_prompt, str) else list(negative_prompt)
        uncond = self.encode_prompt(negs)
        height = height or self.default_size
        width = width or self.default_size
        cond = self.conditioning_for_size(cond, height, width)
        uncond = self.conditioning_for_size(uncond, height, width)
        steps = steps or self.default_steps
        guidance_scale = self.default_guidance if guidance_scale is None else guidance_scale
        seeds = [seed + i for i in range(n)] if isinstance(seed, int) else list(seed)
        if len(seeds) != n:
            raise ValueError(f"got {len(seeds)} seeds for {n} prompts")

        shape = self.latent_shape(height, width)
        latents = torch.stack(
            [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        ).to(self.device, self.dtype)
        sched = self.sampler()
        sched.set_timesteps(steps)
        latents = latents * sched.init_noise_sigma
        both = uncond.cat(cond).to(self.device, self.dtype)
        for i, t in enumerate(sched.timesteps):
            inp = sched.scale_model_input(torch.cat([latents, latents]), t)
            eps = self.predict_noise(inp, t.expand(2 * n).to(self.device), both)
            eps_u, eps_c = eps.chunk(2)
            if guidance_fn is not None:
                eps = guidance_fn(eps_u, eps_c, t, i, inp[:n])
            else:
                eps = eps_u + guidance_scale * (eps_c - eps_u)
            latents = sched.step(eps, t, latents).prev_sample
            if callback is not None:
                callback(i + 1, steps)
        return self.decode_latents(latents)
