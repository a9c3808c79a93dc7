"""The SC-DPO Safe UNet node on a hostile LoRA: a peft/diffusers-layout file whose ``alpha_pattern`` is a
catastrophic regular expression made the node (which reads LoRAs with scdpo's loader) never return.
Now the file is refused at once, with one line naming it."""

from __future__ import annotations

import json
import threading
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
    outcome = []

    def run():
        try:
            run_node(node, model=comfy_model(ToyModelConfig(), toy_unet()), lora_name="hostile.safetensors",
                     strength=1.0)
        except Exception as exc:  # noqa: BLE001 - inspected below
            outcome.append(exc)

    t0 = time.time()
    worker = threading.Thread(target=run, daemon=True)  # a daemon: a regression hangs a thread, not the run
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "the Safe UNet node did not return within 60 s"
    assert time.time() - t0 < 30
    assert len(outcome) == 1 and isinstance(outcome[0], WeightsFormatError)
    assert "regular expression" in str(outcome[0]) and "hostile.safetensors" in str(outcome[0])
