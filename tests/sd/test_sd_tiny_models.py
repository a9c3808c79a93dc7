"""Reduced-size SD 1.x and SDXL single-file checkpoints load offline and behave like SD.

The checkpoints are random-weight, LDM-layout files built by ``sd_ldm_checkpoints`` with the
shipped configs shrunk in width (same block types and conditioning), loaded with
``config_dir`` pointing at the shrunk configs.
"""

import copy
import json

import pytest
import torch
from peft import LoraConfig
from safetensors.torch import load_file

from sd_ldm_checkpoints import build_checkpoint, write_tiny_configs
from scdpo.lora import DEFAULT_TARGET_MODULES, apply_lora, kohya_names_for_unet, load_lora, peft_unet_to_kohya, save_lora
from scdpo.sd.loader import load_sd_model


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def tiny(request, tmp_path_factory):
    family = request.param
    root = tmp_path_factory.mktemp(family)
    cfg = write_tiny_configs(family, root / "cfg")
    ckpt = build_checkpoint(cfg, family, root / "model.safetensors", dtype=torch.float16)
    return family, cfg, ckpt


@pytest.fixture(scope="module")
def tiny_fp32(tiny):
    family, cfg, ckpt = tiny
    return load_sd_model(ckpt, "cpu", torch.float32, config_dir=cfg)


def test_weights_load_exactly_and_keep_their_dtype(tiny):
    family, cfg, ckpt = tiny
    model = load_sd_model(ckpt, "cpu", None, config_dir=cfg)
    assert model.base_model_version == {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"}[family]
    assert model.unet.dtype == torch.float16 and model.text_encoder.dtype == torch.float16
    raw = load_file(str(ckpt))
    torch.testing.assert_close(model.unet.conv_in.weight, raw["model.diffusion_model.input_blocks.0.0.weight"], rtol=0, atol=0)
    blk = "input_blocks.1.1" if family == "sd15" else "input_blocks.3.1"  # first attention block
    attn = model.unet.down_blocks[0 if family == "sd15" else 1].attentions[0].transformer_blocks[0].attn2
    torch.testing.assert_close(attn.to_k.weight, raw[f"model.diffusion_model.{blk}.transformer_blocks.0.attn2.to_k.weight"], rtol=0, atol=0)
    n_file = sum(v.numel() for k, v in raw.items() if "position_ids" not in k and "logit_scale" not in k)
    comps = [model.unet, model.vae, *model.text_encoders]
    assert sum(p.numel() for c in comps for p in c.state_dict().values()) == n_file  # nothing dropped
    assert not any(p.requires_grad for c in comps for p in c.parameters())


def test_prompt_encoding_matches_the_family(tiny, tiny_fp32):
    family, cfg, ckpt = tiny
    model = tiny_fp32
    cond = model.encode_prompt(["a photo of a cat", ""])
    te_cfg = [json.loads((cfg / d / "config.json").read_text()) for d in ("text_encoder", "text_encoder_2") if (cfg / d).exists()]
    assert cond.hidden.shape == (2, 77, sum(c["hidden_size"] for c in te_cfg))
    if family == "sd15":
        assert cond.added == {}
        ids = model.tokenizer(["a photo of a cat"]).input_ids[0]
        assert ids == [49406, 320, 1125, 539, 320, 2368, 49407]  # the real CLIP vocabulary, offline
        return
    assert cond.added["text_embeds"].shape == (2, te_cfg[1]["projection_dim"])
    assert cond.hidden[1].abs().max() == 0 and cond.added["text_embeds"][1].abs().max() == 0  # empty prompt → zeros
    assert cond.hidden[0].abs().max() > 0
    sized = model.conditioning_for_size(cond, 64, 96)
    assert sized.added["time_ids"].tolist() == [[64.0, 96.0, 0.0, 0.0, 64.0, 96.0]] * 2
    # the size conditioning reaches the UNet: another size gives another prediction
    x = torch.randn(1, 4, 8, 12)
    t = torch.tensor([500])
    a = model.predict_noise(x, t, sized.index(slice(0, 1)))
    b = model.predict_noise(x, t, model.conditioning_for_size(cond, 128, 128).index(slice(0, 1)))
    assert (a - b).abs().max() > 1e-4


def test_generation_is_seeded_and_images_are_in_range(tiny_fp32):
    model = tiny_fp32
    a = model.generate(["a red cube", "a cat"], seed=[3, 4], steps=2, height=32, width=32)
    b = model.generate(["a cat"], seed=4, steps=2, height=32, width=32)
    assert a.shape == (2, 32, 32, 3) and 0 <= a.min() and a.max() <= 1
    torch.testing.assert_close(a[1:], b, atol=1e-5, rtol=1e-4)  # an image depends only on its own seed
    assert (a[0] - a[1]).abs().max() > 1e-3
    lat = model.encode_images(a)
    assert model.vae_scale_factor == 4 and lat.shape == (2, 4, 8, 8)


def test_fp16_model_generates_on_cpu(tiny):
    family, cfg, ckpt = tiny
    model = load_sd_model(ckpt, "cpu", None, config_dir=cfg)
    img = model.generate(["a cat"], seed=0, steps=1, height=16, width=16)
    assert img.shape == (1, 16, 16, 3) and torch.isfinite(img).all()


def test_safety_lora_trains_exports_and_reapplies_on_the_loaded_model(tiny, tmp_path):
    """One SC-DPO step with the LoRA attached; the exported kohya file reproduces the adapter."""
    from scdpo.dpo.loss import sc_dpo_loss

    family, cfg, ckpt = tiny
    model = load_sd_model(ckpt, "cpu", torch.float32, config_dir=cfg)
    base_unet = copy.deepcopy(model.unet)
    model.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=DEFAULT_TARGET_MODULES, init_lora_weights="gaussian"))
    trainable = [p for p in model.unet.parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n, p in model.unet.named_parameters() if p.requires_grad)
    images = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    latents = model.encode_images(images)  # winner, loser
    cond = model.conditioning_for_size(model.encode_prompt(["a cat"] * 2), 32, 32)
    noise = torch.randn_like(latents[:1]).repeat(2, 1, 1, 1)
    t = torch.tensor([400, 400])
    noisy = model.noise_scheduler.add_noise(latents, noise, t)
    err = (model.predict_noise(noisy, t, cond) - noise).pow(2).mean(dim=(1, 2, 3))
    with torch.no_grad():
        model.unet.disable_adapters()
        ref = (model.predict_noise(noisy, t, cond) - noise).pow(2).mean(dim=(1, 2, 3))
        model.unet.enable_adapters()
    loss, _ = sc_dpo_loss(err[:1], err[1:], ref[:1], ref[1:], torch.tensor([-1.0]), torch.tensor([2.0]),
                          beta=2500.0, lam=1.0, gamma=1.0)
    loss.mean().backward()
    grads = [p.grad for p in trainable]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    with torch.no_grad():
        for p in trainable:
            p -= 0.1 * p.grad  # one SGD step so lora_B is not zero

    path = save_lora(tmp_path / "s.safetensors", peft_unet_to_kohya(model.unet), {"ss_base_model_version": model.base_model_version})
    lora = load_lora(path)
    assert set(lora.module_names) == kohya_names_for_unet(base_unet, DEFAULT_TARGET_MODULES)
    x = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        want = model.predict_noise(x, torch.tensor([10]), cond.index(slice(0, 1)))
        model.unet = base_unet
        apply_lora(model, lora)  # checks the base model version too
        got = model.predict_noise(x, torch.tensor([10]), cond.index(slice(0, 1)))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_diffusers_folder_loads_the_same_model(tiny, tiny_fp32, tmp_path):
    family, cfg, _ = tiny
    src = tiny_fp32
    folder = tmp_path / "model"
    src.unet.save_pretrained(folder / "unet")
    src.vae.save_pretrained(folder / "vae")
    names = ["text_encoder", "text_encoder_2"][: len(src.text_encoders)]
    for name, te, tok in zip(names, src.text_encoders, src.tokenizers):
        te.save_pretrained(folder / name)
        tok.save_pretrained(folder / name.replace("text_encoder", "tokenizer"))
    src.noise_scheduler.save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text((cfg / "model_index.json").read_text())
    model = load_sd_model(folder, "cpu", None)
    assert model.family == family and model.unet.dtype == torch.float32
    cond = model.conditioning_for_size(model.encode_prompt(["a cat"]), 32, 32)
    want_cond = src.conditioning_for_size(src.encode_prompt(["a cat"]), 32, 32)
    torch.testing.assert_close(cond.hidden, want_cond.hidden)
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.predict_noise(x, torch.tensor([3]), cond), src.predict_noise(x, torch.tensor([3]), want_cond))


def test_scdpo_train_on_cached_inputs_matches_encoding_every_step(tiny, tmp_path, monkeypatch):
    """`scdpo train` on an SD model: latents + text embeddings (SDXL: pooled + size ids) encoded once
    give the LoRA of encoding every step. Loading its own model, the trainer first loads the encoders
    alone (no UNet), encodes, releases them, then loads the UNet alone (no encoders); a resumed run
    whose inputs are saved skips the encoders altogether."""
    import scdpo.models
    import scdpo.sd.loader as loader
    from scdpo.dpo import TrainConfig, train_lora

    family, cfg, ckpt = tiny
    g = torch.Generator().manual_seed(0)
    rows = [dict(prompt=f"a photo of a {w}", winner=torch.rand(32, 32, 3, generator=g),
                 loser=torch.rand(32, 32, 3, generator=g), winner_cost=-2.0, loser_cost=2.0 if k % 2 else -1.0,
                 is_harmful=bool(k % 2), category="nudity" if k % 2 else None)
            for k, w in enumerate(["cat", "dog", "cat", "house", "tree", "dog"])]
    calls, loaded = [], []
    real_model, real_unet = loader.load_sd_model, loader.load_sd_unet

    def load_model(spec, device="cpu", dtype=None, config_dir=None, unet=True):
        calls.append(("model" if unet else "encoders", dtype))
        loaded.append(real_model(spec, device, dtype, config_dir=cfg, unet=unet))
        return loaded[-1]

    def load_unet(spec, device="cpu", dtype=None, config_dir=None):
        calls.append(("unet", dtype))
        loaded.append(real_unet(spec, device, dtype, config_dir=cfg))
        return loaded[-1]

    monkeypatch.setattr(loader, "load_sd_model", load_model)
    monkeypatch.setattr(loader, "load_sd_unet", load_unet)
    monkeypatch.setattr(scdpo.models, "load_base_model", lambda spec, device=None, dtype=None: load_model(spec, device, dtype))
    opts = dict(base=str(ckpt), steps=3, batch_size=2, rank=4, alpha=4.0, lr=1e-3, warmup_steps=1, beta=2500.0,
                checkpoint_every=0, prompt_dropout=0.3, seed=1, base_dtype="fp32")
    cached = load_lora(train_lora(TrainConfig(out=str(tmp_path), name="cached", **opts), dataset=rows, progress=False))
    assert calls == [("encoders", torch.float32), ("unet", torch.float32)]
    assert loaded[0].unet is None and loaded[1].vae is None and loaded[1].text_encoders == []
    calls.clear()
    plain = load_lora(train_lora(TrainConfig(out=str(tmp_path), name="plain", cache_inputs=False, **opts),
                                 dataset=rows, progress=False))
    assert calls == [("model", torch.float32)]
    assert set(cached.tensors) == set(plain.tensors)
    assert cached.metadata["ss_base_model_version"] == plain.metadata["ss_base_model_version"]
    for k, v in plain.tensors.items():
        if v.abs().max() > 0:
            assert float((cached.tensors[k] - v).norm() / v.norm()) < 1e-2, k
    assert sum(float(v.abs().sum()) for k, v in cached.tensors.items() if "lora_up" in k) > 0

    # killed after step 1: the rerun reads the saved inputs and loads the UNet alone
    calls.clear()
    train_lora(TrainConfig(out=str(tmp_path), name="resumed", **opts), dataset=rows, progress=False, stop_after=1)
    calls.clear()
    resumed = load_lora(train_lora(TrainConfig(out=str(tmp_path), name="resumed", **opts), dataset=rows, progress=False))
    assert calls == [("unet", torch.float32)]
    for k, v in cached.tensors.items():
        torch.testing.assert_close(resumed.tensors[k], v)


def test_bf16_base_trains_the_lora_of_an_fp32_base(tiny, tmp_path, monkeypatch):
    """base_dtype auto on a CPU stores the frozen UNet in bf16; the LoRA (fp32, as are its gradients
    and optimiser state) ends within a few per cent of the fp32 run's."""
    import scdpo.sd.loader as loader
    from scdpo.dpo import TrainConfig, train_lora
    from scdpo.dpo.train import summary_of

    family, cfg, ckpt = tiny
    real_model, real_unet = loader.load_sd_model, loader.load_sd_unet
    dtypes = []

    def load_unet(spec, device="cpu", dtype=None, config_dir=None):
        dtypes.append(dtype)
        return real_unet(spec, device, dtype, config_dir=cfg)

    monkeypatch.setattr(loader, "load_sd_model", lambda spec, device="cpu", dtype=None, config_dir=None, unet=True:
                        real_model(spec, device, dtype, config_dir=cfg, unet=unet))
    monkeypatch.setattr(loader, "load_sd_unet", load_unet)
    g = torch.Generator().manual_seed(0)
    rows = [dict(prompt=f"a photo of a {w}", winner=torch.rand(32, 32, 3, generator=g),
                 loser=torch.rand(32, 32, 3, generator=g), winner_cost=-2.0, loser_cost=2.0, is_harmful=True,
                 category="nudity") for w in ["cat", "dog", "house", "tree"]]
    opts = dict(base=str(ckpt), steps=4, batch_size=2, rank=4, alpha=4.0, lr=1e-3, warmup_steps=1, beta=2500.0,
                checkpoint_every=0, seed=1)
    ref = train_lora(TrainConfig(out=str(tmp_path), name="fp32", base_dtype="fp32", **opts), dataset=rows, progress=False)
    half = train_lora(TrainConfig(out=str(tmp_path), name="auto", **opts), dataset=rows, progress=False)
    assert dtypes == [torch.float32, torch.bfloat16]
    assert summary_of(half)["base_dtype"] == "bf16" and summary_of(ref)["base_dtype"] == "fp32"
    a, b = load_lora(ref), load_lora(half)
    assert all(b.tensors[k].dtype == v.dtype for k, v in a.tensors.items())
    up = sorted(k for k in a.tensors if "lora_up" in k)
    flat_a = torch.cat([a.tensors[k].float().flatten() for k in up])
    flat_b = torch.cat([b.tensors[k].float().flatten() for k in up])
    cosine = float(torch.nn.functional.cosine_similarity(flat_a, flat_b, dim=0))
    print(f"bf16 vs fp32 base: LoRA cosine {cosine:.4f}, loss {summary_of(half)['loss_ema']:.5f} vs "
          f"{summary_of(ref)['loss_ema']:.5f}")
    assert cosine > 0.8
    assert abs(summary_of(half)["loss_ema"] - summary_of(ref)["loss_ema"]) < 0.05
