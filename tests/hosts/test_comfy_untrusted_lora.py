"""The SC-DPO Safe UNet node on a hostile LoRA: a peft/diffusers-layout file whose ``alpha_pattern`` is a
catastrophic regular expression made the node (which reads LoRAs with scdpo's loader) never return.
Now the file is refused at once, with one line naming it."""

from __future__ import annotations

import faulthandler
import json
import time

import pytest
import torch
from comfy_host import pack_module, run_node
from test_comfy_safe_unet import ToyModelConfig, comfy_model, toy_unet

from scdpo.errors import WeightsFormatError

pytestmark = pytest.mark.usefixtures("comfyui")
REDOS = "(a+)+c"


def test_a_regex_alpha_pattern_is_refused_at_once(comfy_models):
    from scdpo.fileio import save_safetensors_atomic
    from scdpo.lora import load_lora
    from scdpo.lora.convert import kohya_to_diffusers_layout
    from scdpo.toy.model import weights_dir

    tensors, meta = kohya_to_diffusers_layout(load_lora(weights_dir() / "toy_safety_lora.safetensors"))
    module = "unet." + "a" * 40  # a module name the pattern backtracks on, when it is run as a regex
    tensors.update({f"{module}.lora_A.weight": torch.zeros(4, 8), f"{module}.lora_B.weight": torch.zeros(8, 4)})
    config = json.loads(meta["lora_adapter_metadata"])
    meta["lora_adapter_metadata"] = json.dumps({**config, "unet.alpha_pattern": {REDOS: 1}})
    save_safetensors_atomic(tensors, comfy_models / "safety_models" / "hostile.safetensors", meta)
    node = pack_module("safe_unet").SafeUNet
    model = comfy_model(ToyModelConfig(), toy_unet())
    # A regex backtracking in C holds the GIL: no Python-level timeout could stop it. faulthandler's
    # watchdog is a C thread: on a regression it ends the test run with a traceback instead of hanging.
    faulthandler.dump_traceback_later(120, exit=True)
    t0 = time.time()
    try:
        with pytest.raises(WeightsFormatError, match="hostile.safetensors.*regular expression"):
            run_node(node, model=model, lora_name="hostile.safetensors", strength=1.0)
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert time.time() - t0 < 30
