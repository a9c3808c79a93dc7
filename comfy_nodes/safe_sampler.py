"""SC-DPO Safe KSampler: ComfyUI's KSampler whose live previews pass the safety gate first.

ComfyUI sends a sampler's live previews (``--preview-method latent2rgb | taesd | auto``) to the
browser from the sampler's step callback, before any downstream node runs: the Safety Gate after
VAE Decode never sees them. This node samples like KSampler (the same inputs and ComfyUI's own
``comfy.sample`` functions) but builds that step callback itself (:class:`GatedPreviews`): each
preview frame ComfyUI's previewer makes is scored by the cost model (``scdpo.gate.judge_preview``)
and handed to ComfyUI's progress hook only when it is safe. Unsafe frames, and frames that could not
be scored, are never sent; the progress bar still advances. ``previews = hide`` sends none at all.

The cost model is attached to the sampled model as an additional model, so ComfyUI loads it to the
GPU together with the UNet instead of evicting one for the other at every preview.
"""

from __future__ import annotations

import numpy as np
import torch

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview

from scdpo import gate

from .comfy_schema import io, ui
from .cost_model_loader import CostModelType

GATE, HIDE = "gate", "hide"
PREVIEW_MODES = [GATE, HIDE]
PREVIEW_FORMAT = "JPEG"  # what ComfyUI's own sampler callback asks its previewer for
ADDITIONAL_MODELS_KEY = "scdpo_preview_cost_model"


def preview_batch(frame) -> torch.Tensor:
    """A previewer's PIL image → the ``[1,H,W,3]`` float 0..1 batch the cost model scores."""
    pixels = np.asarray(frame.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels)[None]


class GatedPreviews:
    """The sampler's step callback ``(step, x0, x, total_steps)``: ComfyUI's progress, and a preview
    frame only when the cost model judges it safe at ``threshold`` (a probability, as the gate's)."""

    def __init__(self, model, steps: int, cost_model, threshold: float, mode: str):
        self.previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format) if mode == GATE \
            else None
        self.bar = comfy.utils.ProgressBar(steps)
        self.cost_model, self.threshold = cost_model, threshold
        self.shown = self.unsafe = self.failed = 0
        self.last_failure: str | None = None
        interrupt = getattr(comfy.model_management, "InterruptProcessingException", None)
        self.passthrough = (interrupt,) if interrupt is not None else ()

    def __call__(self, step: int, x0: torch.Tensor, x: torch.Tensor, total_steps: int) -> None:
        preview = None
        if self.previewer is not None:
            frame = self.previewer.decode_latent_to_preview_image(PREVIEW_FORMAT, x0)  # (format, PIL image, size)
            verdict = gate.judge_preview(preview_batch(frame[1]), self.cost_model.score, self.threshold,
                                         self.passthrough)
            if verdict.status == gate.SAFE:
                preview, self.shown = frame, self.shown + 1
            elif verdict.failed:
                self.failed, self.last_failure = self.failed + 1, verdict.why()
            else:
                self.unsafe += 1
        self.bar.update_absolute(step + 1, total_steps, preview)

    def report(self, mode: str) -> str:
        if mode == HIDE:
            return "previews: hidden (previews = hide)"
        if self.previewer is None:
            return "previews: none (ComfyUI's preview method is none)"
        text = f"previews: {self.shown} shown, {self.unsafe} hidden as unsafe, {self.failed} hidden as unscored"
        if self.last_failure:
            text += f"\n{gate.blocked_message(self.last_failure)}"
        return text


def with_cost_model(model, cost_model):
    """A clone of ``model`` that makes ComfyUI load the cost model together with it (when both are
    ComfyUI-managed; the NudeNet detector runs outside ComfyUI's model management)."""
    patcher = getattr(cost_model, "patcher", None)
    if patcher is None or not hasattr(model, "set_additional_models"):
        return model
    model = model.clone()
    model.set_additional_models(ADDITIONAL_MODELS_KEY, [patcher])
    return model


class SafeKSampler(io.ComfyNode):
    """KSampler with gated live previews: LATENT out, as KSampler."""

    NODE_ID = "SCDPOSafeKSampler"
    DISPLAY_NAME = "SC-DPO Safe KSampler"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.NODE_ID,
            display_name=cls.DISPLAY_NAME,
            category="SC-DPO safety",
            description="KSampler whose live previews are scored by the cost model and sent to the browser only "
                        "when safe (unsafe or unscored frames are never shown). ComfyUI's plain KSampler sends every "
                        "preview before any gate can see it.",
            inputs=[
                io.Model.Input("model"),
                CostModelType.Input("cost_model", tooltip="Scores each live preview (the Safety Gate's cost model)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True),
                io.Int.Input("steps", default=20, min=1, max=10000),
                io.Float.Input("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS),
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative"),
                io.Latent.Input("latent_image"),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01),
                io.Float.Input("preview_threshold", default=0.5, min=0.01, max=0.99, step=0.01,
                               tooltip="A preview is shown only when p(unsafe) is at most this; 0.5 = the cost "
                                       "model's calibrated threshold, lower = stricter."),
                io.Combo.Input("previews", options=PREVIEW_MODES, default=GATE,
                               tooltip="gate: score each preview, show the safe ones; hide: show none."),
            ],
            outputs=[io.Latent.Output(display_name="LATENT")],
        )

    @classmethod
    def execute(cls, model, cost_model, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                positive, negative, latent_image: dict, denoise: float = 1.0, preview_threshold: float = 0.5,
                previews: str = GATE):
        latent = latent_image["samples"]
        fix_channels = getattr(comfy.sample, "fix_empty_latent_channels", None)
        if fix_channels is not None:
            latent = fix_channels(model, latent)
        noise = comfy.sample.prepare_noise(latent, seed, latent_image.get("batch_index"))
        callback = GatedPreviews(model, steps, cost_model, preview_threshold, previews)
        samples = comfy.sample.sample(
            with_cost_model(model, cost_model) if previews == GATE else model, noise, steps, cfg, sampler_name,
            scheduler, positive, negative, latent, denoise=denoise, noise_mask=latent_image.get("noise_mask"),
            callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed,
        )
        out = dict(latent_image)
        out["samples"] = samples
        return io.NodeOutput(out, ui=ui.PreviewText(callback.report(previews)))


__all__ = ["GatedPreviews", "PREVIEW_MODES", "SafeKSampler", "preview_batch", "with_cost_model"]
