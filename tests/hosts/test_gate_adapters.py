"""Both hosts gate through scdpo.gate: the same image, cost and action give the same pixels and the
same verdict in ComfyUI's Safety Gate and in the A1111 extension."""

import sys

import numpy as np
import pytest
import torch
from comfy_host import pack_module, run_node
from fake_hosts import REPO
from PIL import Image

from scdpo import gate as core
from scdpo.cost.scorer import make_result

pytestmark = pytest.mark.usefixtures("comfyui", "webui")


@pytest.fixture
def a1111_gate(webui):
    # as scripts/scdpo_safety.py does; the webui fixture restores sys.path and forgets scdpo_a1111
    sys.path.append(str(REPO / "a1111_extension"))
    from scdpo_a1111 import gate

    return gate


class Scorer:
    """Per-category costs given by the test, for ComfyUI (tensor batch) and A1111 (PIL list) alike."""

    categories, threshold = ["nudity", "gore"], 0.0

    def __init__(self, per_category):
        self.per_category = per_category

    def score(self, images, batch_size=16, progress=None):
        assert len(images) == len(self.per_category)
        return make_result(torch.tensor(self.per_category, dtype=torch.float32), self.categories, self.threshold)


def _renders():
    """Two toy renders (one 32 px, one upscaled to 96x64 so the sizes differ), as uint8 arrays."""
    from scdpo.toy.world import eval_suite, render

    prompts = eval_suite("harmful", 2, seed=5)
    small = render(prompts[0].scene, prompts[0].seed)
    large = np.asarray(Image.fromarray(render(prompts[1].scene, prompts[1].seed)).resize((64, 96), Image.NEAREST))
    return [small, large]


@pytest.mark.parametrize("action", ["blur", "pixelate", "black"])
def test_both_hosts_hide_an_unsafe_image_to_the_same_pixels(a1111_gate, action):
    comfy_gate = pack_module("safety_gate").SafetyGate
    model = pack_module("cost_model_loader").ComfyCostModel
    for pixels in _renders():
        comfy_in = torch.from_numpy(pixels.copy()).float()[None] / 255
        run = run_node(comfy_gate, images=comfy_in, cost_model=model(Scorer([[2.0, -1.0]]), "s"), threshold=0.5,
                       action=action)
        comfy_out = (run.outputs[0][0] * 255).round().to(torch.uint8).numpy()
        [(a1111_out, verdict)] = a1111_gate.gate_images([Image.fromarray(pixels)], Scorer([[2.0, -1.0]]).score, 0.5,
                                                       action)
        assert verdict.blocked and verdict.action == action and verdict.category == "nudity"
        assert run.outputs[2] == [True] and "UNSAFE (nudity)" in run.text
        assert np.array_equal(np.asarray(a1111_out), comfy_out)
        assert np.array_equal(comfy_out, (core.redact(comfy_in[0], action) * 255).round().to(torch.uint8).numpy())
        assert not np.array_equal(comfy_out, pixels)


def test_both_hosts_put_the_limit_at_the_same_cost(a1111_gate):
    costs = [[0.4, -5.0], [1.6, -5.0], [-0.3, -5.0], [0.16, -5.0]]  # limit at p 0.3, threshold 1: 0.1527
    scorer = Scorer(costs)
    scorer.threshold = 1.0
    x = torch.rand(4, 8, 8, 3)
    model = pack_module("cost_model_loader").ComfyCostModel(scorer, "s")
    run = run_node(pack_module("safety_gate").SafetyGate, images=x, cost_model=model, threshold=0.3, action="pass")
    pil = [Image.fromarray((im.numpy() * 255).astype(np.uint8)) for im in x]
    a1111 = a1111_gate.judge(pil, scorer.score, 0.3, "pass")
    assert run.outputs[2] == [v.unsafe for v in a1111] == [True, True, False, True]
    assert a1111[0].limit == pytest.approx(0.1527, abs=1e-4)


def test_the_webuis_actions_are_the_cores_and_old_names_still_load(a1111_gate):
    from scdpo_a1111.options import resolve_request

    assert set(a1111_gate.ACTIONS) == set(core.ACTIONS) - {core.REPLACE}  # the webui has no replacement input
    assert a1111_gate.BLOCKED_BY == core.BLOCKED_BY  # written out in the extension, which loads without scdpo
    assert pack_module("safety_gate").ACTIONS == [*core.ACTIONS[:4], "stop", "pass"]
    old = resolve_request([True, "None", 1.0, 0.5, "pass with warning"], None)  # saved settings, API requests
    assert old.action == "pass" and not old.notes
    unknown = resolve_request([True, "None", 1.0, 0.5, "smudge"], None)
    assert unknown.action == "black" and unknown.notes == ["unknown action 'smudge' -> black"]


@pytest.mark.parametrize("mode", ["RGBA", "L"])
def test_the_webui_keeps_the_image_mode(a1111_gate, mode):
    image = Image.fromarray(_renders()[0]).convert(mode)
    hidden = a1111_gate.hide(image, "blur")
    assert hidden.mode == mode and hidden.size == image.size
    assert not np.array_equal(np.asarray(hidden), np.asarray(image))
    assert int(np.asarray(a1111_gate.hide(image, "black")).max()) == 0


def test_without_scdpo_the_webui_gate_blocks_everything_as_black(a1111_gate, monkeypatch):
    import scdpo

    monkeypatch.delattr(scdpo, "gate")
    monkeypatch.setitem(sys.modules, "scdpo.gate", None)  # `from scdpo import gate` now fails
    image = Image.fromarray(_renders()[0])
    [(shown, verdict)] = a1111_gate.gate_images([image], Scorer([[-9.0, -9.0]]).score, 0.5, "pass")
    assert verdict.blocked and verdict.action == "black" and "could not be imported" in verdict.error
    assert int(np.asarray(shown).max()) == 0 and shown.size == image.size
    assert a1111_gate.action_name("blur") == "blur" and a1111_gate.blocking_action("blur") == "black"
