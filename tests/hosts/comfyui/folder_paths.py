"""Stand-in for ComfyUI's folder_paths: a table folder name -> ([paths], extensions)."""

from __future__ import annotations

import os
import tempfile

supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
# removed when the interpreter exits (the object's finaliser), so test runs leave no folders behind
_TREE = tempfile.TemporaryDirectory(prefix="fake_comfyui_")
base_path = _TREE.name
models_dir = os.path.join(base_path, "models")
folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {}


def reset(new_base: str | None = None) -> None:
    """Test helper: a fresh ComfyUI tree (ComfyUI itself builds this table once at start-up)."""
    global base_path, models_dir
    if new_base is not None:
        base_path = new_base
        models_dir = os.path.join(base_path, "models")
    folder_names_and_paths.clear()
    for name in ("checkpoints", "loras", "vae", "clip_vision", "embeddings", "upscale_models"):
        folder_names_and_paths[name] = ([os.path.join(models_dir, name)], set(supported_pt_extensions))


reset()


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    if folder_name in folder_names_and_paths:
        paths, _ = folder_names_and_paths[folder_name]
        if full_folder_path in paths:
            if is_default and paths[0] != full_folder_path:
                paths.remove(full_folder_path)
                paths.insert(0, full_folder_path)
        elif is_default:
            paths.insert(0, full_folder_path)
        else:
            paths.append(full_folder_path)
    else:  # as extra_model_paths.yaml creates unknown folders: no extension filter
        folder_names_and_paths[folder_name] = ([full_folder_path], set())


def get_folder_paths(folder_name: str) -> list[str]:
    return folder_names_and_paths[folder_name][0][:]


def _files_under(directory: str) -> list[str]:
    found = []
    for root, _dirs, files in os.walk(directory, followlinks=True):
        for f in files:
            found.append(os.path.relpath(os.path.join(root, f), directory).replace(os.sep, "/"))
    return found


def get_filename_list(folder_name: str) -> list[str]:
    paths, extensions = folder_names_and_paths[folder_name]  # KeyError for an unknown folder, as ComfyUI
    names: set[str] = set()
    for directory in paths:
        if os.path.isdir(directory):
            names.update(f for f in _files_under(directory)
                         if not extensions or os.path.splitext(f)[-1].lower() in extensions)
    return sorted(names)


def get_full_path(folder_name: str, filename: str) -> str | None:
    if folder_name not in folder_names_and_paths:
        return None
    filename = os.path.relpath(os.path.join("/", filename), "/")
    for directory in folder_names_and_paths[folder_name][0]:
        full = os.path.join(directory, filename)
        if os.path.isfile(full):
            return full
    return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    full = get_full_path(folder_name, filename)
    if full is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return full
