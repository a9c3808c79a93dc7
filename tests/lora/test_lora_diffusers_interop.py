"""diffusers, as a host, applies every key of our kohya files and of our diffusers-layout export."""

import copy

import torch
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from peft import LoraConfig

from scdpo.fileio import save_safetensors_atomic
from scdpo.lora import DEFAULT_TARGET_MODULES, kohya_to_diffusers_layout, load_lora, peft_unet_to_kohya, save_lora
from scdpo.toy.model import ToyTextToImage


def _setup():
    base = ToyTextToImage.from_scratch(0).unet.eval()
    peft_unet = copy.deepcopy(base)
    peft_unet.add_adapter(
        LoraConfig(r=4, lora_alpha=2, target_modules=DEFAULT_TARGET_MODULES, rank_pattern={"to_v": 2},
                   init_lora_weights=False),
        adapter_name="default",
    )
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in peft_unet.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    g = torch.Generator().manual_seed(1)
    c, s = base.config.in_channels, base.config.sample_size
    inputs = (torch.randn(2, c, s, s, generator=g), torch.tensor([5, 900]),
              torch.randn(2, 9, base.config.cross_attention_dim, generator=g))
    return base, peft_unet, inputs


@torch.no_grad()
def _out(unet, inputs):
    return unet(inputs[0], inputs[1], encoder_hidden_states=inputs[2]).sample


def test_diffusers_kohya_loader_applies_every_key(tmp_path):
    base, peft_unet, inputs = _setup()
    path = save_lora(tmp_path / "k.safetensors", peft_unet_to_kohya(peft_unet), {"ss_base_model_version": "toy_v1"})
    state_dict, alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(str(path))
    assert all(k.startswith("unet.") for k in state_dict) and len(state_dict) == 2 * 56
    unet = copy.deepcopy(base)
    unet.load_lora_adapter(state_dict, network_alphas=alphas, prefix="unet", adapter_name="d")
    n_wrapped = sum(1 for m in unet.modules() if hasattr(m, "lora_A") and "d" in m.lora_A)
    assert n_wrapped == 56
    torch.testing.assert_close(_out(unet, inputs), _out(peft_unet, inputs), atol=2e-5, rtol=1e-4)


def test_diffusers_layout_export_loads_natively_in_diffusers(tmp_path):
    base, peft_unet, inputs = _setup()
    path = save_lora(tmp_path / "k.safetensors", peft_unet_to_kohya(peft_unet), {"ss_base_model_version": "toy_v1"})
    tensors, metadata = kohya_to_diffusers_layout(load_lora(path))
    assert all(k.startswith("unet.") and ".lora_" in k for k in tensors)
    save_safetensors_atomic(tensors, tmp_path / "pytorch_lora_weights.safetensors", metadata)
    unet = copy.deepcopy(base)
    unet.load_lora_adapter(str(tmp_path), weight_name="pytorch_lora_weights.safetensors", prefix="unet",
                           adapter_name="d", local_files_only=True)
    torch.testing.assert_close(_out(unet, inputs), _out(peft_unet, inputs), atol=2e-5, rtol=1e-4)
    # and it converts back to the same kohya tensors
    back = load_lora(tmp_path / "pytorch_lora_weights.safetensors")
    assert back.source_layout == "diffusers" and back.base_model_version == "toy_v1"
    orig = load_lora(path)
    assert set(back.tensors) == set(orig.tensors)
    for k, v in orig.tensors.items():
        torch.testing.assert_close(back.tensors[k].float(), v.float())
