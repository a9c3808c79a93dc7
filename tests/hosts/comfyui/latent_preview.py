"""Stand-in for ComfyUI's ``latent_preview``: the previewer a sampler's step callback asks for.

As at a125cd84: ``get_previewer(device, latent_format)`` returns None when previews are off
(``--preview-method none``, here :data:`PREVIEW_METHOD`), else a previewer whose
``decode_latent_to_preview_image(format, x0)`` returns ``(format, PIL image, max size)`` of the first
latent of the batch; ComfyUI's callback passes that tuple to its progress bar, whose global hook
(the server) sends it to the browser. Latent2RGB maps the latent's channels to RGB linearly; the
stand-in's "latents" are ``[B,3,H,W]`` in -1..1 with the identity map, so a test controls exactly
which picture each preview frame shows.
"""

import torch
from PIL import Image

PREVIEW_METHOD = "latent2rgb"  # comfy.cli_args.args.preview_method (none | auto | latent2rgb | taesd)
MAX_PREVIEW_RESOLUTION = 512  # args.preview_size


def preview_to_image(latent_image):
    pixels = ((latent_image + 1.0) / 2.0).clamp(0, 1).mul(0xFF).to(device="cpu", dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


class LatentPreviewer:
    def decode_latent_to_preview(self, x0):
        pass

    def decode_latent_to_preview_image(self, preview_format, x0):
        return ("JPEG", self.decode_latent_to_preview(x0), MAX_PREVIEW_RESOLUTION)


class Latent2RGBPreviewer(LatentPreviewer):
    def decode_latent_to_preview(self, x0):
        return preview_to_image(x0[0].movedim(0, -1))


def get_previewer(device, latent_format):
    return None if PREVIEW_METHOD == "none" else Latent2RGBPreviewer()
