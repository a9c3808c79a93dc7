"""Files of blocked images: saved redacted, or withheld (setting ``scdpo_blocked_files``, default
``withhold``).

The webui has no way for an extension to skip a save: ``images.save_image`` runs
``on_before_image_saved``, writes ``params.image`` to ``params.filename``, then runs
``on_image_saved``. So a withheld image's save is pointed at a fresh private temporary folder
(what gets written there is already the redacted image), and that folder, with the ``.txt`` or
``.jpg`` the webui may write beside the image, is deleted once the save is done. Nothing reaches the
output folders; the console says which file was withheld and why.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from . import gate
from .options import WITHHOLD, option

_withheld: dict = {}  # private temporary folder -> (file name the webui meant, verdict)


def withhold_if_blocked(params, opts) -> bool:
    """``ImageSaveParams`` before the write: withhold the file if its image was blocked; True if so."""
    verdict = gate.verdict_of(params.image)
    if verdict is None or not verdict.blocked or option(opts, "scdpo_blocked_files") != WITHHOLD:
        return False
    folder = tempfile.mkdtemp(prefix="scdpo_withheld_")
    _withheld[folder] = (params.filename, verdict)
    params.filename = os.path.join(folder, os.path.basename(params.filename))
    return True


def image_saved(params) -> None:
    """``ImageSaveParams`` after the write: delete a withheld file and its siblings."""
    folder = os.path.dirname(os.path.abspath(params.filename or ""))
    entry = _withheld.pop(folder, None)
    if entry is None:
        return
    shutil.rmtree(folder, ignore_errors=True)
    meant, verdict = entry
    print(f"[SC-DPO] {verdict.describe()}; file withheld, not saved: {meant}")
