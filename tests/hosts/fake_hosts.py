"""The one way a test runs inside a fake host: :func:`installed`.

Each fake is a folder of small stand-ins for the host's own top-level modules, written from the
host's interfaces (see the folder's README for the host commit and the files it fakes):

* ``comfyui/``: ComfyUI a125cd84 (``folder_paths``, ``latent_preview``, ``comfy``, ``comfy_api``,
  ``comfy_execution``);
* ``webui/``: AUTOMATIC1111 v1.10.1 (``modules``, ``gradio``).

:func:`installed` puts the folder first on ``sys.path`` and, when the test is over, restores
``sys.path`` and forgets every module of the fake and of the code under test that imported it
(the node pack, the extension), putting back whatever was imported before. So each test sees a
freshly started host, and no test outside it sees a fake ``comfy`` or ``gradio``. The fixtures
``comfyui`` and ``webui`` in ``conftest.py`` are this, per test.

Inside a fake host change ``sys.path`` directly (it is restored here), not with
``monkeypatch.syspath_prepend``: the root conftest's autouse ``monkeypatch`` is torn down after
these fixtures and would put back a ``sys.path`` that still holds the fake.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

HOSTS_DIR = Path(__file__).resolve().parent
REPO = HOSTS_DIR.parents[1]
# ComfyUI imports a custom-node folder under its path as the module name (nodes.load_custom_node)
COMFY_PACK_MODULE = str(REPO).replace(".", "_x_")


@dataclass(frozen=True)
class FakeHost:
    folder: Path
    modules: tuple[str, ...]  # top-level names of the fake, and of the code under test loaded into it


HOSTS = {
    "comfyui": FakeHost(HOSTS_DIR / "comfyui", ("folder_paths", "latent_preview", "comfy", "comfy_api",
                                                 "comfy_execution", COMFY_PACK_MODULE)),
    "webui": FakeHost(HOSTS_DIR / "webui", ("modules", "gradio", "scdpo_a1111")),
}


def _owned(name: str, roots: tuple[str, ...]) -> bool:
    return any(name == root or name.startswith(root + ".") for root in roots)


@contextlib.contextmanager
def installed(host: str):
    """Run the body inside the fake ``host`` (``"comfyui"`` or ``"webui"``); yields its folder."""
    fake = HOSTS[host]
    saved_path = list(sys.path)
    saved_modules = {name: module for name, module in sys.modules.items() if _owned(name, fake.modules)}
    for name in saved_modules:
        del sys.modules[name]
    sys.path.insert(0, str(fake.folder))
    try:
        yield fake.folder
    finally:
        sys.path[:] = saved_path
        for name in [name for name in sys.modules if _owned(name, fake.modules)]:
            del sys.modules[name]
        sys.modules.update(saved_modules)
