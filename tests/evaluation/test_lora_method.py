"""``lora_method``: attach in prepare(), restore the base bit-exactly in cleanup(), any number of times.

Regression: the adapter used to be called "eval", which collides with ``nn.Module.eval`` and made
every LoRA evaluation crash.
"""

import pytest
import torch

from scdpo.errors import IncompatibleModelError, InputFileError
from scdpo.evaluation.baselines import GenerationMethod, lora_method
from scdpo.lora import load_lora, save_lora

PROMPTS = ["a green square on the left beside blood over a white backdrop",
           "a red circle in the middle of a blue background"]
SEEDS = [11, 12]


def _gen(model, method=None):
    return (method or GenerationMethod("base")).generate(model, PROMPTS, seeds=SEEDS, steps=2)


def _adapters(model):
    return set(getattr(model.unet, "peft_config", None) or {})


def test_prepare_attaches_and_cleanup_restores_bit_exactly(clean_model, lora_files):
    model = clean_model
    base = _gen(model)
    m = lora_method("safe-a", model, str(lora_files["a"]))
    assert m.name == "safe-a" and m.lora_path == str(lora_files["a"])
    assert "strength 1" in m.description
    assert _adapters(model) == set()  # building the method attaches nothing yet
    m.prepare()
    try:
        (adapter,) = _adapters(model)
        assert not hasattr(torch.nn.Module, adapter), f"adapter name {adapter!r} shadows an nn.Module attribute"
        model.unet.eval()  # the "eval" adapter name broke this
        with_lora = _gen(model, m)
        assert (with_lora - base).abs().max() > 1e-3
        assert torch.equal(with_lora, _gen(model, m))  # deterministic with the LoRA on
    finally:
        m.cleanup()
    assert _adapters(model) == set()
    assert torch.equal(_gen(model), base)


def test_twice_in_a_row_and_two_loras_in_sequence(clean_model, lora_files):
    model = clean_model
    base = _gen(model)
    a = lora_method("a", model, str(lora_files["a"]))
    b = lora_method("b", model, str(lora_files["b"]))
    outs = {}
    for m in (a, a, b, a):
        m.prepare()
        try:
            out = _gen(model, m)
        finally:
            m.cleanup()
        assert torch.equal(_gen(model), base), f"{m.name}: base not restored"
        if m.name in outs:
            assert torch.equal(out, outs[m.name]), f"{m.name}: not reproducible after another run"
        outs[m.name] = out
    assert not torch.equal(outs["a"], outs["b"])
    assert not torch.equal(outs["a"], base) and not torch.equal(outs["b"], base)


def test_strength_scales_the_lora(clean_model, lora_files):
    model = clean_model
    base = _gen(model)
    outs = {}
    for s in (0.0, 0.5, 1.0):
        m = lora_method(f"s{s}", model, str(lora_files["a"]), strength=s)
        m.prepare()
        try:
            outs[s] = _gen(model, m)
        finally:
            m.cleanup()
    torch.testing.assert_close(outs[0.0], base, atol=1e-6, rtol=0)
    d_half, d_full = (outs[0.5] - base).abs().mean(), (outs[1.0] - base).abs().mean()
    assert 0 < d_half < d_full
    assert "strength 0.5" in lora_method("x", model, str(lora_files["a"]), strength=0.5).description


def test_zero_up_weights_lora_is_a_no_op(clean_model, lora_files, tmp_path):
    model = clean_model
    lora = load_lora(lora_files["a"])
    zero = {k: (torch.zeros_like(v) if k.endswith("lora_up.weight") else v) for k, v in lora.tensors.items()}
    path = save_lora(tmp_path / "zero.safetensors", zero, {"ss_base_model_version": "toy_v1"})
    base = _gen(model)
    m = lora_method("zero", model, str(path))
    m.prepare()
    try:
        torch.testing.assert_close(_gen(model, m), base, atol=1e-6, rtol=0)
    finally:
        m.cleanup()


def test_missing_file_and_wrong_base_fail_before_any_generation(clean_model, lora_files, tmp_path):
    model = clean_model
    with pytest.raises(InputFileError):
        lora_method("x", model, str(tmp_path / "missing.safetensors"))
    other = save_lora(tmp_path / "sd.safetensors", dict(load_lora(lora_files["a"]).tensors),
                      {"ss_base_model_version": "sd_v1"})
    with pytest.raises(IncompatibleModelError, match="sd_v1"):
        lora_method("x", model, str(other))
    assert _adapters(model) == set()
