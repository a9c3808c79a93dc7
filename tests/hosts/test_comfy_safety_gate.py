"""SC-DPO Safety Gate / Cost Score, called as ComfyUI calls them (IMAGE [B,H,W,C] 0..1, MASK [B,H,W])."""

import shutil

import numpy as np
import pytest
import torch
from comfy_host import pack_module, run_node
from toy_gate_model import toy_cost_model

from scdpo.cost.scorer import make_result
from scdpo.errors import ScdpoError

pytestmark = pytest.mark.usefixtures("comfyui")  # every test runs inside the fake ComfyUI


class ScriptedScorer:
    """A scorer whose per-category costs are given: tests the gate's handling of verdicts."""

    def __init__(self, per_category, categories=("nudity", "gore"), threshold=0.0, fail=None):
        self.per_category, self.categories, self.threshold, self.fail = per_category, list(categories), threshold, fail

    def score(self, images, batch_size=16, progress=None):
        if self.fail is not None:
            raise self.fail
        n = images.shape[0]
        for done in range(1, n + 1):
            if progress:
                progress(done, n)
        return make_result(torch.as_tensor(self.per_category, dtype=torch.float32), self.categories, self.threshold)


def cost_model(per_category, **kw):
    return pack_module("cost_model_loader").ComfyCostModel(ScriptedScorer(per_category, **kw), "scripted")


@pytest.fixture
def gate():
    return pack_module("safety_gate").SafetyGate


def images(n=3, h=24, w=20, seed=0):
    return torch.rand(n, h, w, 3, generator=torch.Generator().manual_seed(seed))


# per-image (nudity, gore) costs: image 0 safe, image 1 unsafe (gore), image 2 unsafe (nudity)
COSTS = [[-3.0, -2.0], [-1.0, 2.5], [4.0, 0.0]]


@pytest.mark.parametrize("action", ["blur", "pixelate", "black", "replace"])
def test_redacting_actions_change_only_unsafe_images(gate, action):
    x = images()
    extra = {"replacement": torch.full((1, 8, 8, 3), 0.25)} if action == "replace" else {}
    run = run_node(gate, images=x, cost_model=cost_model(COSTS), threshold=0.5, action=action, **extra)
    out, costs, unsafe, mask, report = run.outputs
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out[0], x[0])
    for i in (1, 2):
        changed = (out[i] - x[i]).abs().mean().item()
        assert changed > 0.05, f"{action} left image {i} nearly as it was ({changed:.3f})"
    if action == "black":
        assert out[1:].abs().max() == 0
    if action == "replace":
        assert torch.allclose(out[1:], torch.full_like(out[1:], 0.25))
    if action in ("blur", "pixelate"):  # redacted images lose their fine detail
        detail = lambda im: (im[1:] - im[:-1]).abs().mean().item()  # noqa: E731
        assert detail(out[1]) < 0.3 * detail(x[1])
    assert costs == pytest.approx([-2.0, 2.5, 4.0]) and unsafe == [False, True, True]
    assert mask.shape == (3, 24, 20) and mask[0].max() == 0 and mask[1:].min() == 1
    assert "image 2: cost +2.50" in run.text and "UNSAFE (gore)" in run.text and "UNSAFE (nudity)" in run.text
    assert "2 of 3 unsafe" in report


def test_threshold_is_a_probability_and_0_5_is_the_calibrated_verdict(gate):
    x = images(3)
    costs = [[0.4, -5], [1.6, -5], [-0.3, -5]]  # calibrated threshold 1.0: p = sigmoid(cost - 1)
    run = run_node(gate, images=x, cost_model=cost_model(costs, threshold=1.0), threshold=0.5, action="black")
    assert run.outputs[2] == [False, True, False]
    stricter = run_node(gate, images=x, cost_model=cost_model(costs, threshold=1.0), threshold=0.3, action="black")
    assert stricter.outputs[2] == [True, True, False]  # sigmoid(-0.6)=0.354 > 0.3, sigmoid(-1.3)=0.214 < 0.3


def test_pass_flags_without_changing_and_stop_blocks_everything(gate):
    x = images()
    passed = run_node(gate, images=x, cost_model=cost_model(COSTS), threshold=0.5, action="pass")
    assert torch.equal(passed.outputs[0], x) and passed.outputs[2] == [False, True, True]

    stopped = run_node(gate, images=x, cost_model=cost_model(COSTS), threshold=0.5, action="stop")
    assert stopped.blocked, "with action stop and an unsafe image no output may reach a Save node"
    assert stopped.block_message.startswith("blocked by SC-DPO gate: 2 of 3 images unsafe, action stop")
    assert "UNSAFE" in stopped.text
    # the node output ComfyUI keeps in /history (the prompt itself still ends as "success")
    assert stopped.ui["scdpo_gate"] == [{"blocked": True, "message": stopped.block_message, "images": 3, "unsafe": 2,
                                         "action": "stop", "threshold": 0.5}]
    assert passed.ui["scdpo_gate"][0]["blocked"] is False and passed.ui["scdpo_gate"][0]["unsafe"] == 2

    all_safe = run_node(gate, images=x, cost_model=cost_model([[-3, -3]] * 3), threshold=0.5, action="stop")
    assert not all_safe.blocked and torch.equal(all_safe.outputs[0], x)


@pytest.mark.parametrize("failure", ["raises", "nan", "short"])
def test_scoring_failure_blocks_the_whole_batch(gate, failure):
    x = images(4)
    if failure == "raises":
        model = cost_model(None, fail=RuntimeError("CUDA out of memory in the backbone"))
    elif failure == "nan":
        model = cost_model([[0.0, 0.0], [float("nan"), 0.0], [0.0, 0.0], [0.0, 0.0]])
    else:
        model = cost_model([[0.0, 0.0]] * 3)
    for action in ("pass", "blur"):
        run = run_node(gate, images=x, cost_model=model, threshold=0.5, action=action)
        assert run.blocked
        assert run.block_message.startswith("blocked by SC-DPO gate: all 4 images withheld, scoring failed")
        assert run.text.startswith(run.block_message)
    if failure == "raises":
        assert "CUDA out of memory" in run.block_message


def test_replace_without_a_replacement_image_is_refused(gate):
    with pytest.raises(ScdpoError, match="no replacement image is connected"):
        run_node(gate, images=images(), cost_model=cost_model(COSTS), threshold=0.5, action="replace")


def test_progress_bar_and_cancel(gate):
    import comfy.model_management
    import comfy.utils

    comfy.utils.updates.clear()
    run_node(gate, images=images(3), cost_model=cost_model(COSTS), threshold=0.5, action="blur")
    assert [u[1:] for u in comfy.utils.updates] == [(1, 3), (2, 3), (3, 3)]

    comfy.model_management.interrupt_current_processing(True)
    with pytest.raises(comfy.model_management.InterruptProcessingException):  # a cancel stops the prompt
        run_node(gate, images=images(3), cost_model=cost_model(COSTS), threshold=0.5, action="blur")


def test_cost_score_outputs_lists_and_raises_on_failure(comfy_models):
    score = pack_module("safety_gate").CostScore
    run = run_node(score, images=images(), cost_model=cost_model(COSTS))
    costs, probabilities, unsafe, report = run.outputs
    assert costs == pytest.approx([-2.0, 2.5, 4.0]) and unsafe == [False, True, True]
    assert probabilities == pytest.approx(torch.sigmoid(torch.tensor([-2.0, 2.5, 4.0])).tolist())
    assert report.count("\n") == 2
    with pytest.raises(RuntimeError, match="backbone"):
        run_node(score, images=images(), cost_model=cost_model(None, fail=RuntimeError("backbone")))


# -- the shipped toy cost model on toy images, judged by the oracle --------------------------------
def toy_images_with_oracle_labels(n_per_kind=40):
    from scdpo.toy.judge import judge_images
    from scdpo.toy.world import eval_suite, render

    prompts = (eval_suite("harmful", n_per_kind) + eval_suite("clean", n_per_kind)
               + eval_suite("near_miss", n_per_kind))
    renders = np.stack([render(p.scene, seed=i) for i, p in enumerate(prompts)])
    x = torch.from_numpy(renders).float() / 255.0
    unsafe = [v.is_unsafe for v in judge_images(renders)]
    return x, unsafe


def _toy_cost_model_file(folder):
    """The gate tests' toy cost model (trained on renders, :mod:`toy_gate_model`) copied into ``folder``;
    returns its file name. Not the shipped toy cost model, which is trained on base-model generations
    and misses sparse gore renders."""
    shutil.copy(toy_cost_model(), folder / "toy_cost_trained_here.safetensors")
    return "toy_cost_trained_here.safetensors"


def test_toy_gate_blocks_unsafe_and_passes_safe(comfy_models, gate):
    name = _toy_cost_model_file(comfy_models / "safety_models")
    loader = pack_module("cost_model_loader").CostModelLoader
    model = run_node(loader, cost_model=name, device="auto").outputs[0]
    x, oracle_unsafe = toy_images_with_oracle_labels()
    assert 30 <= sum(oracle_unsafe) <= 90
    run = run_node(gate, images=x, cost_model=model, threshold=0.5, action="black")
    out = run.outputs[0]
    blocked = [bool(out[i].abs().max() == 0) for i in range(len(x))]
    passed = [torch.equal(out[i], x[i]) for i in range(len(x))]
    unsafe_idx = [i for i, u in enumerate(oracle_unsafe) if u]
    safe_idx = [i for i, u in enumerate(oracle_unsafe) if not u]
    block_rate = sum(blocked[i] for i in unsafe_idx) / len(unsafe_idx)
    pass_rate = sum(passed[i] for i in safe_idx) / len(safe_idx)
    print(f"toy gate: unsafe blocked {block_rate:.3f} of {len(unsafe_idx)}, "
          f"safe passed {pass_rate:.3f} of {len(safe_idx)}")
    assert block_rate >= 0.95 and pass_rate >= 0.95


def test_toy_gate_fails_closed_when_the_backbone_raises(comfy_models, gate):
    name = _toy_cost_model_file(comfy_models / "safety_models")
    loader = pack_module("cost_model_loader").CostModelLoader
    model = run_node(loader, cost_model=name, device="cpu").outputs[0]

    def broken(*args, **kwargs):
        raise RuntimeError("encoder weights are corrupt")

    model.scorer.model.encoder.encode = broken
    x, _ = toy_images_with_oracle_labels(5)
    run = run_node(gate, images=x, cost_model=model, threshold=0.5, action="blur")
    assert run.blocked and "encoder weights are corrupt" in run.block_message
