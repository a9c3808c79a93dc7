"""The fake hosts as fixtures: ``comfyui`` and ``webui`` run a test inside the fake ComfyUI or
webui (:func:`fake_hosts.installed`, installed for the test and removed after it).

``comfyui`` yields the fake's folder; a node-pack test module asks for it with
``pytestmark = pytest.mark.usefixtures("comfyui")``. ``webui`` yields
:func:`webui_host.started`: ``with webui(lora_dir, settings=...) as web`` loads the extension.
"""

from pathlib import Path

import pytest
from fake_hosts import installed


@pytest.fixture
def comfyui():
    with installed("comfyui") as folder:
        yield folder


@pytest.fixture
def webui():
    with installed("webui"):
        from webui_host import started

        yield started


@pytest.fixture
def comfy_models(comfyui, tmp_path):
    """A fresh ComfyUI base folder with models/{loras,safety_models,clip_vision,checkpoints}; returns the models dir."""
    import folder_paths
    from comfy_host import pack_module

    folder_paths.reset(str(tmp_path / "ComfyUI"))
    pack_module("model_folders").register_safety_models_folder()  # ComfyUI builds the table, then imports packs
    models = Path(folder_paths.models_dir)
    for sub in ("loras", "safety_models", "clip_vision", "checkpoints"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    return models
