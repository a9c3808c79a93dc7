"""SC-DPO Safe Diffusion: safety LoRAs and a safety cost model for Stable-Diffusion-family UNets."""

__version__ = "0.1.0"
