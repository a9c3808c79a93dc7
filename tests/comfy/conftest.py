"""ComfyUI stand-ins on sys.path for the node-pack tests, and a fresh ComfyUI model tree per test."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comfy_host import REPO_ROOT, install_fake_comfyui, load_pack, pack_module  # noqa: E402

install_fake_comfyui()


@pytest.fixture
def comfy_models(tmp_path):
    """A fresh ComfyUI base folder with models/{loras,safety_models,clip_vision}; returns the models dir."""
    import folder_paths

    folder_paths.reset(str(tmp_path / "ComfyUI"))
    pack_module("model_folders").register_safety_models_folder()  # ComfyUI builds the table, then imports packs
    models = Path(folder_paths.models_dir)
    for sub in ("loras", "safety_models", "clip_vision", "checkpoints"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    return models


@pytest.fixture
def pack():
    return load_pack(REPO_ROOT)
