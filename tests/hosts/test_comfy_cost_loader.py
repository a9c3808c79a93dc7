"""SC-DPO Cost Model Loader: CLIP_VISION from ComfyUI, a backbone path, NudeNet; model management."""

import json

import pytest
import torch
from comfy_host import pack_module, run_node

from scdpo.cost import ClipVisionEncoder, SafetyCostModel, load_cost_model
from scdpo.errors import IncompatibleModelError, InputFileError

pytestmark = pytest.mark.usefixtures("comfyui")  # every test runs inside the fake ComfyUI

CATEGORIES = ["nudity", "gore"]


def small_clip(seed):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=1,
                           patch_size=8, image_size=32, projection_dim=24, hidden_act="quick_gelu")
    return CLIPVisionModelWithProjection(cfg).eval()


def save_clip_cost_model(path, clip, seed=0):
    torch.manual_seed(seed)
    model = SafetyCostModel(ClipVisionEncoder(clip), CATEGORIES, feature_dim=16, threshold=0.1)
    for p in list(model.adapter.parameters()) + list(model.head.parameters()):
        torch.nn.init.normal_(p, std=0.5)
    model.save(path)
    return model


@pytest.fixture
def loader():
    return pack_module("cost_model_loader").CostModelLoader


def test_clip_vision_input_scores_like_scdpo_and_is_model_managed(comfy_models, loader):
    import comfy.clip_vision
    import comfy.model_management

    clip = small_clip(0)
    path = comfy_models / "safety_models" / "clip_cost.safetensors"
    save_clip_cost_model(path, clip)
    assert loader.INPUT_TYPES()["required"]["cost_model"][1]["options"] == [
        "clip_cost.safetensors", "NudeNet (bundled detector)"]

    comfy_clip = comfy.clip_vision.ClipVisionModel(clip)
    run = run_node(loader, cost_model="clip_cost.safetensors", device="auto", clip_vision=comfy_clip)
    model = run.outputs[0]
    assert model.patcher.load_device == comfy.model_management.get_torch_device()
    encoder = pack_module("cost_model_loader").ComfyClipVisionEncoder(comfy_clip)
    assert encoder.backbone_id == ClipVisionEncoder(clip).backbone_id
    assert "nudity, gore" in run.text

    comfy.model_management.loaded_patchers.clear()
    x = torch.rand(5, 40, 48, 3, generator=torch.Generator().manual_seed(1))
    gate = pack_module("safety_gate").SafetyGate
    gated = run_node(gate, images=x, cost_model=model, threshold=0.5, action="pass")
    assert model.patcher in comfy.model_management.loaded_patchers  # ComfyUI placed the head before scoring
    assert comfy_clip.patcher in comfy.model_management.loaded_patchers  # and the user's CLIP, via its own patcher
    reference = load_cost_model(path, backbone=ClipVisionEncoder(clip)).score(x)
    assert torch.allclose(torch.tensor(gated.outputs[1]), reference.cost, atol=0.05)  # 8-bit rounding in ComfyUI's CLIP preprocessing
    assert gated.outputs[2] == [bool(u) for u in reference.unsafe] or (reference.cost - 0.1).abs().min() < 0.05


def test_other_clip_weights_are_refused(comfy_models, loader):
    import comfy.clip_vision

    save_clip_cost_model(comfy_models / "safety_models" / "clip_cost.safetensors", small_clip(0))
    with pytest.raises(IncompatibleModelError, match="other weights of the backbone"):
        run_node(loader, cost_model="clip_cost.safetensors", device="cpu",
                 clip_vision=comfy.clip_vision.ClipVisionModel(small_clip(1)))


def test_backbone_from_clip_vision_folder(comfy_models, loader):
    from scdpo.fileio import save_safetensors_atomic

    clip = small_clip(0)
    save_clip_cost_model(comfy_models / "safety_models" / "clip_cost.safetensors", clip)
    save_safetensors_atomic(clip.state_dict(), comfy_models / "clip_vision" / "tiny_clip.safetensors",
                            {"config": json.dumps(clip.config.to_dict())})
    run = run_node(loader, cost_model="clip_cost.safetensors", device="cpu", backbone="tiny_clip.safetensors")
    assert run.outputs[0].patcher.load_device == torch.device("cpu")
    with pytest.raises(IncompatibleModelError, match="needs|not stored|backbone"):
        run_node(loader, cost_model="clip_cost.safetensors", device="cpu")  # a CLIP cost model needs its encoder
    with pytest.raises(AssertionError, match="value_not_in_list: backbone"):  # only listed files can be chosen
        run_node(loader, cost_model="clip_cost.safetensors", device="cpu", backbone="nope.safetensors")
    with pytest.raises(InputFileError, match="models/clip_vision/"):
        pack_module("cost_model_loader").load_comfy_cost_model("clip_cost.safetensors", "cpu",
                                                               backbone="nope.safetensors")


def test_nudenet_choice(comfy_models, loader):
    pytest.importorskip("nudenet")
    model = run_node(loader, cost_model="NudeNet (bundled detector)", device="auto").outputs[0]
    assert model.patcher is None and "nudity" in " ".join(model.categories).lower()
    result = model.score(torch.rand(2, 64, 48, 3, generator=torch.Generator().manual_seed(0)))
    assert result.cost.shape == (2,) and torch.isfinite(result.cost).all()
