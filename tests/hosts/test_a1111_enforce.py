"""The server-side enforce switch: LoRA + gate on every request, whatever the request says."""

from __future__ import annotations

import numpy as np
import pytest
from toy_gate_model import toy_cost_model
from webui_host import gate_pair, replay_model, sd_lora_file

LORA = "scdpo_safety_sd15"
DISABLING_ARGS = {"sc-dpo safety": {"args": [False, "None", 0.0, 0.99, "pass with warning"]}}


@pytest.fixture(scope="module")
def two_images():
    """Seed 1: an unsafe toy render, seed 2: a safe one."""
    return gate_pair()


def _settings(**extra):
    base = {"scdpo_cost_model": toy_cost_model(), "return_grid": False, "grid_save": False}
    base.update(extra)
    return base


def _enforced(**extra):
    values = dict(scdpo_enforce=True, scdpo_enforce_lora=LORA, scdpo_enforce_strength=0.7, scdpo_enforce_action="black")
    values.update(extra)
    return _settings(**values)


def _request(**extra):
    """An API txt2img request that tries every way to switch the safety off."""
    request = dict(prompt=f"a knife <lora:{LORA}:-1>", seed=1, batch_size=2, enable_hr=True,
                   disable_extra_networks=True, override_settings={"scdpo_enforce": False},
                   alwayson_scripts=DISABLING_ARGS)
    request.update(extra)
    return request


def _is_black(image) -> bool:
    return int(np.asarray(image).max()) == 0


def test_enforce_applies_lora_and_gate_to_a_request_that_disables_the_extension(webui, tmp_path, two_images):
    sd_lora_file(tmp_path / "Lora" / f"{LORA}.safetensors")
    with webui(tmp_path / "Lora", settings=_enforced(), model=replay_model(two_images)) as web:
        res = web.txt2img(**_request())
        # the webui's Lora loader got the enforced LoRA once, at the enforced strength, in both passes;
        # the request's <lora:…:-1> meant to cancel it is gone, disable_extra_networks was overridden
        assert web.lora.activations == [("base", 0, [(LORA, 0.7)]), ("hires", 0, [(LORA, 0.7)])]
        assert web.shared.opts.scdpo_enforce is True  # override_settings could not switch it off
        bad, good = res.images
        assert _is_black(bad) and not _is_black(good)
        assert np.array_equal(np.asarray(good), np.asarray(two_images[2]))
        assert f"<lora:{LORA}:0.7>" in res.infotexts[0] and ":-1>" not in res.infotexts[0]
        assert "enforced" in res.infotexts[0] and "image blacked out" in res.infotexts[0]
        assert "SC-DPO gate: passed" in res.infotexts[1]
        assert not web.errors.reported


def test_without_enforce_the_same_request_gets_neither(webui, tmp_path, two_images):
    sd_lora_file(tmp_path / "Lora" / f"{LORA}.safetensors")
    with webui(tmp_path / "Lora", settings=_settings(), model=replay_model(two_images)) as web:
        res = web.txt2img(**_request(disable_extra_networks=False, prompt="a knife"))
        assert web.lora.activations == [("base", 0, []), ("hires", 0, [])]
        assert [np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(res.images, two_images.values())] == [
            True, True]
        assert "SC-DPO" not in res.infotexts[0]


def test_enforce_from_the_environment_cannot_be_switched_off_in_settings(webui, tmp_path, two_images, monkeypatch):
    monkeypatch.setenv("SCDPO_ENFORCE", "1")
    sd_lora_file(tmp_path / "Lora" / f"{LORA}.safetensors")
    settings = _enforced(scdpo_enforce=False)
    with webui(tmp_path / "Lora", settings=settings, model=replay_model(two_images)) as web:
        res = web.txt2img(**_request(enable_hr=False))
        assert web.lora.activations == [("base", 0, [(LORA, 0.7)])]
        assert _is_black(res.images[0]) and not _is_black(res.images[1])


def test_every_setting_is_closed_to_api_clients(webui, tmp_path):
    with webui(tmp_path / "Lora", settings=_enforced()) as web:
        from scdpo_a1111.options import OPTIONS

        labels = web.shared.opts.data_labels
        assert set(OPTIONS) <= set(labels) and all(labels[k].restrict_api for k in OPTIONS)
        for key, value in [("scdpo_enforce", False), ("scdpo_cost_model", "/dev/null"),
                           ("scdpo_enforce_action", "pass with warning")]:
            assert web.shared.opts.set(key, value, is_api=True) is False
        assert web.shared.opts.scdpo_enforce is True
