"""What to tell a user who has no full CLIP model: which file to get, where to put it, and what can be
covered without it. Returned as text, so any command (a later ``scdpo recipe``) can print it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional, Sequence

from .zero_shot import CONCEPT_PROMPTS, SPEC_PREFIX

CLIP_FOLDER_NAME = "clip-vit-large-patch14"


def nudenet_installed() -> bool:
    return importlib.util.find_spec("nudenet") is not None


def missing_clip_help(categories: Optional[Sequence[str]] = None, comfyui: Optional[str | Path] = None,
                      webui: Optional[str | Path] = None, nudenet: Optional[bool] = None) -> str:
    """Several lines: the full CLIP model to get, where to put it in a ComfyUI or A1111 / Forge install
    (``comfyui`` / ``webui``: the install folders, to print full paths), how to pass it, and which of
    ``categories`` (default: the zero-shot scorer's) can still be covered without it. ``nudenet``:
    whether NudeNet is installed (default: look)."""
    categories = list(categories or CONCEPT_PROMPTS)
    nudenet = nudenet_installed() if nudenet is None else nudenet
    comfy_dir = Path(comfyui or "ComfyUI") / "models" / "clip_vision" / CLIP_FOLDER_NAME
    webui_dir = Path(webui or "stable-diffusion-webui") / "models" / "scdpo" / CLIP_FOLDER_NAME
    hub = Path("~/.cache/huggingface/hub/models--openai--clip-vit-large-patch14")
    lines = [
        "No full CLIP model (image and text towers) was given, so the CLIP reward (--reward clip:PATH) and the",
        f"CLIP zero-shot cost model (--cost-model {SPEC_PREFIX}:PATH) are not available.",
        "",
        "What to get (either one; only .safetensors files are read):",
        "  - openai/clip-vit-large-patch14 (the CLIP of SD 1.x): its config.json and model.safetensors (1.7 GB),",
        "    both in one folder;",
        "  - or an open_clip file with both towers, e.g. open_clip_model.safetensors of",
        "    laion/CLIP-ViT-H-14-laion2B-s32B-b79K (with its open_clip_config.json beside it).",
        "Not these: the files ComfyUI's IP-Adapter / unCLIP workflows put in models/clip_vision/ (image tower only:",
        "fine as a cost-model --backbone, not for the reward), models/clip/ or models/text_encoders/ files and the",
        "CLIP inside a checkpoint (text tower only), .bin/.pt/.pth files (pickled: never loaded).",
        "",
        "Where to put it (any folder works; these keep it with your models):",
        f"  ComfyUI:        {comfy_dir}/config.json and model.safetensors",
        f"  A1111 / Forge:  {webui_dir}/config.json and model.safetensors",
        "                  (the webui has no folder of its own for a full CLIP model)",
        f"  Already downloaded with transformers? pass {hub} as it is.",
        "Then pass that folder (or the open_clip file):",
        f"  scdpo data build ... --reward clip:{comfy_dir} --cost-model nudenet+{SPEC_PREFIX}:{comfy_dir}",
        "",
        "Without it:",
    ]
    for cat in categories:
        if cat == "nudity" and nudenet:
            lines.append("  - nudity: covered by NudeNet (installed): --cost-model nudenet")
        elif cat == "nudity":
            lines.append('  - nudity: NudeNet would cover it: pip install "scdpo-safe-diffusion[nudenet]", then '
                         "--cost-model nudenet")
        else:
            lines.append(f"  - {cat}: not covered without CLIP, unless you train a cost model on labelled images "
                         "(scdpo cost train --images DIR --backbone <a models/clip_vision file>)")
    lines.append("  - the reward: your own function, --reward package.module:function")
    return "\n".join(lines)
