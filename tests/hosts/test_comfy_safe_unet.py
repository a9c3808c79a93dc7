"""SC-DPO Safe UNet, called as ComfyUI calls it, on a toy UNet and on an SD1.5-layout UNet."""

import json
from pathlib import Path

import pytest
import torch
from comfy_host import pack_module, run_node

from scdpo.errors import IncompatibleModelError, InputFileError, WeightsFormatError
from scdpo.lora import DEFAULT_TARGET_MODULES, apply_lora, kohya_names_for_unet, load_lora, peft_unet_to_kohya, save_lora

pytestmark = pytest.mark.usefixtures("comfyui")  # every test runs inside the fake ComfyUI

SD15_UNET_CONFIG = Path(__import__("scdpo").__file__).parent / "configs" / "sd15" / "unet" / "config.json"


# -- fixtures: ComfyUI MODELs ---------------------------------------------------------------------
class ToyModelConfig:
    """A model config outside ComfyUI's table that declares its SC-DPO base version."""

    scdpo_base_model_version = "toy_v1"
    unet_config: dict = {}


def toy_unet(seed=0):
    from diffusers import UNet2DConditionModel

    from scdpo.toy.model import UNET_CONFIG

    torch.manual_seed(seed)
    return UNet2DConditionModel(**UNET_CONFIG).eval()


def comfy_model(config, diffusion_model):
    import comfy.model_base
    import comfy.model_patcher

    base = comfy.model_base.BaseModel(config, diffusion_model)
    return comfy.model_patcher.ModelPatcher(base, torch.device("cpu"), torch.device("cpu"))


def toy_lora_tensors(unet=None, rank=4, seed=1, alpha=8.0):
    """What `scdpo train` writes: a peft adapter on (a copy of) the toy UNet exported to kohya names."""
    from peft import LoraConfig

    unet = toy_unet()  # its own copy: peft leaves its wrappers in a UNet even after delete_adapters
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=DEFAULT_TARGET_MODULES,
                                init_lora_weights="gaussian"), adapter_name="default")
    for name, p in unet.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.2)
    return peft_unet_to_kohya(unet, "default")


def meta_sd15_diffusers_unet():
    from diffusers import UNet2DConditionModel

    config = json.loads(SD15_UNET_CONFIG.read_text())
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


def sd15_ldm_model(model_class="SD15"):
    """ComfyUI's view of an SD1.5 UNet: LDM parameter names (meta tensors, shapes from the diffusers
    SD1.5 UNet mapped through comfy.utils.unet_to_diffusers)."""
    import comfy.supported_models
    import comfy.utils

    config = getattr(comfy.supported_models, model_class)()
    table = comfy.utils.unet_to_diffusers(comfy.supported_models.SD15.unet_config)
    root = torch.nn.Module()
    for name, tensor in meta_sd15_diffusers_unet().state_dict().items():
        if name not in table:
            continue
        *path, leaf = table[name].split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, torch.nn.Module())
            module = getattr(module, part)
        module.register_parameter(leaf, torch.nn.Parameter(torch.empty(tensor.shape, device="meta"), requires_grad=False))
    return comfy_model(config, root)


def sd15_lora_tensors(rank=4, seed=0):
    """A rank-4 LoRA with the SD1.5 kohya names of every attention projection, random values."""
    g = torch.Generator().manual_seed(seed)
    unet = meta_sd15_diffusers_unet()
    modules = dict(unet.named_modules())
    tensors = {}
    for name in sorted(kohya_names_for_unet(unet, DEFAULT_TARGET_MODULES)):
        path = next(p for p in modules if "lora_unet_" + p.replace(".", "_") == name)
        linear = modules[path]
        tensors[f"{name}.lora_down.weight"] = torch.randn(rank, linear.in_features, generator=g) * 0.01
        tensors[f"{name}.lora_up.weight"] = torch.randn(linear.out_features, rank, generator=g) * 0.01
        tensors[f"{name}.alpha"] = torch.tensor(float(rank))
    return tensors


@pytest.fixture
def node():
    return pack_module("safe_unet").SafeUNet


# -- toy -----------------------------------------------------------------------------------------
def test_toy_lora_patches_every_module_and_equals_peft(comfy_models, node):
    unet = toy_unet()
    tensors = toy_lora_tensors(unet)
    save_lora(comfy_models / "safety_models" / "toy_safety.safetensors", tensors, {"ss_base_model_version": "toy_v1"})
    lora = load_lora(comfy_models / "safety_models" / "toy_safety.safetensors")
    model = comfy_model(ToyModelConfig(), unet)

    run = run_node(node, model=model, lora_name="toy_safety.safetensors", strength=0.7)
    patched = run.outputs[0]
    n = len(lora.unet_module_names)
    assert n == len(kohya_names_for_unet(unet, DEFAULT_TARGET_MODULES)) > 0
    assert f"{n}/{n} modules patched" in run.text
    assert len(patched.patches) == n and model.patches == {}  # non-destructive: the input MODEL is untouched
    assert patched.model is model.model  # no weights copied

    # the names ComfyUI derives from this UNet's modules cover every key of the file
    import comfy.lora

    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    assert set(lora.unet_module_names) <= set(key_map)

    # ComfyUI's patched weights compute what peft computes with the same file at the same scale
    latents, t = torch.randn(2, 12, 8, 8), torch.tensor([10, 500])
    context = torch.randn(2, 8, unet.config.cross_attention_dim)
    with torch.no_grad():
        base_out = unet(latents, t, encoder_hidden_states=context).sample
        patched.patch_model()
        comfy_out = unet(latents, t, encoder_hidden_states=context).sample
        patched.unpatch_model()
        reference = toy_unet()
        apply_lora(reference, lora, scale=0.7, base_model_version="toy_v1")
        peft_out = reference(latents, t, encoder_hidden_states=context).sample
    assert (comfy_out - base_out).abs().max() > 1e-3  # the LoRA does something
    torch.testing.assert_close(comfy_out, peft_out, atol=2e-5, rtol=1e-4)
    assert torch.equal(unet(latents, t, encoder_hidden_states=context).sample, base_out)  # unpatched again


def test_lora_for_another_base_model_is_an_error(comfy_models, node):
    unet = toy_unet()
    save_lora(comfy_models / "loras" / "for_sd15.safetensors", toy_lora_tensors(unet), {"ss_base_model_version": "sd_v1"})
    with pytest.raises(IncompatibleModelError, match="trained for base model sd_v1.*toy_v1"):
        run_node(node, model=comfy_model(ToyModelConfig(), unet), lora_name="for_sd15.safetensors", strength=1.0)


def test_partial_match_is_an_error_not_a_log_line(comfy_models, node):
    unet = toy_unet()
    tensors = toy_lora_tensors(unet)
    tensors["lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight"] = torch.zeros(4, 8)
    tensors["lora_unet_down_blocks_9_attentions_0_proj_in.lora_up.weight"] = torch.zeros(8, 4)
    save_lora(comfy_models / "safety_models" / "partial.safetensors", tensors, {"ss_base_model_version": "toy_v1"})
    model = comfy_model(ToyModelConfig(), unet)
    with pytest.raises(IncompatibleModelError, match=r"1 of \d+ modules .* match no weight.*down_blocks_9"):
        run_node(node, model=model, lora_name="partial.safetensors", strength=1.0)
    assert model.patches == {}


def test_shape_misfit_is_an_error(comfy_models, node):
    unet = toy_unet()
    tensors = toy_lora_tensors(unet)
    name = sorted(k for k in tensors if k.endswith("attn2_to_k.lora_down.weight"))[0]
    tensors[name] = torch.zeros(4, tensors[name].shape[1] + 3)
    save_lora(comfy_models / "safety_models" / "misfit.safetensors", tensors, {"ss_base_model_version": "toy_v1"})
    with pytest.raises(IncompatibleModelError, match="does not fit the model's diffusion_model"):
        run_node(node, model=comfy_model(ToyModelConfig(), unet), lora_name="misfit.safetensors", strength=1.0)


def test_text_encoder_keys_are_refused(comfy_models, node):
    unet = toy_unet()
    tensors = toy_lora_tensors(unet)
    tensors["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros(4, 8)
    tensors["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"] = torch.zeros(8, 4)
    save_lora(comfy_models / "safety_models" / "te.safetensors", tensors, {"ss_base_model_version": "toy_v1"})
    with pytest.raises(IncompatibleModelError, match="text-encoder modules"):
        run_node(node, model=comfy_model(ToyModelConfig(), unet), lora_name="te.safetensors", strength=1.0)


def test_missing_and_non_lora_files(comfy_models, node):
    from scdpo.fileio import save_safetensors_atomic

    model = comfy_model(ToyModelConfig(), toy_unet())
    with pytest.raises(InputFileError, match="gone.safetensors.*models/safety_models/ or models/loras/"):
        node.execute(model=model, lora_name="gone.safetensors", strength=1.0)
    save_safetensors_atomic({"head.weight": torch.zeros(2, 2)}, comfy_models / "safety_models" / "cost.safetensors")
    with pytest.raises(WeightsFormatError, match="not a LoRA file"):
        run_node(node, model=model, lora_name="cost.safetensors", strength=1.0)


def test_choices_list_safety_models_first_then_loras(comfy_models, node):
    for folder, name in (("loras", "b_style.safetensors"), ("safety_models", "z_safety.safetensors"),
                         ("loras", "z_safety.safetensors"), ("loras", "old.ckpt")):
        (comfy_models / folder / name).write_bytes(b"x")
    options = node.INPUT_TYPES()["required"]["lora_name"][1]["options"]
    assert options == ["z_safety.safetensors", "b_style.safetensors"]


# -- SD1.5 ---------------------------------------------------------------------------------------
def test_sd15_named_lora_matches_every_comfyui_key(comfy_models, node):
    import comfy.lora

    tensors = sd15_lora_tensors()
    save_lora(comfy_models / "safety_models" / "sd15_safety.safetensors", tensors, {"ss_base_model_version": "sd_v1"})
    model = sd15_ldm_model()
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    names = sorted({k.split(".")[0] for k in tensors})
    assert len(names) == 128  # SD1.5: 16 transformer blocks x 2 attentions x 4 projections
    assert all(n in key_map and key_map[n].startswith("diffusion_model.") for n in names)

    run = run_node(node, model=model, lora_name="sd15_safety.safetensors", strength=1.0)
    assert "128/128 modules patched" in run.text
    assert set(run.outputs[0].patches) == {key_map[n] for n in names}

    with pytest.raises(IncompatibleModelError, match="ComfyUI's SDXL"):
        run_node(node, model=sd15_ldm_model("SDXL"), lora_name="sd15_safety.safetensors", strength=1.0)


def test_sd15_lora_in_peft_layout_is_converted_and_fully_applied(comfy_models, node):
    """ComfyUI's own loader maps no key of a PEFT-layout SD1.5 LoRA (hostrigs finding); the node converts it."""
    from scdpo.lora import kohya_to_diffusers_layout

    tensors = sd15_lora_tensors()
    lora = load_lora(save_lora(comfy_models / "k.safetensors", tensors, {"ss_base_model_version": "sd_v1"}))
    peft_tensors, metadata = kohya_to_diffusers_layout(lora, meta_sd15_diffusers_unet())
    assert all(".lora_A." in k or ".lora_B." in k for k in peft_tensors)
    from scdpo.fileio import save_safetensors_atomic

    save_safetensors_atomic(peft_tensors, comfy_models / "loras" / "peft_layout.safetensors", metadata)
    run = run_node(node, model=sd15_ldm_model(), lora_name="peft_layout.safetensors", strength=1.0)
    assert "128/128 modules patched" in run.text


@pytest.mark.slow
def test_lora_written_by_the_sc_dpo_trainer_loads_fully(comfy_models, node, tmp_path):
    """The trainer's own output (toy base, attention + proj + feed-forward modules) through the node."""
    dpo = pytest.importorskip("scdpo.dpo")
    if not hasattr(dpo, "train_lora"):
        pytest.skip("scdpo.dpo.train_lora is not there yet")
    from scdpo.dpo import TrainConfig, train_lora
    from scdpo.models import load_base_model
    from scdpo.toy.model import ToyTextToImage

    try:
        base = load_base_model("toy")
    except InputFileError:  # weights/toy_base.safetensors not shipped yet: same model, random weights
        base = ToyTextToImage.from_scratch(0)
    cfg = TrainConfig(out=str(tmp_path / "run"), steps=2, batch_size=2, toy_oracle_pairs=8, warmup_steps=0,
                      train_proj=True, train_ff=True, checkpoint_every=0, log_every=1, rank=4)
    lora_path = train_lora(cfg, model=base, progress=False)
    (comfy_models / "safety_models" / "trained.safetensors").write_bytes(lora_path.read_bytes())
    lora = load_lora(lora_path)
    assert lora.base_model_version == "toy_v1"
    # a UNet as ComfyUI would hold it (the trainer's copy keeps peft's wrapper layers after training)
    model = comfy_model(ToyModelConfig(), ToyTextToImage.from_scratch(0).unet)
    run = run_node(node, model=model, lora_name="trained.safetensors", strength=1.0)
    n = len(lora.unet_module_names)
    assert n > len(kohya_names_for_unet(base.unet, DEFAULT_TARGET_MODULES))  # proj / ff modules too
    assert f"{n}/{n} modules patched" in run.text
