"""Conversion between the kohya layout and the peft / diffusers layouts of a UNet LoRA.

* kohya: ``lora_unet_<path with _>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``;
* diffusers (``save_lora_weights``): ``unet.<path>.lora_A.weight`` / ``.lora_B.weight``, the
  adapter's ``LoraConfig`` (ranks and alphas) as JSON in the ``lora_adapter_metadata``
  safetensors metadata key, each config key prefixed ``unet.``;
* peft (``save_pretrained``): ``base_model.model.<path>.lora_A.weight`` with ``adapter_config.json``
  beside the file.

Going from kohya to a path-based layout needs the module paths of the UNet (the kohya rule
replaces ``.`` by ``_`` and is not invertible alone): they come from the UNet you pass, or from
a weightless (meta-device) UNet built from the shipped config of the file's base model version.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from ..errors import IncompatibleModelError, WeightsFormatError
from ..limits import finite_number, json_object, parse_json, read_json_file
from .naming import kohya_module_table

DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
_PEFT_KEY = re.compile(r"^(?P<module>.+?)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")
_PREFIX_TO_KOHYA = (
    ("base_model.model.", "lora_unet_"),
    ("unet.", "lora_unet_"),
    ("text_encoder_2.", "lora_te2_"),
    ("text_encoder.", "lora_te_"),
)


def read_peft_adapter_config(path: Path, metadata: Mapping[str, str]) -> Optional[dict[str, Any]]:
    """The LoraConfig dict of a peft / diffusers layout file (metadata, else ``adapter_config.json``)."""
    raw = metadata.get(DIFFUSERS_METADATA_KEY)
    if raw:
        cfg = parse_json(raw, f"{path}: metadata {DIFFUSERS_METADATA_KEY}", "re-export the LoRA", WeightsFormatError)
        cfg = json_object(cfg, f"{path}: metadata {DIFFUSERS_METADATA_KEY}", "re-export the LoRA", WeightsFormatError)
        if any(k.startswith("unet.") for k in cfg):
            cfg = {k[5:]: v for k, v in cfg.items() if k.startswith("unet.")}
        return cfg
    beside = path.parent / "adapter_config.json"
    if beside.is_file():
        fix = "fix or remove it"
        cfg = read_json_file(beside, "peft adapter config", fix, WeightsFormatError)
        return json_object(cfg, f"peft adapter config {beside}", fix, WeightsFormatError)
    return None


def _literal_module_pattern(key: str, where: str) -> str:
    """A peft ``alpha_pattern`` key as the literal module path it names.

    peft runs these keys as regular expressions; we never do (a pattern such as ``(a+)+c`` would
    take forever). Keys are module paths, written plainly or with punctuation escaped as
    ``re.escape`` does (what :func:`lora_config_for` writes); a key that needs any other regex
    feature is refused rather than guessed at.
    """
    if not isinstance(key, str) or not key or len(key) > 500:
        raise WeightsFormatError(f"{where}: alpha_pattern key {key!r} is not a module path; re-export the LoRA")
    literal = _ESCAPED.sub(r"\1", key)
    if not _MODULE_PATH.fullmatch(literal):
        raise WeightsFormatError(
            f"{where}: alpha_pattern key {key[:60]!r} is a regular expression; only module paths are read "
            "(e.g. down_blocks.0.attentions.0.proj_in); re-export the LoRA with plain module paths")
    return literal


_ESCAPED = re.compile(r"\\([^A-Za-z0-9])")  # re.escape's "\." -> "."
_MODULE_PATH = re.compile(r"[A-Za-z0-9_.]+")


def _alpha_patterns(config: Mapping[str, Any], where: str) -> list[tuple[str, float]]:
    patterns = config.get("alpha_pattern") or {}
    if not isinstance(patterns, dict):
        raise WeightsFormatError(f"{where}: alpha_pattern is a {type(patterns).__name__}, not an object of "
                                 "module path -> alpha; re-export the LoRA")
    fix = "re-export the LoRA"
    return [(_literal_module_pattern(k, where), finite_number(v, f"{where}: alpha_pattern[{k[:60]!r}]", fix,
                                                                WeightsFormatError))
            for k, v in patterns.items()]


def _pattern_value(patterns: list[tuple[str, float]], module_path: str, default: float) -> float:
    # peft.utils.other.get_pattern_key semantics, literally: the key names the end of the path
    for literal, value in patterns:
        if module_path == literal or module_path.endswith("." + literal):
            return value
    return default


def peft_layout_to_kohya(tensors: Mapping[str, torch.Tensor], config: Optional[Mapping[str, Any]],
                         where: str = "LoRA file") -> dict[str, torch.Tensor]:
    """peft / diffusers layout tensors → kohya tensors. Without a config, alpha = rank (scale 1),
    which is what diffusers assumes for such files. ``where`` names the file in errors."""
    fix = "re-export the LoRA"
    patterns = _alpha_patterns(config, where) if config else []
    default_alpha = None
    if config and config.get("lora_alpha") is not None:
        default_alpha = finite_number(config["lora_alpha"], f"{where}: lora_alpha", fix, WeightsFormatError)
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        m = _PEFT_KEY.match(key)
        if not m:
            raise WeightsFormatError(f"LoRA key {key!r} is neither kohya nor peft layout; re-export the LoRA")
        module = m["module"]
        kohya_prefix = "lora_unet_"
        for prefix, kp in _PREFIX_TO_KOHYA:
            if module.startswith(prefix):
                module, kohya_prefix = module[len(prefix):], kp
                break
        name = kohya_prefix + module.replace(".", "_")
        out[f"{name}.{'lora_down' if m['ab'] == 'A' else 'lora_up'}.weight"] = value
        if m["ab"] == "A":
            if value.ndim not in (2, 4) or value.shape[0] < 1:
                raise WeightsFormatError(f"{where} is corrupt: {key} has shape {tuple(value.shape)}; lora_A must be "
                                         f"[rank >= 1, in] or [rank, in, kh, kw]; {fix}")
            rank = value.shape[0]
            if config:
                alpha = _pattern_value(patterns, module, float(rank) if default_alpha is None else default_alpha)
                if config.get("use_rslora"):
                    alpha = alpha * rank ** 0.5  # hosts scale by alpha / r; rsLoRA scales by alpha / sqrt(r)
            else:
                alpha = float(rank)
            out[f"{name}.alpha"] = torch.tensor(alpha)
    return out


@lru_cache(maxsize=4)
def _meta_unet(base_model_version: str) -> torch.nn.Module:
    """A weightless (meta-device) UNet of a known base model: module names and shapes only."""
    from diffusers import UNet2DConditionModel

    if base_model_version == "toy_v1":
        from ..toy.model import UNET_CONFIG

        config = dict(UNET_CONFIG)
    else:
        from ..sd.configs import family_for_version, unet_config

        config = unet_config(family_for_version(base_model_version))
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


@lru_cache(maxsize=4)
def _meta_unet_table(base_model_version: str) -> dict[str, str]:
    return {name: path for name, (path, _) in kohya_module_table(_meta_unet(base_model_version)).items()}


def guess_base_model_version(lora) -> Optional[str]:
    """The SD base model whose UNet fits every module of ``lora`` (names and shapes), if exactly one does."""
    from .peft_bridge import check_compatible

    fits = []
    for version in ("sd_v1", "sdxl_base_v1-0"):
        try:
            check_compatible(_meta_unet(version), lora)
            fits.append(version)
        except IncompatibleModelError:
            pass
    return fits[0] if len(fits) == 1 else None


def kohya_to_module_paths(lora, unet: Optional[torch.nn.Module] = None) -> dict[str, str]:
    """kohya name → diffusers module path for every UNet module of ``lora`` (a LoraFile)."""
    if unet is not None:
        table = {name: path for name, (path, _) in kohya_module_table(unet).items()}
    elif lora.base_model_version in ("toy_v1", "sd_v1", "sdxl_base_v1-0"):
        table = _meta_unet_table(lora.base_model_version)
    else:
        raise IncompatibleModelError(
            f"{lora.describe()} does not say its base model (ss_base_model_version {lora.base_model_version!r}); "
            "pass the base model (--base) so its module names can be resolved"
        )
    missing = [n for n in lora.unet_module_names if n not in table]
    if missing:
        raise IncompatibleModelError(
            f"{len(missing)} of {len(lora.unet_module_names)} modules of {lora.describe()} match no UNet module "
            f"(e.g. {missing[:3]}); it was trained for another base model"
        )
    return {n: table[n] for n in lora.unet_module_names}


def lora_config_for(ranks: Mapping[str, int], alphas: Mapping[str, float]) -> dict[str, Any]:
    """peft ``LoraConfig`` kwargs that reproduce per-module ranks/alphas (keys: module paths)."""
    from collections import Counter

    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas[p] for p in alphas if ranks[p] == r).most_common(1)[0][0]
    return dict(
        r=r,
        lora_alpha=alpha,
        target_modules=sorted(ranks),
        rank_pattern={re.escape(p): v for p, v in ranks.items() if v != r},
        alpha_pattern={re.escape(p): v for p, v in alphas.items() if v != alpha},
        init_lora_weights=False,
    )


def kohya_to_diffusers_layout(lora, unet: Optional[torch.nn.Module] = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A kohya LoraFile → (tensors, metadata) in the layout ``diffusers`` ``load_lora_weights`` reads
    natively (ranks and alphas in ``lora_adapter_metadata``)."""
    from peft import LoraConfig

    te = [n for n in lora.module_names if not n.startswith("lora_unet_")]
    if te:
        raise IncompatibleModelError(
            f"{lora.describe()} has text-encoder modules ({te[0]}...), which this converter does not handle; "
            "only UNet LoRAs convert"
        )
    paths = kohya_to_module_paths(lora, unet)
    tensors: dict[str, torch.Tensor] = {}
    ranks, alphas = lora.ranks, lora.alphas
    for name, path in paths.items():
        tensors[f"unet.{path}.lora_A.weight"] = lora.tensors[f"{name}.lora_down.weight"]
        tensors[f"unet.{path}.lora_B.weight"] = lora.tensors[f"{name}.lora_up.weight"]
    cfg = LoraConfig(**lora_config_for({paths[n]: ranks[n] for n in paths}, {paths[n]: alphas[n] for n in paths}))
    cfg_dict = {k: (sorted(v) if isinstance(v, set) else v) for k, v in cfg.to_dict().items()}
    metadata = {k: v for k, v in lora.metadata.items() if k.startswith(("ss_", "scdpo_"))}
    metadata["format"] = "pt"
    metadata[DIFFUSERS_METADATA_KEY] = json.dumps({f"unet.{k}": v for k, v in cfg_dict.items()}, sort_keys=True, default=str)
    return tensors, metadata
