"""The output gate through the webui's postprocess path: toy-world batches, actions, failing closed."""

from __future__ import annotations

import numpy as np
import pytest
from toy_gate_model import oracle_unsafe, toy_cost_model, toy_renders
from webui_host import replay_model

ON = lambda action="blur", threshold=0.5: {"sc-dpo safety": {"args": [True, "None", 1.0, threshold, action]}}  # noqa: E731
SETTINGS = {"return_grid": False, "grid_save": False}


@pytest.fixture(scope="module")
def batch():
    """Held-out toy prompts rendered: 90 harmful, 60 near-miss, 90 clean (labels: the oracle judge)."""
    prompts, images, unsafe = toy_renders(90, 60, 90)
    assert 60 <= sum(unsafe) <= 100  # the suite really mixes unsafe and safe images
    return images, unsafe


def _run(web, images, args, batch_size=8):
    by_seed = {1000 + i: im for i, im in enumerate(images)}
    from modules import processing

    processing.model = replay_model(by_seed, previews=False)
    res = web.txt2img(prompt=["toy prompt"] * len(images), seed=1000, batch_size=batch_size,
                      n_iter=len(images) // batch_size, alwayson_scripts=args)
    assert len(res.images) == len(images)
    return res


def test_toy_batch_unsafe_blocked_and_safe_passed_through_postprocess(webui, tmp_path, batch):
    images, unsafe = batch
    settings = dict(SETTINGS, scdpo_cost_model=toy_cost_model())
    with webui(tmp_path / "Lora", settings=settings) as web:
        res = _run(web, images, ON("blur"))
    unchanged = [np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(res.images, images)]
    still_unsafe = oracle_unsafe(res.images)
    n_unsafe = sum(unsafe)
    blocked = sum(1 for u, same, still in zip(unsafe, unchanged, still_unsafe) if u and not same and not still)
    passed = sum(1 for u, same in zip(unsafe, unchanged) if not u and same)
    blocked_rate, passed_rate = blocked / n_unsafe, passed / (len(images) - n_unsafe)
    print(f"toy batch through postprocess_image: unsafe blocked {blocked}/{n_unsafe} = {blocked_rate:.3f}, "
          f"safe passed {passed}/{len(images) - n_unsafe} = {passed_rate:.3f}")
    assert blocked_rate >= 0.95 and passed_rate >= 0.95
    assert len({t.split("SC-DPO gate: ")[1].split(",")[0] for t in res.infotexts}) == 2  # blocked / passed


@pytest.mark.parametrize("action", ["blur", "pixelate", "black"])
def test_every_hiding_action_removes_the_unsafe_motif(webui, tmp_path, batch, action):
    images, unsafe = batch
    bad = [im for im, u in zip(images, unsafe) if u][:24]
    settings = dict(SETTINGS, scdpo_cost_model=toy_cost_model())
    with webui(tmp_path / "Lora", settings=settings) as web:
        res = _run(web, bad, ON(action, threshold=0.01))  # strictest threshold: every image is hidden
    assert all(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(res.images, bad))
    if action == "pixelate":
        # 16-px renders become 2 x 2 flat tiles of 8 px: nothing of a motif's shape is left, but a whole
        # tile in a skin tone is a tall block the oracle can read as a figure, so check the tiles instead
        tiles = [np.asarray(im).reshape(2, 8, 2, 8, 3) for im in res.images]
        assert all((t == t[:, :1, :, :1]).all() for t in tiles)
    else:
        assert sum(oracle_unsafe(res.images)) == 0
    done = {"blur": "blurred", "pixelate": "pixelated", "black": "blacked out"}[action]
    assert all("blocked by SC-DPO gate: unsafe, cost" in t and f"; image {done}" in t
               for t in res.infotexts), res.infotexts[0]


@pytest.mark.parametrize("action", ["pass", "pass with warning"])  # the old name still works
def test_pass_passes_and_warns(webui, tmp_path, batch, action):
    images, unsafe = batch
    bad = [im for im, u in zip(images, unsafe) if u][:8]
    settings = dict(SETTINGS, scdpo_cost_model=toy_cost_model())
    with webui(tmp_path / "Lora", settings=settings) as web:
        res = _run(web, bad, ON(action, threshold=0.01))
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(res.images, bad))
    assert all("UNSAFE, passed with warning" in t for t in res.infotexts)
    assert "8 UNSAFE passed with warning" in res.comments


def _all_hidden(res, images, verdict_text):
    return (all(int(np.asarray(a).max()) == 0 for a in res.images)
            and all(verdict_text in t for t in res.infotexts))


def test_an_exception_while_scoring_blocks_every_image(webui, tmp_path, batch):
    images, unsafe = batch
    safe = [im for im, u in zip(images, unsafe) if not u][:8]
    settings = dict(SETTINGS, scdpo_cost_model=toy_cost_model())
    with webui(tmp_path / "Lora", settings=settings) as web:
        from scdpo_a1111 import runtime

        scorer = runtime.scorers.get(toy_cost_model(), "", runtime.webui_device())

        def broken(_images, **_kw):
            raise RuntimeError("CUDA error: device-side assert triggered")

        scorer.score = broken
        res = _run(web, safe, ON("pass with warning"))  # even "pass" cannot let an unscored image through
        assert not web.errors.reported  # the gate handled it; nothing escaped to the webui
    assert _all_hidden(res, safe, "blocked by SC-DPO gate: scoring failed (CUDA error")
    assert "8 of 8 images blocked" in res.comments


@pytest.mark.parametrize("problem", ["missing", "corrupt", "unset", "nan"])
def test_an_unusable_cost_model_blocks_every_image(webui, tmp_path, batch, problem):
    images, unsafe = batch
    safe = [im for im, u in zip(images, unsafe) if not u][:8]
    path = {"missing": str(tmp_path / "nope.safetensors"), "corrupt": str(tmp_path / "bad.safetensors"),
            "unset": "", "nan": toy_cost_model()}[problem]
    (tmp_path / "bad.safetensors").write_bytes(b"\x80\x04 not safetensors")
    with webui(tmp_path / "Lora", settings=dict(SETTINGS, scdpo_cost_model=path)) as web:
        if problem == "nan":
            from scdpo_a1111 import runtime

            scorer = runtime.scorers.get(path, "", runtime.webui_device())
            for p in scorer.model.head.parameters():
                p.data.fill_(float("nan"))
        res = _run(web, safe, ON("black"))
    assert _all_hidden(res, safe, "scoring failed")


def test_missing_scdpo_package_blocks_every_image(webui, tmp_path, batch):
    images, unsafe = batch
    safe = [im for im, u in zip(images, unsafe) if not u][:8]
    with webui(tmp_path / "Lora", settings=dict(SETTINGS, scdpo_cost_model=toy_cost_model())) as web:
        from scdpo_a1111 import runtime

        runtime.scdpo_problem = "the scdpo package could not be imported (No module named 'scdpo')"
        res = _run(web, safe, ON("black"))
    assert _all_hidden(res, safe, "No module named 'scdpo'")
