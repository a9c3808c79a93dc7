"""``modules.sd_models``: the loaded model's slot (``model_data.sd_model``) and the family flags the
webui sets on the model when it loads a checkpoint (``is_sd1`` / ``is_sd2`` / ``is_sdxl``)."""

from types import SimpleNamespace


def stand_in_model(family: str = "sd1"):
    """What the webui's loaded model says about its family; ``family``: sd1 | sd2 | sdxl."""
    return SimpleNamespace(is_sd1=family == "sd1", is_sd2=family == "sd2", is_sdxl=family == "sdxl")


class SdModelData:
    def __init__(self):
        self.sd_model = None  # None until a checkpoint is loaded (shared.sd_model would load one)


model_data = SdModelData()
