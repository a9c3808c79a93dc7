"""The trainer's web UI (``scdpo ui``; also mounted as a tab by the A1111 / Forge extension).

gradio is an optional extra (``pip install "scdpo-safe-diffusion[ui]"``): nothing here imports it
until a UI is built, so ``import scdpo.ui`` works without it and says how to install it when needed.

* :func:`create_blocks` / :func:`scdpo.ui.app.build_blocks` → ``gr.Blocks`` of the trainer UI.
* :mod:`.jobs` runs one ``python -m scdpo ...`` job at a time (no gradio needed).
* :mod:`.forms` reads each command's options from its argparse parser (no gradio needed).
"""

from __future__ import annotations

import os

from ..errors import ScdpoError

INSTALL_HINT = 'pip install "scdpo-safe-diffusion[ui]"  (or: pip install "gradio>=4.40")'


class GradioMissingError(ScdpoError):
    """gradio (the optional ``ui`` extra) is not installed."""


def require_gradio():
    """Import gradio with its analytics switched off, or raise :class:`GradioMissingError`."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio's first import: no call-outs
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import gradio
    except ImportError as exc:
        raise GradioMissingError(f"the trainer web UI needs gradio, which is not installed ({exc}); install it "
                                 f"with: {INSTALL_HINT}") from None
    return gradio


def create_blocks(embedded: bool = False, workdir=None, runner=None):
    """The trainer UI as ``gr.Blocks`` (see :func:`scdpo.ui.app.build_blocks`)."""
    from .app import build_blocks

    return build_blocks(runner=runner, embedded=embedded, workdir=workdir)
