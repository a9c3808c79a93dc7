"""A minimal stand-in for gradio, enough for a script's ui() to run as in the webui's
``init_default_script_args`` (which builds the controls and reads their ``.value``)."""


class _Block:
    def __init__(self, *args, value=None, **kwargs):
        self.value = value
        self.kwargs = kwargs

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class Blocks(_Block):
    pass


class Accordion(_Block):
    pass


class Checkbox(_Block):
    pass


class Dropdown(_Block):
    pass


class Slider(_Block):
    pass


class Radio(_Block):
    pass


class Textbox(_Block):
    pass
