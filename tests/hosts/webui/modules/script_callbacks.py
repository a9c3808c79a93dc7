"""``modules.script_callbacks``: registries filled by extensions, called by the webui; exceptions
in a callback are reported and swallowed, as in the webui."""

import dataclasses
import inspect

from modules import errors


class ImageSaveParams:
    def __init__(self, image, p, filename, pnginfo):
        self.image = image
        self.p = p
        self.filename = filename
        self.pnginfo = pnginfo


class ImageGridLoopParams:
    def __init__(self, imgs, cols, rows):
        self.imgs = imgs
        self.cols = cols
        self.rows = rows


@dataclasses.dataclass
class ScriptCallback:
    script: str
    callback: object
    name: str = "unnamed"


callback_map = {name: [] for name in (
    "callbacks_app_started", "callbacks_model_loaded", "callbacks_ui_tabs", "callbacks_ui_settings",
    "callbacks_before_image_saved", "callbacks_image_saved", "callbacks_image_grid", "callbacks_script_unloaded",
    "callbacks_before_ui", "callbacks_infotext_pasted",
)}


def add_callback(callbacks, fun, *, name=None, category="unknown"):
    stack = [x for x in inspect.stack() if x.filename != __file__]
    callbacks.append(ScriptCallback(stack[0].filename if stack else "unknown file", fun, name or category))


def clear_callbacks():
    for callback_list in callback_map.values():
        callback_list.clear()


def _run(key, *args):
    results = []
    for c in list(callback_map[key]):
        try:
            results.append(c.callback(*args))
        except Exception:
            errors.report(f"Error executing callback {key} for {c.script}", exc_info=True)
    return results


def app_started_callback(demo, app):
    _run("callbacks_app_started", demo, app)


def ui_tabs_callback():
    res = []
    for r in _run("callbacks_ui_tabs"):
        res += r or []
    return res


def ui_settings_callback():
    _run("callbacks_ui_settings")


def before_image_saved_callback(params):
    _run("callbacks_before_image_saved", params)


def image_saved_callback(params):
    _run("callbacks_image_saved", params)


def image_grid_callback(params):
    _run("callbacks_image_grid", params)


def script_unloaded_callback():
    _run("callbacks_script_unloaded")


def on_app_started(callback, *, name=None):
    add_callback(callback_map["callbacks_app_started"], callback, name=name, category="app_started")


def on_model_loaded(callback, *, name=None):
    add_callback(callback_map["callbacks_model_loaded"], callback, name=name, category="model_loaded")


def on_ui_tabs(callback, *, name=None):
    add_callback(callback_map["callbacks_ui_tabs"], callback, name=name, category="ui_tabs")


def on_ui_settings(callback, *, name=None):
    add_callback(callback_map["callbacks_ui_settings"], callback, name=name, category="ui_settings")


def on_before_image_saved(callback, *, name=None):
    add_callback(callback_map["callbacks_before_image_saved"], callback, name=name, category="before_image_saved")


def on_image_saved(callback, *, name=None):
    add_callback(callback_map["callbacks_image_saved"], callback, name=name, category="image_saved")


def on_image_grid(callback, *, name=None):
    add_callback(callback_map["callbacks_image_grid"], callback, name=name, category="image_grid")


def on_script_unloaded(callback, *, name=None):
    add_callback(callback_map["callbacks_script_unloaded"], callback, name=name, category="script_unloaded")


def on_before_ui(callback, *, name=None):
    add_callback(callback_map["callbacks_before_ui"], callback, name=name, category="before_ui")


def on_infotext_pasted(callback, *, name=None):
    add_callback(callback_map["callbacks_infotext_pasted"], callback, name=name, category="infotext_pasted")
