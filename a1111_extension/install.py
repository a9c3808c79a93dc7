"""Installs the Python packages this extension needs that the webui's Python lacks, with the
webui's own helpers (``launch.is_installed`` / ``launch.run_pip``). It never installs or upgrades
torch, torchvision or xformers: the webui manages those. The ``scdpo`` trainer package itself is
not pip-installed (its full dependencies would upgrade the webui's pinned transformers); the
extension imports it from the repository checkout (see docs/a1111.md).

**NudeNet, on request** (``SCDPO_INSTALL_NUDENET=1`` in the webui's environment, e.g.
``webui-user.sh``/``.bat``): a plain ``pip install nudenet`` would replace the webui's numpy 1.26
with 2.x and protobuf 3.20 with a newer major, and add opencv-python-headless over the webui's
opencv-python. So ``onnxruntime`` is installed under a constraints file that pins every package
already in the webui's Python to its installed version (pip can only add packages, and picks an
onnxruntime that works with them), and ``nudenet`` itself with ``--no-deps`` (its model ships in
the wheel; it uses the webui's cv2). numpy, protobuf and torch are checked unchanged afterwards."""

import importlib.metadata
import importlib.util
import os
import sys
import tempfile

# (import name, pip requirement): what scdpo.cost needs at scoring time besides torch.
REQUIREMENTS = [("numpy", "numpy"), ("PIL", "Pillow"), ("safetensors", "safetensors"), ("tqdm", "tqdm")]
NEVER_INSTALLED = {"torch", "torchvision", "xformers"}
NUDENET_ENV = "SCDPO_INSTALL_NUDENET"
KEPT = ("numpy", "protobuf", "torch", "torchvision")  # pinned by the webui; checked unchanged after NudeNet


def installed_versions() -> dict:
    """``{distribution name (lower case): version}`` of everything in this Python."""
    out = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            out.setdefault(name.lower(), dist.version)
    return out


def constraints_text(versions: dict) -> str:
    """A pip constraints file that keeps every installed distribution at its version."""
    return "".join(f"{name}=={version}\n" for name, version in sorted(versions.items()))


def install_nudenet(launch) -> bool:
    """NudeNet and onnxruntime without changing any package the webui has; True if all went well."""
    if importlib.util.find_spec("nudenet") is not None and importlib.util.find_spec("onnxruntime") is not None:
        return True
    before = installed_versions()
    fd, constraints = tempfile.mkstemp(prefix="scdpo_constraints_", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write(constraints_text(before))
    try:
        if importlib.util.find_spec("onnxruntime") is None:
            launch.run_pip(f'install onnxruntime -c "{constraints}"',
                           "onnxruntime for SC-DPO's NudeNet cost model (no installed package changes)")
        if importlib.util.find_spec("nudenet") is None:
            launch.run_pip("install --no-deps nudenet", "nudenet for SC-DPO (without its own dependencies)")
    except Exception as exc:  # the webui's run_pip raises with pip's output; say what it means here
        print(f"[SC-DPO] NudeNet was not installed ({str(exc).strip().splitlines()[0] if str(exc).strip() else exc}); "
              "the webui's packages are unchanged. Use a cost model from `scdpo cost train` instead, or install "
              "onnxruntime for your numpy by hand")
        return False
    finally:
        os.unlink(constraints)
    importlib.invalidate_caches()
    after = installed_versions()
    changed = [f"{name} {before.get(name)} -> {after.get(name)}" for name in KEPT if before.get(name) != after.get(name)]
    if changed:
        print(f"[SC-DPO] WARNING: installing NudeNet changed {', '.join(changed)}; reinstall the webui's versions")
        return False
    print("[SC-DPO] NudeNet installed (onnxruntime " + str(after.get("onnxruntime")) + ", nudenet "
          + str(after.get("nudenet")) + "); numpy, protobuf and torch unchanged")
    return True


def main() -> int:
    try:
        import launch
    except ImportError:
        print("[SC-DPO] install.py: not inside an AUTOMATIC1111 / Forge webui; nothing to install")
        return 0
    for module, requirement in REQUIREMENTS:
        if requirement.split("=")[0].split("<")[0].split(">")[0].strip().lower() in NEVER_INSTALLED:
            continue
        if importlib.util.find_spec(module) is None:
            launch.run_pip(f"install {requirement}", f"{requirement} for SC-DPO Safety")
    if os.environ.get(NUDENET_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        install_nudenet(launch)
    extension_dir = os.path.dirname(os.path.abspath(__file__))
    trainer = os.environ.get("SCDPO_TRAINER_DIR") or os.path.join(os.path.dirname(os.path.realpath(extension_dir)), "trainer")
    if importlib.util.find_spec("scdpo") is None and not os.path.isfile(os.path.join(trainer, "scdpo", "__init__.py")):
        print("[SC-DPO] the scdpo package was not found: install this extension from the repository URL, or set "
              "SCDPO_TRAINER_DIR=<repo>/trainer, or `pip install --no-deps -e <repo>` in the webui's Python")
    return 0


if __name__ == "__main__":
    sys.exit(main())
