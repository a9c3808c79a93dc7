"""Stand-in for comfy.sample: noise, and ``sample`` calling the step callback as ComfyUI's samplers do.

``sample`` loads the model with its additional models (``comfy.sampler_helpers.prepare_sampling``:
``load_models_gpu([model] + model.get_nested_additional_models() + ...)``), then for each step calls
``callback(step, x0, x, total_steps)`` with that step's denoised prediction ``x0`` (what
``comfy.samplers.KSampler`` passes on from k-diffusion's callback) and returns the last prediction.
The denoiser is :data:`denoiser`, set by tests: ``(step, x) -> x0`` (the UNet and sampler stand-in).
"""

import torch

import comfy.model_management

denoiser = None  # set by tests
calls: list = []  # test aid: the keyword arguments of every sample() call


def prepare_noise(latent_image, seed, noise_inds=None):
    generator = torch.manual_seed(seed)
    return torch.randn(latent_image.size(), dtype=latent_image.dtype, layout=latent_image.layout, generator=generator,
                       device="cpu")


def fix_empty_latent_channels(model, latent_image):
    return latent_image


def sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise=1.0,
           disable_noise=False, start_step=None, last_step=None, force_full_denoise=False, noise_mask=None,
           sigmas=None, callback=None, disable_pbar=False, seed=None):
    calls.append(dict(model=model, steps=steps, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler, seed=seed,
                      denoise=denoise, noise_mask=noise_mask))
    comfy.model_management.load_models_gpu([model] + model.get_nested_additional_models())
    x = noise
    for step in range(steps):
        x0 = denoiser(step, x) if denoiser is not None else latent_image
        if callback is not None:
            callback(step, x0, x, steps)
        x = x0
    return x
