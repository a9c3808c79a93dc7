"""Stand-in model configs, named as ComfyUI's comfy.supported_models classes."""


class BASE:
    unet_config: dict = {}

    def __init__(self, unet_config=None):
        self.unet_config = dict(unet_config if unet_config is not None else type(self).unet_config)


class SD15(BASE):
    unet_config = {
        "context_dim": 768, "model_channels": 320, "use_linear_in_transformer": False,
        "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "transformer_depth_middle": 1,
    }


class SDXL(BASE):
    unet_config = {
        "context_dim": 2048, "model_channels": 320, "use_linear_in_transformer": True,
        "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4],
        "transformer_depth": [0, 0, 2, 2, 10, 10],
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
        "transformer_depth_middle": 10,
    }


class SSD1B(SDXL):
    pass
