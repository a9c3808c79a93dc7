"""Installs the Python packages this extension needs that the webui's Python lacks, with the
webui's own helpers (``launch.is_installed`` / ``launch.run_pip``). It never installs or upgrades
torch, torchvision or xformers: the webui manages those. The ``scdpo`` trainer package itself is
not pip-installed (its full dependencies would upgrade the webui's pinned transformers); the
extension imports it from the repository checkout (see README)."""

import importlib.util
import os
import sys

# (import name, pip requirement): what scdpo.cost needs at scoring time besides torch.
REQUIREMENTS = [("numpy", "numpy"), ("PIL", "Pillow"), ("safetensors", "safetensors"), ("tqdm", "tqdm")]
NEVER_INSTALLED = {"torch", "torchvision", "xformers"}


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
    extension_dir = os.path.dirname(os.path.abspath(__file__))
    trainer = os.environ.get("SCDPO_TRAINER_DIR") or os.path.join(os.path.dirname(os.path.realpath(extension_dir)), "trainer")
    if importlib.util.find_spec("scdpo") is None and not os.path.isfile(os.path.join(trainer, "scdpo", "__init__.py")):
        print("[SC-DPO] the scdpo package was not found: install this extension from the repository URL, or set "
              "SCDPO_TRAINER_DIR=<repo>/trainer, or `pip install --no-deps -e <repo>` in the webui's Python")
    return 0


if __name__ == "__main__":
    sys.exit(main())
