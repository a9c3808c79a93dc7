"""Run by AUTOMATIC1111 / Forge after "Install from URL" of this repository (and at each start):
hands over to ``a1111_extension/install.py``. Outside a webui (e.g. ComfyUI-Manager, which also
runs a root install.py) it does nothing."""

import os
import runpy

runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "a1111_extension", "install.py"),
               run_name="__main__")
