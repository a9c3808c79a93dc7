"""The Cost Model Loader's backbone is chosen from models/clip_vision/, like every other model input.

It was free text: a prompt could test whether any file exists, read folder listings from the error,
and load any .safetensors on the machine as a backbone.
"""

from __future__ import annotations

import json

import pytest
from comfy_host import pack_module, run_node

from scdpo.errors import InputFileError

pytestmark = pytest.mark.usefixtures("comfyui")


@pytest.fixture
def clip_setup(comfy_models, tmp_path):
    from test_comfy_cost_loader import save_clip_cost_model, small_clip

    from scdpo.fileio import save_safetensors_atomic

    clip = small_clip(0)
    save_clip_cost_model(comfy_models / "safety_models" / "clip_cost.safetensors", clip)
    weights, meta = clip.state_dict(), {"config": json.dumps(clip.config.to_dict())}
    save_safetensors_atomic(weights, comfy_models / "clip_vision" / "tiny_clip.safetensors", meta)
    elsewhere = tmp_path / "private" / "elsewhere.safetensors"  # the same weights, outside every model folder
    save_safetensors_atomic(weights, elsewhere, meta)
    return comfy_models, elsewhere


def test_the_backbone_input_lists_the_clip_vision_folder(clip_setup):
    loader = pack_module("cost_model_loader").CostModelLoader
    schema = loader.define_schema()
    backbone = next(i for i in schema.inputs if i.id == "backbone")
    assert backbone.options == ["none", "tiny_clip.safetensors"]
    assert not any(i.id == "backbone_path" for i in schema.inputs)


def test_a_listed_backbone_loads(clip_setup):
    loader = pack_module("cost_model_loader").CostModelLoader
    model = run_node(loader, cost_model="clip_cost.safetensors", device="cpu", backbone="tiny_clip.safetensors")
    assert model.outputs[0].scorer.categories


@pytest.mark.parametrize("value", ["{elsewhere}", "../../private/elsewhere.safetensors", "/etc/hostname",
                                   "../safety_models/clip_cost.safetensors"])
def test_any_other_path_is_refused_without_saying_what_exists(clip_setup, value):
    models, elsewhere = clip_setup
    value = value.format(elsewhere=elsewhere)
    loader = pack_module("cost_model_loader").CostModelLoader
    with pytest.raises(AssertionError, match="value_not_in_list: backbone"):  # ComfyUI refuses the prompt
        run_node(loader, cost_model="clip_cost.safetensors", device="cpu", backbone=value)
    load = pack_module("cost_model_loader").load_comfy_cost_model
    with pytest.raises(InputFileError) as refused:  # and the node itself, called directly
        load("clip_cost.safetensors", "cpu", backbone=value)
    message = str(refused.value)
    assert "not a file in models/clip_vision/" in message
    assert "tiny_clip" not in message and str(models) not in message  # no folder listing, no server paths
    missing = value.replace("elsewhere", "nothing_here").replace("hostname", "no_such_file")
    with pytest.raises(InputFileError) as also_refused:  # a missing file reads the same: no existence oracle
        load("clip_cost.safetensors", "cpu", backbone=missing)
    assert str(also_refused.value).replace(missing, value) == message
