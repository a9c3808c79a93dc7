"""``scdpo generate``: prompts → PNG files with prompt, seed, model and LoRA in the PNG text chunks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from tqdm import tqdm

from .errors import InputFileError
from .fileio import atomic_path, ensure_writable_dir
from .pipeline import TextToImageModel


def read_prompt_file(path: str | Path) -> list[str]:
    """One prompt per line; blank lines and lines starting with ``#`` are skipped."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"prompt file not found: {path}; pass a text file with one prompt per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputFileError(f"prompt file {path} is not UTF-8 text; save it as plain text, one prompt per line") from None
    prompts = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise InputFileError(f"prompt file {path} contains no prompts; write one prompt per line")
    return prompts


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[B,H,W,C]`` float 0..1 → uint8 numpy."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def save_png(image: np.ndarray, path: Path, text: dict[str, str]) -> None:
    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        info.add_text(k, v)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG", pnginfo=info)


def attach_lora(model: TextToImageModel, lora_path: Optional[str], strength: float = 1.0) -> Optional[str]:
    """Apply a kohya safety LoRA to ``model.unet`` (via peft); returns a description for metadata."""
    if not lora_path:
        return None
    from .lora import apply_lora, load_lora

    lora = load_lora(lora_path)
    apply_lora(model, lora, scale=strength)  # the model, not its UNet: the base-model version is checked
    return f"{Path(lora_path).name}:{strength:g}"


def generate_to_folder(
    model: TextToImageModel,
    prompts: Sequence[str],
    out: str | Path,
    *,
    seed: int = 0,
    batch_size: int = 16,
    steps: Optional[int] = None,
    guidance_scale: Optional[float] = None,
    negative_prompt: str = "",
    lora_desc: Optional[str] = None,
    progress: bool = True,
) -> list[Path]:
    """Generate one image per prompt (image ``i`` uses seed ``seed + i``) and write PNGs."""
    out = ensure_writable_dir(out)
    paths: list[Path] = []
    steps = steps or model.default_steps
    guidance_scale = model.default_guidance if guidance_scale is None else guidance_scale
    for start in tqdm(range(0, len(prompts), batch_size), desc="generate", disable=not progress, unit="batch"):
        chunk = list(prompts[start:start + batch_size])
        seeds = [seed + start + i for i in range(len(chunk))]
        images = to_uint8(model.generate(chunk, seed=seeds, steps=steps, guidance_scale=guidance_scale,
                                         negative_prompt=negative_prompt))
        for i, (prompt, s) in enumerate(zip(chunk, seeds)):
            path = out / f"{start + i:05d}_seed{s}.png"
            meta = {"prompt": prompt, "negative_prompt": negative_prompt, "seed": str(s), "steps": str(steps),
                    "guidance_scale": f"{guidance_scale:g}", "model": model.model_id,
                    "base_model_version": model.base_model_version, "lora": lora_desc or ""}
            meta["parameters"] = json.dumps(meta)
            save_png(images[i], path, meta)
            paths.append(path)
    return paths


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate PNG images from a prompt or a prompt file",
        description="Generate images with the toy base (default) or an SD model (--base PATH), optionally "
        "with a safety LoRA. Prompt, seed, model and LoRA are stored in each PNG's text metadata.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one prompt")
    src.add_argument("--prompt-file", help="text file, one prompt per line")
    p.add_argument("--base", "--model", dest="base", default=None,
                   help="base model: toy (default), a toy checkpoint, a diffusers folder or an SD .safetensors file")
    p.add_argument("--lora", default=None, help="safety LoRA (.safetensors, kohya format)")
    p.add_argument("--lora-strength", type=float, default=1.0)
    p.add_argument("--out", default="out/generate", help="output folder (default: out/generate)")
    p.add_argument("--n", type=int, default=1, help="images per prompt (default 1)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--guidance-scale", type=float, default=None, help="CFG scale (default: the model's)")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from .models import load_base_model

    prompts = [args.prompt] if args.prompt else read_prompt_file(args.prompt_file)
    prompts = [p for p in prompts for _ in range(max(1, args.n))]
    ensure_writable_dir(args.out)
    model = load_base_model(args.base, device=args.device)
    desc = attach_lora(model, args.lora, args.lora_strength)
    paths = generate_to_folder(model, prompts, args.out, seed=args.seed, batch_size=args.batch_size,
                               steps=args.steps, guidance_scale=args.guidance_scale,
                               negative_prompt=args.negative_prompt, lora_desc=desc)
    print(f"wrote {len(paths)} image(s) to {args.out}")
    return 0
