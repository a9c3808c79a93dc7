"""Real Stable Diffusion base models (SD 1.x, SDXL), loaded offline from the files users have."""
