"""``modules.shared``: ``opts`` (settings with ``add_option`` / ``set(..., is_api)``), ``OptionInfo``,
``options_section``, ``cmd_opts`` and ``state`` (job bookkeeping and the live preview)."""

import datetime
from types import SimpleNamespace


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before="", comment_after="", infotext=None, restrict_api=False,
                 category_id=None):
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.restrict_api = restrict_api
        self.do_not_save = False


def options_section(section_identifier, options_dict):
    for v in options_dict.values():
        v.section = section_identifier
    return options_dict


class Options:
    """Values live in ``data``; unknown keys fall back to the registered default, else AttributeError."""

    def __init__(self, data_labels):
        object.__setattr__(self, "data_labels", data_labels)
        object.__setattr__(self, "data", {k: v.default for k, v in data_labels.items()})

    def __getattr__(self, item):
        data = object.__getattribute__(self, "data")
        if item in data:
            return data[item]
        labels = object.__getattribute__(self, "data_labels")
        if item in labels:
            return labels[item].default
        raise AttributeError(item)

    def __setattr__(self, key, value):
        if key in self.data or key in self.data_labels:
            self.data[key] = value
        else:
            object.__setattr__(self, key, value)

    def add_option(self, key, info):
        self.data_labels[key] = info
        if key not in self.data:
            self.data[key] = info.default

    def set(self, key, value, is_api=False, run_callbacks=True):
        """As the webui: False (unchanged) for an API change of a ``restrict_api`` option."""
        if self.data.get(key) == value:
            return False
        option = self.data_labels[key]
        if is_api and option.restrict_api:
            return False
        setattr(self, key, value)
        return True


options_templates = {
    "samples_save": OptionInfo(True, "Always save all generated images"),
    "grid_save": OptionInfo(True, "Always save all generated image grids"),
    "return_grid": OptionInfo(True, "Show grid in gallery"),
    "live_previews_enable": OptionInfo(True, "Show live previews"),
    "show_progress_every_n_steps": OptionInfo(1, "Live preview every N steps"),
    "enable_pnginfo": OptionInfo(True, "Write infotext to metadata"),
    "save_txt": OptionInfo(False, "Create a text file with infotext next to every image"),
    "sd_lora": OptionInfo("None", "Add network to prompt"),
}
opts = Options(options_templates)
cmd_opts = SimpleNamespace(lora_dir=None, api=True, nowebui=False, api_auth=None)


class State:
    """``shared.state``: the webui's UI and ``/sdapi/v1/progress`` show ``current_image``."""

    def __init__(self):
        self.job_timestamp = "0"
        self.job_count = 0
        self.sampling_step = 0
        self.current_image = None
        self.id_live_preview = 0
        self.previews_shown = []  # test aid: every image the UI/API could have displayed
        self.interrupted = False
        self.skipped = False

    def begin(self, job="(unknown)"):
        self._n = getattr(self, "_n", 0) + 1
        self.job_timestamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S") + f".{self._n}"
        self.current_image = None
        self.id_live_preview = 0

    def end(self):
        self.job_count = 0

    def assign_current_image(self, image):
        self.current_image = image
        self.id_live_preview += 1
        self.previews_shown.append(image)

    def nextjob(self):
        self.sampling_step = 0


state = State()
