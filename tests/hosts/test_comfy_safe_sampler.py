"""SC-DPO Safe KSampler: sampling as KSampler, and no live preview of an unsafe image reaches the
browser. ComfyUI sends previews from the sampler's step callback through ``ProgressBar`` to the
server's global progress hook (``main.hijack_progress``); the tests install such a hook and record
every frame it would have sent."""

import shutil

import numpy as np
import pytest
import torch
from comfy_host import pack_module, run_node
from toy_gate_model import oracle_unsafe, toy_cost_model, toy_renders

pytestmark = pytest.mark.usefixtures("comfyui")  # every test runs inside the fake ComfyUI


@pytest.fixture(scope="module")
def pictures():
    """(unsafe, safe) toy renders on which the oracle and the toy cost model agree clearly."""
    from scdpo.cost import CostScorer, load_safety_cost_model

    _, images, unsafe = toy_renders(30, 0, 30)
    result = CostScorer(load_safety_cost_model(toy_cost_model())).score(images)
    margin = [float(c) - result.threshold for c in result.cost]
    bad = next(im for im, u, m in zip(images, unsafe, margin) if u and m > 2)
    good = next(im for im, u, m in zip(images, unsafe, margin) if not u and m < -2)
    return bad, good


def as_latent(picture) -> torch.Tensor:
    """A picture as the fake previewer's ``[1,3,H,W]`` -1..1 "latent" (its Latent2RGB map is the identity)."""
    return torch.from_numpy(np.asarray(picture, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]


@pytest.fixture
def host(comfy_models):
    """The loaded toy cost model (through the Cost Model Loader node), a stand-in SD MODEL, and the
    frames the server would have sent."""
    import comfy.sample
    import comfy.utils
    from comfy.model_base import BaseModel
    from comfy.model_patcher import ModelPatcher
    from comfy.supported_models import SD15

    shutil.copy(toy_cost_model(), comfy_models / "safety_models" / "toy_cost.safetensors")
    loader = pack_module("cost_model_loader").CostModelLoader
    cost = run_node(loader, cost_model="toy_cost.safetensors", device="cpu").outputs[0]
    model = ModelPatcher(BaseModel(SD15(), torch.nn.Linear(2, 2)), torch.device("cpu"), torch.device("cpu"))
    sent = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: sent.append((value, preview)))
    yield cost, model, sent, comfy.sample
    comfy.utils.set_progress_bar_global_hook(None)
    comfy.sample.denoiser = None


def sample(model, cost, steps=4, **extra):
    node = pack_module("safe_sampler").SafeKSampler
    latent = {"samples": torch.zeros(1, 3, 16, 16)}
    inputs = dict(model=model, cost_model=cost, seed=3, steps=steps, cfg=7.0, sampler_name="euler", scheduler="normal",
                  positive=[], negative=[], latent_image=latent, denoise=1.0, preview_threshold=0.5, previews="gate")
    return run_node(node, **{**inputs, **extra})


def test_unsafe_previews_never_reach_the_browser_and_safe_ones_do(host, pictures):
    cost, model, sent, sample_module = host
    bad, good = pictures
    frames = [good, bad, bad, good]  # what the model "draws" at each step
    sample_module.denoiser = lambda step, x: as_latent(frames[step])
    run = sample(model, cost)
    assert [value for value, _ in sent] == [1, 2, 3, 4]  # the progress bar moves at every step
    previews = [preview for _, preview in sent]
    assert [p is not None for p in previews] == [True, False, False, True]
    shown = [p[1] for p in previews if p is not None]
    assert oracle_unsafe(shown) == [False, False] and all(p[0] == "JPEG" for p in previews if p is not None)
    assert torch.equal(run.outputs[0]["samples"], as_latent(good))  # the LATENT is the sampler's result
    assert run.text == "previews: 2 shown, 2 hidden as unsafe, 0 hidden as unscored"


def test_a_preview_that_cannot_be_scored_is_not_shown(host, pictures):
    cost, model, sent, sample_module = host
    sample_module.denoiser = lambda step, x: as_latent(pictures[1])

    def broken(images, progress=None):
        raise RuntimeError("CUDA out of memory")

    cost.score = broken
    run = sample(model, cost, steps=3)
    assert [preview for _, preview in sent] == [None, None, None]
    assert "0 shown, 0 hidden as unsafe, 3 hidden as unscored" in run.text
    assert "blocked by SC-DPO gate: scoring failed (RuntimeError: CUDA out of memory)" in run.text


def test_cancel_while_scoring_a_preview_cancels_the_prompt(host, pictures):
    import comfy.model_management

    cost, model, sent, sample_module = host
    sample_module.denoiser = lambda step, x: as_latent(pictures[1])

    def cancelled(images, progress=None):
        raise comfy.model_management.InterruptProcessingException()

    cost.score = cancelled
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        sample(model, cost, steps=2)


def test_hide_shows_no_preview_and_scores_nothing(host, pictures):
    cost, model, sent, sample_module = host
    sample_module.denoiser = lambda step, x: as_latent(pictures[1])
    cost.score = lambda *a, **k: pytest.fail("previews = hide must not score")
    run = sample(model, cost, steps=2, previews="hide")
    assert [preview for _, preview in sent] == [None, None] and run.text == "previews: hidden (previews = hide)"


def test_with_previews_off_in_comfyui_nothing_is_scored(host, pictures):
    import latent_preview

    cost, model, sent, sample_module = host
    sample_module.denoiser = lambda step, x: as_latent(pictures[0])
    cost.score = lambda *a, **k: pytest.fail("no preview, nothing to score")
    latent_preview.PREVIEW_METHOD = "none"  # ComfyUI's default at a125cd84: --preview-method none
    run = sample(model, cost, steps=2)
    assert [preview for _, preview in sent] == [None, None] and "ComfyUI's preview method is none" in run.text


def test_the_cost_model_is_loaded_together_with_the_unet_and_the_input_model_is_untouched(host, pictures):
    import comfy.model_management

    cost, model, sent, sample_module = host
    sample_module.denoiser = lambda step, x: as_latent(pictures[1])
    comfy.model_management.loaded_patchers.clear()
    sample(model, cost, steps=1)
    sampled = sample_module.calls[-1]["model"]
    assert sampled is not model and sampled.model is model.model  # a clone: the graph's MODEL is unchanged
    assert model.get_nested_additional_models() == []
    loaded = comfy.model_management.loaded_patchers
    assert loaded[0] is sampled and any(p.model is cost.patcher.model for p in loaded[1:2])
    assert sample_module.calls[-1]["seed"] == 3 and sample_module.calls[-1]["sampler_name"] == "euler"
