"""The memory plan's terms come from the real architectures and meet the consumer-GPU targets."""

import pytest

from scdpo.sd.memory import GIB, activation_elements, estimate_training_memory, lora_parameter_count, parameter_counts

pytestmark = pytest.mark.slow  # builds the full SDXL architecture on the meta device (~30 s on a busy CPU)


def test_parameter_counts_are_the_published_sizes():
    assert parameter_counts("sd15") == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
    xl = parameter_counts("sdxl")
    assert xl["unet"] == 2_567_463_684 and xl["text_encoder_2"] == 694_659_840
    # rank r on every attention projection: r * (in + out) per module
    assert lora_parameter_count("sd15", 16) == (3_188_736, 128)
    assert lora_parameter_count("sdxl", 4) == (5_806_080, 560)


def test_activation_counts_grow_with_pixels_and_plans_fit_the_targets():
    small, big = activation_elements("sd15", 256), activation_elements("sd15", 512)
    ratio = big["stored_checkpoint_inputs"] / small["stored_checkpoint_inputs"]
    assert 3.9 < ratio < 4.1  # 4x the latent pixels, 4x the stored block inputs
    sd15 = estimate_training_memory("sd15", 512, rank=16)
    sdxl = estimate_training_memory("sdxl", 1024, rank=16)
    assert sd15.total_bytes < 8 * GIB / 2 and sdxl.total_bytes < 24 * GIB / 2  # half the target left for CUDA overheads
    assert "| **total** |" in sdxl.table()
