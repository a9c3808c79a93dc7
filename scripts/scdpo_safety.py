"""SC-DPO Safety for AUTOMATIC1111 / Forge, installed with "Install from URL" of this repository.

The webui loads only ``<repository>/scripts/*.py``; this file hands over to ``a1111_extension/``,
the extension itself (which also installs on its own by copying it into ``extensions/``; when both
installs are present only one registers).
"""

import os
import sys

_EXTENSION_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "a1111_extension")
if _EXTENSION_DIR not in sys.path:
    sys.path.append(_EXTENSION_DIR)

from scdpo_a1111.loader import load as _load  # noqa: E402

globals().update(_load(__file__))
