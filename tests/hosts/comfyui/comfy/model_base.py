"""Stand-in for comfy.model_base.BaseModel: the UNet is held as ``diffusion_model`` next to its
``model_config`` (so the state dict keys are ``diffusion_model.*``)."""

import torch


class BaseModel(torch.nn.Module):
    def __init__(self, model_config, diffusion_model: torch.nn.Module):
        super().__init__()
        self.model_config = model_config
        self.latent_format = getattr(model_config, "latent_format", None)
        self.diffusion_model = diffusion_model
