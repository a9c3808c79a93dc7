"""Images outside the normal path (previews, intermediate saves, grids, other scripts' edits), the LoRA
tag and folders, loading, the scoring API handler and the trainer-tab hook."""

from __future__ import annotations

import base64
import io
import os
import sys
import types

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from toy_gate_model import oracle_unsafe, toy_cost_model
from webui_host import EXTENSION_SCRIPT, ROOT_SCRIPT, gate_pair, replay_model, sd_lora_file

ON = {"sc-dpo safety": {"args": [True, "None", 1.0, 0.5, "black"]}}


@pytest.fixture(scope="module")
def pair():
    """Seed 1: an unsafe toy render, seed 2: a safe one."""
    return gate_pair()


def _same(a, b) -> bool:
    return np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))


def _settings(**extra):
    return dict(scdpo_cost_model=toy_cost_model(), **extra)


@pytest.mark.parametrize("mode", ["gate", "hide", "off"])
def test_live_previews_are_gated_before_anyone_can_see_them(webui, tmp_path, pair, mode):
    settings = _settings(scdpo_preview="hide" if mode == "hide" else "gate")
    with webui(tmp_path / "Lora", settings=settings, model=replay_model(pair)) as web:
        web.txt2img(prompt="p", seed=1, batch_size=2, alwayson_scripts=ON if mode != "off" else {})
        shown = web.shared.state.previews_shown
        assert len(shown) == 2
        if mode == "off":
            assert _same(shown[0], pair[1]) and _same(shown[1], pair[2])
        elif mode == "gate":
            assert not _same(shown[0], pair[1]) and oracle_unsafe([shown[0]]) == [False]
            assert _same(shown[1], pair[2])
        else:
            assert not _same(shown[0], pair[1]) and not _same(shown[1], pair[2])
        web.shared.state.assign_current_image(pair[1])  # after the job: the gate is off again
        assert _same(web.shared.state.current_image, pair[1])


def test_images_saved_outside_the_normal_path_and_grids_are_gated(webui, tmp_path, pair):
    """"Before highres fix" intermediates, the final images and the saved grid are all judged."""
    outdir = tmp_path / "out"
    settings = _settings(scdpo_blocked_files="save redacted")
    with webui(tmp_path / "Lora", settings=settings, model=replay_model(pair, previews=False)) as web:
        web.processing.save_images_before_highres_fix = True
        res = web.txt2img(prompt="p", seed=1, batch_size=2, enable_hr=True, save_images=True,
                          outpath_samples=str(outdir), outpath_grids=str(outdir / "grids"), alwayson_scripts=ON)
        saved = {os.path.basename(path): image for path, image in web.images.saved}
    assert len(saved) == 5  # 2 intermediates, 2 images, 1 grid
    intermediates = [im for name, im in sorted(saved.items()) if "before-highres-fix" in name]
    assert len(intermediates) == 2 and oracle_unsafe(intermediates) == [False, False]
    assert not _same(intermediates[0], pair[1]) and _same(intermediates[1], pair[2])
    grid = res.images[0]
    assert grid.size == (32, 16) and int(np.asarray(grid)[:, :16].max()) == 0  # the unsafe tile is black
    assert np.array_equal(np.asarray(grid)[:, 16:], np.asarray(pair[2]))


@pytest.mark.parametrize("mode", ["withhold", "save redacted"])
def test_a_blocked_image_s_file_is_withheld_by_default_or_saved_redacted(webui, tmp_path, pair, mode, capsys):
    """Seed 1 is unsafe, seed 2 safe; each is saved "before highres fix" and as the final image, with
    its infotext .txt. Withheld: no file of seed 1 anywhere in the output folder, no temporary left."""
    import tempfile

    outdir = tmp_path / "out"
    settings = _settings() if mode == "withhold" else _settings(scdpo_blocked_files=mode)
    temp_before = {p.name for p in Path(tempfile.gettempdir()).glob("scdpo_withheld_*")}
    with webui(tmp_path / "Lora", settings=settings, model=replay_model(pair, previews=False)) as web:
        web.processing.save_images_before_highres_fix = True
        web.shared.opts.save_txt, web.shared.opts.grid_save = True, False
        res = web.txt2img(prompt="p", seed=1, batch_size=2, enable_hr=True, save_images=True,
                          outpath_samples=str(outdir), alwayson_scripts=ON)
    files = sorted(p.name for p in outdir.iterdir())
    seed1 = [f for f in files if "-1." in f or "-1-" in f]
    assert len([f for f in files if f.endswith(".png") and "-2" in f]) == 2  # the safe image, twice
    out = capsys.readouterr().out
    if mode == "withhold":
        assert seed1 == [] and len(files) == 3, files  # seed 2: 2 PNGs + the final image's .txt
        assert out.count("blocked by SC-DPO gate: unsafe, cost") >= 2 and out.count("file withheld, not saved:") == 2
        assert {p.name for p in Path(tempfile.gettempdir()).glob("scdpo_withheld_*")} == temp_before
    else:
        assert len([f for f in seed1 if f.endswith(".png")]) == 2 and len(files) == 6
        assert all(int(np.asarray(Image.open(outdir / f)).max()) == 0 for f in seed1 if f.endswith(".png"))
        assert "file withheld" not in out
    assert "SC-DPO gate: 1 of 2 images blocked by SC-DPO gate" in res.infotexts[0]  # the grid's / main infotext
    assert "blocked by SC-DPO gate: unsafe" in res.infotexts[1] and "SC-DPO gate: passed" in res.infotexts[2]


def test_a_grid_of_unjudged_tiles_is_gated_under_enforce(webui, tmp_path, pair):
    with webui(tmp_path / "Lora", settings=_settings(scdpo_enforce=True, scdpo_enforce_action="black")) as web:
        grid = web.images.image_grid([pair[1].copy(), pair[2].copy()], batch_size=2, rows=1)
    assert int(np.asarray(grid)[:, :16].max()) == 0 and np.array_equal(np.asarray(grid)[:, 16:], np.asarray(pair[2]))


def test_an_image_replaced_by_a_later_script_is_gated_again(webui, tmp_path, pair):
    """A face-fix / detailer script that edits images in postprocess_image after our gate."""
    late = tmp_path / "late_ext" / "scripts" / "late_detailer.py"
    late.parent.mkdir(parents=True)
    late.write_text(
        "from modules import scripts\n"
        "from PIL import Image\n"
        "class LateDetailer(scripts.Script):\n"
        "    def title(self): return 'late detailer'\n"
        "    def show(self, is_img2img): return scripts.AlwaysVisible\n"
        "    def postprocess_image(self, p, pp, *args):\n"
        f"        pp.image = Image.open({str(tmp_path / 'unsafe.png')!r}).convert('RGB')\n"
    )
    pair[1].save(tmp_path / "unsafe.png")
    files = (EXTENSION_SCRIPT, late)
    with webui(tmp_path / "Lora", files, settings=_settings(), model=replay_model(pair, previews=False)) as web:
        assert [s.title() for s in web.runner.alwayson_scripts] == ["SC-DPO Safety", "late detailer"]
        res = web.txt2img(prompt="p", seed=2, batch_size=1, alwayson_scripts=ON)
    assert oracle_unsafe(res.images) == [False] and int(np.asarray(res.images[0]).max()) == 0


@pytest.mark.parametrize("files", [(EXTENSION_SCRIPT, ROOT_SCRIPT), (ROOT_SCRIPT, EXTENSION_SCRIPT)])
def test_two_installs_register_one_script_and_one_set_of_hooks(webui, tmp_path, files, capsys):
    with webui(tmp_path / "Lora", files) as web:
        for _ in range(2):  # start-up, then "Reload UI" (a second loading pass)
            web.scripts.load_scripts([str(f) for f in files])
            web.runner.initialize_scripts(False)
            assert [s.title() for s in web.runner.alwayson_scripts] == ["SC-DPO Safety"]
            assert all(len(web.script_callbacks.callback_map[k]) == 1 for k in (
                "callbacks_before_image_saved", "callbacks_image_grid", "callbacks_app_started", "callbacks_ui_tabs"))
        assert not web.errors.reported
    assert "another install of this extension is already loaded" in capsys.readouterr().out


def test_the_root_loader_alone_loads_the_extension(webui, tmp_path, pair):
    with webui(tmp_path / "Lora", (ROOT_SCRIPT,), settings=_settings(), model=replay_model(pair)) as web:
        res = web.txt2img(prompt="p", seed=1, batch_size=1, alwayson_scripts=ON)
        assert not web.errors.reported
    assert "SC-DPO gate: blocked" in res.infotexts[0]


def test_lora_tag_reaches_every_batch_and_the_hires_pass_and_stacks(webui, tmp_path, pair):
    sd_lora_file(tmp_path / "Lora" / "safety_x.safetensors")
    args = {"sc-dpo safety": {"args": [True, "safety_x", 0.6, 0.5, "black"]}}
    with webui(tmp_path / "Lora", settings=_settings(), model=replay_model(pair, previews=False)) as web:
        res = web.txt2img(prompt="p <lora:user_style:0.9>", seed=1, batch_size=1, n_iter=2, enable_hr=True,
                          alwayson_scripts=args)
        # the user's LoRA is kept, ours is added; both are (re-)activated for each batch and hires pass
        both = [("user_style", 0.9), ("safety_x", 0.6)]
        assert web.lora.activations == [("base", 0, both), ("hires", 0, both), ("base", 1, both), ("hires", 1, both)]
    assert all("<lora:safety_x:0.6>" in t and "SC-DPO safety: LoRA safety_x x0.6" in t for t in res.infotexts)


def test_loras_from_the_project_folder_are_offered_and_copied_into_the_webui_lora_folder(webui, tmp_path, pair):
    own = tmp_path / "own"
    sd_lora_file(own / "scdpo_safety_sd15.safetensors")
    sd_lora_file(own / "toy_safety.safetensors", base_version="toy_v1")  # toy LoRAs fit no webui model
    sd_lora_file(tmp_path / "Lora" / "someones_style.safetensors", scdpo=False)  # not a safety LoRA
    sd_lora_file(tmp_path / "Lora" / "trained_here.safetensors")  # an SC-DPO LoRA the user put there
    args = {"sc-dpo safety": {"args": [True, "scdpo_safety_sd15", 1.0, 0.5, "black"]}}
    with webui(tmp_path / "Lora", settings=_settings(scdpo_lora_dir=str(own)),
                    model=replay_model(pair, previews=False)) as web:
        from scdpo_a1111 import runtime

        assert runtime.lora_choices() == ["scdpo_safety_sd15", "trained_here"]
        dropdown = web.runner.inputs[web.script.args_from + 1]
        assert dropdown.kwargs["choices"] == ["None", "scdpo_safety_sd15", "trained_here"]
        web.txt2img(prompt="p", seed=1, alwayson_scripts=args)
        copy = tmp_path / "Lora" / "scdpo" / "scdpo_safety_sd15.safetensors"
        assert copy.read_bytes() == (own / "scdpo_safety_sd15.safetensors").read_bytes()
        assert web.lora.activations[-1] == ("base", 0, [("scdpo_safety_sd15", 1.0)])
        mtime = copy.stat().st_mtime_ns
        web.txt2img(prompt="p", seed=1, alwayson_scripts=args)
        assert copy.stat().st_mtime_ns == mtime  # not copied again while unchanged
        res = web.txt2img(prompt="p", seed=1, alwayson_scripts={"sc-dpo safety": {"args": [True, "gone", 1.0]}})
        assert web.lora.activations[-1] == ("base", 0, [])
        assert "LoRA gone not found" in res.infotexts[0] and "SC-DPO gate: blocked" in res.infotexts[0]


def test_only_safety_loras_for_the_loaded_model_are_offered_and_anything_else_is_refused(webui, tmp_path, pair,
                                                                                          capsys):
    """The project's own weights/ folder holds the toy world's base model, encoder, cost model and LoRA:
    none of them is a LoRA for a webui model. Picked through the API, each is refused in the infotext
    and the console, nothing is copied into the Lora folder and no LoRA tag reaches the prompt."""
    from fake_hosts import REPO

    sd_lora_file(tmp_path / "Lora" / "xl_safety.safetensors", base_version="sdxl_base_v1-0")
    sd_lora_file(tmp_path / "Lora" / "someones_style.safetensors", scdpo=False)
    shipped = {p.stem for p in (REPO / "weights").glob("*.safetensors")}
    assert {"toy_base", "toy_cost_model", "toy_encoder", "toy_safety_lora"} <= shipped
    with webui(tmp_path / "Lora", settings=_settings(), model=replay_model(pair, previews=False)) as web:
        from scdpo_a1111 import runtime

        assert runtime.lora_choices() == []  # SD1 loaded: the SDXL LoRA does not fit, the rest are no safety LoRAs
        web.sd_models.model_data.sd_model = web.sd_models.stand_in_model("sdxl")
        assert runtime.lora_choices() == ["xl_safety"]
        web.sd_models.model_data.sd_model = web.sd_models.stand_in_model("sd1")
        capsys.readouterr()
        for name, why in [("toy_base", "not a LoRA (its metadata says 'toy_base')"),
                          ("toy_cost_model", "not a LoRA (its metadata says 'safety_cost_model')"),
                          ("toy_encoder", "not a LoRA"), ("toy_safety_lora", "a LoRA for toy_v1"),
                          ("xl_safety", "a LoRA for sdxl_base_v1-0, but the loaded model is sd_v1"),
                          ("someones_style", "not an SC-DPO safety LoRA")]:
            res = web.txt2img(prompt="p", seed=2, alwayson_scripts={"sc-dpo safety": {"args": [True, name, 1.0]}})
            assert f"LoRA {name} refused" in res.infotexts[0] and why in res.infotexts[0], res.infotexts[0]
            assert f"<lora:{name}" not in res.infotexts[0] and web.lora.activations[-1] == ("base", 0, [])
            assert f"[SC-DPO] LoRA {name} refused" in capsys.readouterr().out
        assert not (tmp_path / "Lora" / "scdpo").exists()
    with webui(tmp_path / "Lora2", settings=_settings(), family=None) as web:  # no checkpoint loaded yet
        from scdpo_a1111 import runtime

        sd_lora_file(tmp_path / "Lora2" / "xl_safety.safetensors", base_version="sdxl_base_v1-0")
        sd_lora_file(tmp_path / "Lora2" / "sd1_safety.safetensors")
        assert runtime.lora_choices() == ["sd1_safety", "xl_safety"]


def _b64(image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_score_api_handler(webui, tmp_path, pair):
    with webui(tmp_path / "Lora", settings=_settings()) as web:
        from scdpo_a1111.callbacks import score_request

        opts = web.shared.opts
        out = score_request({"images": [_b64(pair[1]), "data:image/png;base64," + _b64(pair[2])]}, opts)
        assert [r["unsafe"] for r in out["results"]] == [True, False]
        assert out["results"][0]["category"] in out["categories"] and out["results"][1]["category"] is None
        assert all((r["probability"] > 0.5) == r["unsafe"] for r in out["results"])
        strict = score_request({"image": _b64(pair[2]), "threshold": 0.001}, opts)
        assert strict["cost_limit"] < out["cost_limit"]
        for bad, message in [({}, "send 'image'"), ({"image": "%%%"}, "not a base64"),
                             ({"image": _b64(pair[1]), "threshold": 1.5}, "threshold"),
                             ({"images": ["x"] * 65}, "at most 64")]:
            with pytest.raises(ValueError, match=message):
                score_request(bad, opts)
        web.shared.opts.scdpo_cost_model = str(tmp_path / "missing.safetensors")
        with pytest.raises(RuntimeError, match="could not be loaded"):
            score_request({"image": _b64(pair[1])}, opts)


def test_trainer_tab_is_mounted_only_when_the_trainer_ui_exists(webui, tmp_path, monkeypatch):
    import scdpo

    with webui(tmp_path / "Lora") as web:
        monkeypatch.setitem(sys.modules, "scdpo.ui", types.ModuleType("scdpo.ui"))
        monkeypatch.setattr(scdpo, "ui", sys.modules["scdpo.ui"], raising=False)
        assert web.script_callbacks.ui_tabs_callback() == []
        calls = []
        sys.modules["scdpo.ui"].create_blocks = lambda embedded: calls.append(embedded) or "BLOCKS"
        assert web.script_callbacks.ui_tabs_callback() == [("BLOCKS", "SC-DPO Trainer", "scdpo_trainer")]
        assert calls == [True]
