"""``modules.scripts``: the ``Script`` base class, ``AlwaysVisible``, the hook-argument classes, the
loader (executes each ``scripts/*.py`` file and registers the ``Script`` subclasses found in its
namespace) and ``ScriptRunner`` (calls every always-on script's hook with its slice of
``p.script_args``, reporting and swallowing exceptions as the webui does)."""

import importlib.util
import inspect
import os
import sys

from modules import errors, script_callbacks

AlwaysVisible = object()


class PostprocessImageArgs:
    def __init__(self, image):
        self.image = image


class PostprocessBatchListArgs:
    def __init__(self, images):
        self.images = images


class Script:
    name = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    infotext_fields = None
    paste_field_names = None

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def run(self, p, *args):
        pass

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def after_extra_networks_activate(self, p, *args, **kwargs):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch_list(self, p, pp, *args, **kwargs):
        pass

    def postprocess_image(self, p, pp, *args):
        pass

    def postprocess_image_after_composite(self, p, pp, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def before_hr(self, p, *args):
        pass


scripts_data = []  # (script_class, path)


def load_scripts(paths):
    """Execute each file like ``script_loading.load_module`` (module name = file name) with its
    extension folder first on sys.path, and register every ``Script`` subclass in its namespace."""
    scripts_data.clear()
    script_callbacks.clear_callbacks()
    for path in paths:
        syspath = list(sys.path)
        try:
            sys.path.insert(0, os.path.dirname(os.path.dirname(path)))
            spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            for obj in module.__dict__.values():
                if inspect.isclass(obj) and issubclass(obj, Script):
                    scripts_data.append((obj, path))
        except Exception:
            errors.report(f"Error loading script: {os.path.basename(path)}", exc_info=True)
        finally:
            sys.path[:] = syspath


class ScriptRunner:
    def __init__(self):
        self.scripts = []
        self.alwayson_scripts = []
        self.inputs = [None]

    def initialize_scripts(self, is_img2img):
        """Instantiate, keep the AlwaysVisible ones, and lay out their ui() controls one after the other
        in the arguments list (position 0 is the selectable-script index), as the webui's setup_ui does."""
        import gradio as gr

        self.scripts, self.alwayson_scripts, self.inputs = [], [], [None]
        for script_class, path in scripts_data:
            script = script_class()
            script.filename = path
            script.is_txt2img, script.is_img2img = not is_img2img, is_img2img
            if script.show(is_img2img) is AlwaysVisible:
                script.alwayson = True
                self.scripts.append(script)
                self.alwayson_scripts.append(script)
        with gr.Blocks():
            for script in self.alwayson_scripts:
                controls = script.ui(is_img2img) or []
                script.args_from = len(self.inputs)
                self.inputs.extend(controls)
                script.args_to = len(self.inputs)

    def default_args(self):
        return [0] + [getattr(c, "value", None) for c in self.inputs[1:]]

    def script(self, title):
        return next((s for s in self.scripts if s.title().lower() == title.lower()), None)

    def _call(self, hook, p, *extra, **kwargs):
        for script in self.alwayson_scripts:
            if getattr(type(script), hook) is getattr(Script, hook):
                continue
            try:
                getattr(script, hook)(p, *extra, *p.script_args[script.args_from:script.args_to], **kwargs)
            except Exception:
                errors.report(f"Error running {hook}: {script.filename}", exc_info=True)

    def before_process(self, p):
        self._call("before_process", p)

    def process(self, p):
        self._call("process", p)

    def before_process_batch(self, p, **kwargs):
        self._call("before_process_batch", p, **kwargs)

    def after_extra_networks_activate(self, p, **kwargs):
        self._call("after_extra_networks_activate", p, **kwargs)

    def process_batch(self, p, **kwargs):
        self._call("process_batch", p, **kwargs)

    def postprocess_batch(self, p, images, **kwargs):
        self._call("postprocess_batch", p, images=images, **kwargs)

    def postprocess_image(self, p, pp):
        self._call("postprocess_image", p, pp)

    def postprocess_image_after_composite(self, p, pp):
        self._call("postprocess_image_after_composite", p, pp)

    def postprocess(self, p, processed):
        self._call("postprocess", p, processed)

    def before_hr(self, p):
        self._call("before_hr", p)
