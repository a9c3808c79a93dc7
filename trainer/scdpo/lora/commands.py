"""``scdpo lora inspect`` and ``scdpo lora convert``."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import IncompatibleModelError
from ..fileio import save_safetensors_atomic
from .files import KNOWN_BASE_VERSIONS, load_lora, save_lora

_FAMILY_NAMES = {"sd_v1": "Stable Diffusion 1.x", "sdxl_base_v1-0": "SDXL base 1.0", "toy_v1": "toy world model"}


def inspect_report(path: str | Path) -> dict:
    """Everything ``scdpo lora inspect`` shows, as a JSON-able dict."""
    from .convert import guess_base_model_version
    from .hosts import host_compatibility, target_coverage

    lora = load_lora(path)
    recorded = lora.base_model_version
    if not recorded:  # judge the file as the base model its keys fit (hosts do not need the metadata)
        guess = guess_base_model_version(lora)
        if guess:
            lora.metadata["ss_base_model_version"] = guess
    ranks, alphas = lora.ranks, lora.alphas
    targets, covered, expected = target_coverage(lora)
    return {
        "file": str(lora.path),
        "layout": lora.source_layout,
        "base_model_version": lora.base_model_version,
        "base_model_recorded": bool(recorded),
        "base_model": _FAMILY_NAMES.get(lora.base_model_version or "", "unknown"),
        "unet_modules": len(lora.unet_module_names),
        "text_encoder_modules": len(lora.module_names) - len(lora.unet_module_names),
        "rank": lora.rank,
        "ranks": sorted(set(ranks.values())),
        "alpha": lora.alpha,
        "alphas": sorted(set(alphas.values())),
        "scale_alpha_over_rank": lora.alpha / lora.rank,
        "targets": targets,
        "coverage": {"covered": covered, "expected": expected},
        "metadata": dict(sorted(lora.metadata.items())),
        "hosts": [
            {"host": c.host, "loads_every_key": c.loads_every_key, "applied": c.applied, "total": c.total,
             "missing": c.missing[:20], "note": c.note}
            for c in host_compatibility(lora)
        ],
    }


def _print_report(r: dict) -> None:
    def short(v: str, n: int = 100) -> str:
        v = v.replace("\n", " ")
        return v if len(v) <= n else v[: n - 3] + "..."

    print(f"file:        {r['file']} ({r['layout']} layout)")
    if r["base_model_recorded"]:
        print(f"base model:  {r['base_model_version']} ({r['base_model']})")
    elif r["base_model_version"]:
        print(f"base model:  not recorded; the keys and shapes fit {r['base_model_version']} ({r['base_model']})")
    else:
        print("base model:  not recorded, and the keys fit no supported base model")
    te = f" + {r['text_encoder_modules']} text-encoder" if r["text_encoder_modules"] else ""
    print(f"modules:     {r['unet_modules']} UNet{te}")
    mixed = f" (per module: {r['ranks']})" if len(r["ranks"]) > 1 else ""
    print(f"rank:        {r['rank']}{mixed}")
    print(f"alpha:       {r['alpha']:g} (host scale alpha/rank = {r['scale_alpha_over_rank']:g})"
          + (f" (per module: {r['alphas']})" if len(r["alphas"]) > 1 else ""))
    if r["targets"]:
        cov = r["coverage"]
        print(f"targets:     {', '.join(r['targets'])}: {cov['covered']}/{cov['expected']} of the base UNet's such modules")
    print("metadata:")
    for k, v in r["metadata"].items():
        print(f"  {k}: {short(v)}")
    print("hosts:")
    for h in r["hosts"]:
        if h["note"].startswith("toy"):
            status = "n/a (toy base model)"
        else:
            status = "loads every key" if h["loads_every_key"] else f"applies {h['applied']}/{h['total']}"
            if h["missing"] and not h["loads_every_key"]:
                status += f"; skips {', '.join(h['missing'][:3])}{' ...' if len(h['missing']) > 3 else ''}"
            if h["note"]:
                status += f" ({h['note']})"
        print(f"  {h['host']:<10} {status}")


def cmd_inspect(args) -> int:
    report = inspect_report(args.file)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report)
    return 0


def cmd_convert(args) -> int:
    from .convert import kohya_to_diffusers_layout

    lora = load_lora(args.input)
    if args.base_model_version:
        lora.metadata["ss_base_model_version"] = args.base_model_version
    if not lora.base_model_version:
        raise IncompatibleModelError(
            f"{args.input} does not record its base model; pass --base-model-version ({', '.join(KNOWN_BASE_VERSIONS)})"
        )
    out = Path(args.output)
    if out.resolve() == Path(args.input).resolve():
        raise IncompatibleModelError(f"refusing to overwrite the input {out}; choose another output path")
    if args.to == "kohya":
        meta = {k: v for k, v in lora.metadata.items() if k.startswith(("ss_", "scdpo_", "modelspec."))}
        meta.setdefault("scdpo_converted_from", lora.source_layout)
        save_lora(out, lora.tensors, meta)
    else:
        tensors, meta = kohya_to_diffusers_layout(lora)
        save_safetensors_atomic(tensors, out, meta)
    print(f"wrote {out} ({args.to} layout, {len(lora.unet_module_names)} UNet modules, base {lora.base_model_version})")
    return 0


def register(sub) -> None:
    """``scdpo lora inspect|convert``."""

    p = sub.add_parser(
        "inspect",
        help="base model, rank, alpha, coverage, metadata and which hosts load every key",
        description="Show what a LoRA file holds and whether ComfyUI, Forge, A1111 and diffusers apply all of it.",
    )
    p.add_argument("file", help="LoRA .safetensors (kohya, peft or diffusers layout)")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "convert",
        help="convert between the kohya layout (every host) and the diffusers/peft layout",
        description="Convert a UNet LoRA between the kohya layout (lora_unet_*.lora_down/lora_up/alpha, which "
        "ComfyUI, A1111, Forge and diffusers load) and the diffusers layout (unet.*.lora_A/lora_B + "
        "lora_adapter_metadata, which diffusers' load_lora_weights reads natively). Input may be any layout.",
    )
    p.add_argument("input", help="LoRA .safetensors to read")
    p.add_argument("output", help="where to write the converted file")
    p.add_argument("--to", choices=["kohya", "diffusers"], default="kohya", help="output layout (default: kohya)")
    p.add_argument("--base-model-version", choices=list(KNOWN_BASE_VERSIONS),
                   help="base model of the LoRA, when the input file does not record it")
    p.set_defaults(func=cmd_convert)
