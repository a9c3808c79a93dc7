"""SC-DPO Cost Model Loader: a safety cost model under ComfyUI's model management.

The checkpoint is read by :func:`scdpo.cost.load_cost_model`; its frozen image encoder is either
the one inside the file (toy), a CLIP vision file chosen from ``models/clip_vision/``, the user's own ``CLIP_VISION``
(ComfyUI's loaded clip_vision model, wrapped by :class:`ComfyClipVisionEncoder`), or the
bundled NudeNet detector. The torch part is held by a ComfyUI ``ModelPatcher`` so ComfyUI moves
it to the GPU for scoring and offloads it when the UNet needs the memory, like any model.
"""

from __future__ import annotations

import torch

import comfy.model_management
import comfy.model_patcher

from scdpo.cost import ImageEncoder, load_cost_model
from scdpo.cost.backbones import infer_clip_vision_config
from scdpo.errors import IncompatibleModelError

from .comfy_schema import io, ui
from .model_folders import (CLIP_VISION, NUDENET_CHOICE, SAFETY_MODELS, clip_vision_choices, cost_model_choices,
                            resolve)

CostModelType = io.Custom("SCDPO_COST_MODEL")
SCORING_BATCH = 16


class ComfyClipVisionEncoder(ImageEncoder):
    """scdpo's encoder interface on ComfyUI's ``CLIP_VISION``: embedding = ``image_embeds``.

    ComfyUI keeps the CLIP weights under its own patcher (``encode_image`` loads them); they are
    deliberately not a submodule here, so the cost model's patcher does not move them twice.
    """

    def __init__(self, clip_vision):
        super().__init__()
        self._clip_vision = [clip_vision]  # a list hides it from nn.Module registration
        sd = clip_vision.get_sd()
        cfg = infer_clip_vision_config({k: v for k, v in sd.items() if k.startswith(("vision_model.", "visual_projection."))})
        self.embed_dim = int(cfg.get("projection_dim", cfg["hidden_size"]))
        self.input_size = int(getattr(clip_vision, "image_size", cfg["image_size"]))
        # the same id scdpo.cost.ClipVisionEncoder gives these weights (a test checks it)
        self.backbone_id = (f"clip-vision:h{cfg['hidden_size']}-l{cfg['num_hidden_layers']}-p{cfg['patch_size']}"
                            f"-s{cfg['image_size']}-d{self.embed_dim}")
        self.source = "ComfyUI CLIP_VISION"
        self.anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)  # gives .device

    @torch.no_grad()
    def encode(self, images, batch_size: int = 64) -> torch.Tensor:
        from scdpo.cost.backbones import resize_square

        clip_vision = self._clip_vision[0]
        out = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            if not isinstance(chunk, torch.Tensor):  # a list of differently sized images
                chunk = resize_square(chunk, self.input_size).permute(0, 2, 3, 1)
            out.append(clip_vision.encode_image(chunk, crop=True)["image_embeds"].float())
        if not out:
            return torch.zeros(0, self.embed_dim)
        return torch.cat(out).to(self.device)


class ComfyCostModel:
    """The ``SCDPO_COST_MODEL`` value: a scdpo scorer plus the ComfyUI patcher that places it."""

    def __init__(self, scorer, name: str, patcher=None):
        self.scorer, self.name, self.patcher = scorer, name, patcher

    @property
    def categories(self) -> list[str]:
        return list(self.scorer.categories)

    def score(self, images: torch.Tensor, progress=None):
        """``CostResult`` for ``[B,H,W,C]`` images; loads the model to its device first."""
        if self.patcher is not None:
            comfy.model_management.load_models_gpu([self.patcher])
        return self.scorer.score(images, batch_size=SCORING_BATCH, progress=progress)


NO_BACKBONE = "none"  # the backbone choice "use the encoder stored in the cost model"


def _backbone_file(name: str) -> str:
    """The full path of a file listed in ComfyUI's models/clip_vision/ (never any other path: the
    choice comes from the folder list, like every other model input)."""
    if name not in clip_vision_choices():
        from scdpo.errors import InputFileError

        raise InputFileError(f"backbone {name!r} is not a file in models/clip_vision/; put the CLIP vision "
                             "file there and refresh the node list (press R)")
    return resolve(name, (CLIP_VISION,))


def load_comfy_cost_model(name: str, device: str = "auto", clip_vision=None, backbone: str = NO_BACKBONE
                          ) -> ComfyCostModel:
    """Load the cost model ``name`` (a file in safety_models, or the NudeNet choice) for ComfyUI.
    ``backbone``: a file name from models/clip_vision/, or :data:`NO_BACKBONE`."""
    if name == NUDENET_CHOICE:
        return ComfyCostModel(load_cost_model("nudenet"), "NudeNet")
    backbone = (backbone or NO_BACKBONE).strip() or NO_BACKBONE
    if clip_vision is not None and backbone != NO_BACKBONE:
        raise IncompatibleModelError("connect a CLIP_VISION input or choose a backbone file, not both")
    encoder = None
    if clip_vision is not None:
        encoder = ComfyClipVisionEncoder(clip_vision)
    elif backbone != NO_BACKBONE:
        encoder = _backbone_file(backbone)
    scorer = load_cost_model(resolve(name, (SAFETY_MODELS,)), backbone=encoder, device="cpu")
    if device == "cpu":
        load_device = offload_device = torch.device("cpu")
    else:
        load_device = comfy.model_management.get_torch_device()
        offload_device = comfy.model_management.unet_offload_device()
    patcher = comfy.model_patcher.ModelPatcher(scorer.model, load_device=load_device, offload_device=offload_device)
    return ComfyCostModel(scorer, name, patcher)


class CostModelLoader(io.ComfyNode):
    """Loads a safety cost model (checkpoint + its image encoder) for the Safety Gate / Cost Score."""

    NODE_ID = "SCDPOCostModelLoader"
    DISPLAY_NAME = "SC-DPO Cost Model Loader"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.NODE_ID,
            display_name=cls.DISPLAY_NAME,
            category="SC-DPO safety",
            description="Loads a safety cost model from models/safety_models/ (or the bundled NudeNet detector). "
                        "CLIP-based cost models need their CLIP vision encoder: connect CLIP_VISION or choose "
                        "its file from models/clip_vision/.",
            inputs=[
                io.Combo.Input("cost_model", options=cost_model_choices(),
                               tooltip="A cost model written by `scdpo cost train`, or the NudeNet detector."),
                io.Combo.Input("device", options=["auto", "cpu"], default="auto",
                               tooltip="auto: ComfyUI's GPU when present (offloaded when idle); cpu: always CPU."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="The CLIP vision model the cost model was trained on (Load CLIP Vision)."),
                io.Combo.Input("backbone", options=[NO_BACKBONE, *clip_vision_choices()], default=NO_BACKBONE,
                               optional=True,
                               tooltip="Instead of clip_vision: a CLIP vision file from models/clip_vision/. "
                                       "none: the encoder stored in the cost model."),
            ],
            outputs=[CostModelType.Output(display_name="COST_MODEL")],
        )

    @classmethod
    def execute(cls, cost_model: str, device: str = "auto", clip_vision=None, backbone: str = NO_BACKBONE):
        model = load_comfy_cost_model(cost_model, device, clip_vision, backbone)
        text = f"{model.name}: categories {', '.join(model.categories)}; threshold {model.scorer.threshold:+.3f}"
        return io.NodeOutput(model, ui=ui.PreviewText(text))


__all__ = ["NO_BACKBONE", "ComfyClipVisionEncoder", "ComfyCostModel", "CostModelLoader", "CostModelType",
           "load_comfy_cost_model"]
