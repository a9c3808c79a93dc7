"""Stand-in for comfy.clip_vision.ClipVisionModel over a transformers CLIP vision tower:
``encode_image([B,H,W,C] 0..1)`` -> Output with ``image_embeds`` [B,D], ``last_hidden_state``,
``penultimate_hidden_states``; CLIP preprocessing (short side resized, centre crop, 8-bit rounding)."""

import torch
import torch.nn.functional as F

import comfy.model_management
import comfy.model_patcher

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


class Output(dict):
    def __getattr__(self, key):
        return self[key]


def clip_preprocess(image, size=224, crop=True):
    x = image[..., :3].movedim(-1, 1).float()
    if x.shape[-2:] != (size, size):
        h, w = x.shape[-2:]
        scale = size / min(h, w)
        new = (round(scale * h), round(scale * w)) if crop else (size, size)
        x = F.interpolate(x, size=new, mode="bicubic", antialias=True)
        top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
        x = x[..., top:top + size, left:left + size]
    x = torch.clip(255.0 * x, 0, 255).round() / 255.0
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


class ClipVisionModel:
    def __init__(self, hf_model):
        self.model = hf_model.eval()
        self.image_size = hf_model.config.image_size
        self.load_device = comfy.model_management.text_encoder_device()
        self.patcher = comfy.model_patcher.ModelPatcher(self.model, self.load_device,
                                                        comfy.model_management.text_encoder_offload_device())
        self.calls = 0

    def get_sd(self):
        return self.model.state_dict()

    @torch.no_grad()
    def encode_image(self, image, crop=True):
        comfy.model_management.load_model_gpu(self.patcher)
        self.calls += 1
        out = self.model(pixel_values=clip_preprocess(image, self.image_size, crop), output_hidden_states=True)
        return Output(image_embeds=out.image_embeds, last_hidden_state=out.last_hidden_state,
                      penultimate_hidden_states=out.hidden_states[-2])
