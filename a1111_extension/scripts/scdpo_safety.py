"""SC-DPO Safety for AUTOMATIC1111 / Forge — loader (the extension's code is in ../scdpo_a1111/).

The webui executes this file and registers the ``Script`` class it finds in its namespace.
"""

import os
import sys

_EXTENSION_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _EXTENSION_DIR not in sys.path:
    sys.path.append(_EXTENSION_DIR)

from scdpo_a1111.loader import load as _load  # noqa: E402

globals().update(_load(__file__))
