"""Shared fixtures for the evaluation tests: the shipped toy base and two random kohya LoRAs for it.

Everything here is tiny (16x16 toy images, 1-3 DDIM steps) so the suite runs in seconds on a CPU.
"""

import copy

import pytest
import torch
from peft import LoraConfig

from scdpo.lora import DEFAULT_TARGET_MODULES, peft_unet_to_kohya, save_lora
from scdpo.models import load_base_model



@pytest.fixture(scope="session")
def toy_model():
    """The shipped toy base on CPU. Tests that attach adapters must remove them again (see
    ``clean_model``)."""
    return load_base_model("toy", device="cpu")


@pytest.fixture
def clean_model(toy_model):
    """``toy_model``, checked to carry no peft adapter before and after the test."""
    assert not (getattr(toy_model.unet, "peft_config", None) or {}), "a previous test left a LoRA attached"
    yield toy_model
    leftover = getattr(toy_model.unet, "peft_config", None) or {}
    for name in list(leftover):  # keep later tests usable, but fail this one
        toy_model.unet.delete_adapters(name)
    assert not leftover, f"test left adapters attached: {sorted(leftover)}"


def make_lora_file(unet: torch.nn.Module, path, seed: int, rank: int = 2, std: float = 0.05):
    """A kohya LoRA for ``unet`` with random (non-zero) down *and* up weights, written by scdpo's writer."""
    work = copy.deepcopy(unet)
    work.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=DEFAULT_TARGET_MODULES,
                                init_lora_weights=False), adapter_name="default")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in work.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    tensors = peft_unet_to_kohya(work, adapter_name="default")
    assert any(k.endswith("lora_up.weight") and v.abs().max() > 0 for k, v in tensors.items())
    return save_lora(path, tensors, {"ss_base_model_version": "toy_v1"})


@pytest.fixture(scope="session")
def lora_files(toy_model, tmp_path_factory):
    """Two different LoRA files (``a``: rank 2, ``b``: rank 4) for the shipped toy UNet."""
    d = tmp_path_factory.mktemp("loras")
    return {
        "a": make_lora_file(toy_model.unet, d / "lora_a.safetensors", seed=1, rank=2, std=0.2),
        "b": make_lora_file(toy_model.unet, d / "lora_b.safetensors", seed=2, rank=4, std=0.2),
    }
