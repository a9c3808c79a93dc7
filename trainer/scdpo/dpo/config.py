"""The training configuration: one dataclass, loadable from TOML and overridable by CLI flags.

Precedence: dataclass defaults < ``--config FILE.toml`` < explicit flags. The resolved config
is written beside the output LoRA (``<out>/<name>.config.toml``) and can be passed back with
``--config`` to reproduce the run. Every field is a flag: ``steps`` → ``--steps``,
``grad_accum`` → ``--grad-accum``, booleans as ``--flag`` / ``--no-flag``, lists comma-separated.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import InputFileError, ScdpoError
from ..fileio import write_text_atomic
from ..lora.naming import DEFAULT_TARGET_MODULES

PROJ_MODULES = ["proj_in", "proj_out"]
FF_MODULES = ["ff.net.0.proj", "ff.net.2"]
LR_SCHEDULES = ("constant", "cosine", "linear")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
BASE_DTYPES = ("auto", "fp32", "bf16", "fp16")
ADVERSARIAL_MODES = ("pair", "universal")
PRESERVE_SHIFT_PAIRS = ("all", "look-alikes")
ADVERSARIAL_OBJECTIVES = ("preference", "erasure")
OPTIMIZERS = ("adamw", "adamw8bit")
TOY_ORACLE_DATA = "toy-oracle"


@dataclass
class TrainConfig:
    """Every knob of an SC-DPO / Diffusion-DPO / SafetyDPO-expert LoRA training run.

    Defaults are tuned for the toy world on a CPU (a few minutes); for SD-family models use
    β 2500–5000, rank 8–32, lr ≈ 1e-4 and thousands of steps.
    """

    # data and model
    data: str = TOY_ORACLE_DATA  # SCP dataset folder (pairs.parquet), or "toy-oracle" (rendered toy pairs)
    base: str = "toy"  # base model: "toy", a toy checkpoint, an SD .safetensors file or diffusers folder
    out: str = "runs/sc-dpo"  # output folder
    name: str = "safety_lora"  # output file stem: <out>/<name>.safetensors
    categories: list[str] = field(default_factory=list)  # train only on harmful pairs of these categories
    clean_pairs: bool = True  # also train on clean / near-miss pairs (off: harmful pairs only)
    skip_bad: bool = False  # skip (and count) broken dataset rows instead of stopping
    toy_oracle_pairs: int = 768  # pairs rendered for data="toy-oracle"
    cost_model: str = ""  # cost model that scored the pairs (recorded in the LoRA metadata)
    # method (docs/method.md)
    beta: float = 2500.0  # DPO temperature β
    lam: float = 0.5  # safety-margin scale λ (0 turns the margin off)
    gamma: float = 1.0  # focusing exponent γ (0 turns DFM off)
    winner_anchor: float = 0.0  # μ: keep the winner as likely as under the reference (0 turns it off)
    erase_weight: float = 0.0  # ν: on harmful pairs' losers, predict what the reference predicts for the safe rewrite (0: off)
    erase_guidance: float = 0.0  # η_e: that target moved further away from the concept (ESD's negative guidance)
    preserve_weight: float = 0.0  # on clean / look-alike pairs' winners, predict what the reference predicts (0: off)
    # LoRA
    rank: int = 8
    alpha: float = 8.0  # peft lora_alpha (scale alpha/rank); stored as kohya .alpha
    export_strength: float = 1.0  # the written LoRA's alpha is alpha * this: hosts apply it at this strength at weight 1
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    train_proj: bool = False  # also adapt the transformer blocks' proj_in / proj_out
    train_ff: bool = False  # also adapt the transformer blocks' feed-forward layers
    # optimisation
    steps: int = 300  # optimiser steps
    batch_size: int = 8  # pairs per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimiser step
    lr: float = 3e-4
    lr_schedule: str = "constant"  # constant | cosine | linear (after warm-up)
    warmup_steps: int = 20
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0 disables clipping
    optimizer: str = "adamw"  # adamw | adamw8bit (needs bitsandbytes)
    prompt_dropout: float = 0.0  # probability a pair's prompt is replaced by "" (both images)
    concept_augment: float = 0.0  # share of harmful pairs trained with the prompt embedding pushed along its concept
    concept_scale: float = 2.0  # largest push, in units of the category's concept direction (η ~ U(0, scale))
    adversarial_share: float = 0.0  # share of harmful pairs trained under an attack on the current LoRA (0: off)
    adversarial_steps: int = 3  # projected gradient steps of that attack per training step
    adversarial_budget: float = 2.0  # its L2 budget, in units of the category's concept-direction norm
    adversarial_mode: str = "pair"  # pair (a shift per pair, from scratch) | universal (one shift per category, kept)
    adversarial_lr: float = 0.1  # universal mode: Adam step, as a share of a budget-sized shift's RMS entry
    adversarial_restart: int = 0  # universal mode: Adam steps after which a shift restarts at Ring-A-Bell's point (0: never)
    adversarial_refresh: int = 0  # universal mode: every this many training steps a fresh attack replaces the shifts (0: never)
    adversarial_refresh_steps: int = 20  # that fresh attack's Adam steps
    adversarial_objective: str = "preference"  # preference (the pair trains under the attack) | erasure (erase_weight's term under it)
    shift_augment: float = 0.0  # share of harmful pairs trained with winner and loser moved sideways together
    shift_fraction: float = 0.25  # largest such move, as a share of the image width
    erase_shift: float = 0.0  # erasure target asked again with the loser moved sideways by up to this share of the width
    preserve_shift: float = 0.0  # preservation term asked again at the winner moved sideways by up to this share
    preserve_shift_pairs: str = "all"  # which pairs preserve_shift moves: all (clean and look-alike) | look-alikes
    mixed_precision: str = "auto"  # auto (bf16/fp16 on CUDA, off on CPU) | no | fp16 | bf16
    base_dtype: str = "auto"  # frozen base weights: auto (bf16; fp16 on GPUs without bf16; fp32 for the toy) | fp32 | bf16 | fp16
    gradient_checkpointing: bool = False
    cache_inputs: bool = True  # encode latents + text embeddings once before training; encoders leave the GPU
    cpu: bool = False  # force CPU even if a GPU is present
    seed: int = 0
    init_lora: str = ""  # start from this safety LoRA's weights (a second round), instead of a fresh adapter
    # bookkeeping
    checkpoint_every: int = 50  # optimiser steps between atomic training-state checkpoints (0: never)
    log_every: int = 5  # optimiser steps between TensorBoard points
    resume: bool = True  # continue from <out>/<name>.state.safetensors when it exists

    # -- derived -------------------------------------------------------------------------------
    @property
    def method(self) -> str:
        """``safetydpo-expert`` (category filter), ``diffusion-dpo`` (λ=γ=μ=ν=ρ=0) or ``sc-dpo``."""
        if self.categories:
            return "safetydpo-expert"
        if not any((self.lam, self.gamma, self.winner_anchor, self.erase_weight, self.preserve_weight)):
            return "diffusion-dpo"
        return "sc-dpo"

    def lora_target_modules(self) -> list[str]:
        mods = list(self.target_modules)
        if self.train_proj:
            mods += [m for m in PROJ_MODULES if m not in mods]
        if self.train_ff:
            mods += [m for m in FF_MODULES if m not in mods]
        return mods

    def lr_factor(self, step: int) -> float:
        """LR multiplier for optimiser step ``step`` (0-based): linear warm-up, then the schedule."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return 1.0
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        if self.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress)

    def validate(self) -> "TrainConfig":
        def bad(what: str) -> ScdpoError:
            return ScdpoError(f"invalid training option: {what}")

        if not (self.beta > 0):
            raise bad(f"beta must be > 0 (got {self.beta})")
        if self.lam < 0 or self.gamma < 0 or self.winner_anchor < 0:
            raise bad(f"lam, gamma and winner_anchor must be >= 0 (got {self.lam}, {self.gamma}, {self.winner_anchor})")
        if min(self.erase_weight, self.erase_guidance, self.preserve_weight) < 0:
            raise bad(f"erase_weight, erase_guidance and preserve_weight must be >= 0 (got {self.erase_weight}, "
                      f"{self.erase_guidance}, {self.preserve_weight})")
        for key in ("steps", "batch_size", "grad_accum", "rank"):
            if getattr(self, key) < 1:
                raise bad(f"{key} must be >= 1 (got {getattr(self, key)})")
        if not (0 < self.export_strength <= 4):
            raise bad(f"export_strength must be in (0, 4] (got {self.export_strength})")
        if self.alpha <= 0 or self.lr <= 0:
            raise bad(f"alpha and lr must be > 0 (got {self.alpha}, {self.lr})")
        if not 0 <= self.prompt_dropout < 1:
            raise bad(f"prompt_dropout must be in [0, 1) (got {self.prompt_dropout})")
        if not 0 <= self.concept_augment <= 1 or self.concept_scale < 0:
            raise bad(f"concept_augment must be in [0, 1] and concept_scale >= 0 (got {self.concept_augment}, "
                      f"{self.concept_scale})")
        if self.concept_augment > 0 and not self.cache_inputs:
            raise bad("concept_augment needs the encoded inputs: drop --no-cache-inputs")
        if not 0 <= self.adversarial_share <= 1 or self.adversarial_steps < 1 or self.adversarial_budget < 0:
            raise bad(f"adversarial_share must be in [0, 1], adversarial_steps >= 1 and adversarial_budget >= 0 (got "
                      f"{self.adversarial_share}, {self.adversarial_steps}, {self.adversarial_budget})")
        if not 0 <= self.shift_augment <= 1 or not 0 <= self.shift_fraction <= 0.5:
            raise bad(f"shift_augment must be in [0, 1] and shift_fraction in [0, 0.5] (got {self.shift_augment}, "
                      f"{self.shift_fraction})")
        if not 0 <= self.erase_shift <= 0.5 or (self.erase_shift > 0 and self.erase_weight <= 0):
            raise bad(f"erase_shift must be in [0, 0.5] and needs erase_weight > 0 (got {self.erase_shift}, "
                      f"erase_weight {self.erase_weight})")
        if not 0 <= self.preserve_shift <= 0.5 or (self.preserve_shift > 0 and self.preserve_weight <= 0):
            raise bad(f"preserve_shift must be in [0, 0.5] and needs preserve_weight > 0 (got {self.preserve_shift}, "
                      f"preserve_weight {self.preserve_weight})")
        if self.preserve_shift_pairs not in PRESERVE_SHIFT_PAIRS:
            raise bad(f"preserve_shift_pairs must be one of {', '.join(PRESERVE_SHIFT_PAIRS)} (got "
                      f"{self.preserve_shift_pairs!r})")
        if self.shift_augment > 0 and not self.cache_inputs:
            raise bad("shift_augment needs the encoded inputs: drop --no-cache-inputs")
        if self.adversarial_share > 0 and not self.cache_inputs:
            raise bad("adversarial_share needs the encoded inputs: drop --no-cache-inputs")
        if self.erase_weight > 0 and not self.cache_inputs:
            raise bad("erase_weight needs the encoded inputs (the safe rewrites' embeddings): drop --no-cache-inputs")
        if self.adversarial_mode not in ADVERSARIAL_MODES or not self.adversarial_lr > 0:
            raise bad(f"adversarial_mode must be one of {', '.join(ADVERSARIAL_MODES)} and adversarial_lr > 0 (got "
                      f"{self.adversarial_mode!r}, {self.adversarial_lr})")
        if self.adversarial_refresh < 0 or self.adversarial_refresh_steps < 1 or (
                self.adversarial_refresh > 0 and (self.adversarial_mode != "universal" or self.adversarial_share <= 0)):
            raise bad(f"adversarial_refresh must be >= 0 and adversarial_refresh_steps >= 1, and a refresh needs "
                      f"adversarial_mode universal with adversarial_share > 0 (got {self.adversarial_refresh}, "
                      f"{self.adversarial_refresh_steps}, {self.adversarial_mode!r}, {self.adversarial_share})")
        if self.adversarial_restart < 0 or (self.adversarial_restart > 0 and self.adversarial_mode != "universal"):
            raise bad(f"adversarial_restart must be >= 0 and needs adversarial_mode universal (got "
                      f"{self.adversarial_restart}, {self.adversarial_mode!r})")
        if self.adversarial_objective not in ADVERSARIAL_OBJECTIVES:
            raise bad(f"adversarial_objective must be one of {', '.join(ADVERSARIAL_OBJECTIVES)} (got "
                      f"{self.adversarial_objective!r})")
        if self.adversarial_objective == "erasure" and self.adversarial_share > 0 and self.erase_weight <= 0:
            raise bad("adversarial_objective 'erasure' weighs its term by erase_weight: set erase_weight > 0")
        for key, allowed in (("lr_schedule", LR_SCHEDULES), ("mixed_precision", MIXED_PRECISION),
                             ("base_dtype", BASE_DTYPES), ("optimizer", OPTIMIZERS)):
            if getattr(self, key) not in allowed:
                raise bad(f"{key} must be one of {', '.join(allowed)} (got {getattr(self, key)!r})")
        if not self.target_modules:
            raise bad("target_modules is empty; name at least one module (e.g. to_q,to_k,to_v,to_out.0)")
        if self.warmup_steps < 0 or self.checkpoint_every < 0 or self.log_every < 0:
            raise bad("warmup_steps, checkpoint_every and log_every must be >= 0")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELD_TYPES = typing.get_type_hints(TrainConfig)


def _coerce(key: str, value: Any, source: str) -> Any:
    want = _FIELD_TYPES[key]
    try:
        if want is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise ValueError
        if want is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if want is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if want is str:
            return str(value)
        # list[str]
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ValueError
    except (TypeError, ValueError):
        raise ScdpoError(f"{source}: {key} = {value!r} is not a valid {getattr(want, '__name__', 'list of names')}") from None


def config_from_mapping(values: Mapping[str, Any], base: TrainConfig | None = None, source: str = "config") -> TrainConfig:
    """``base`` (default: defaults) with ``values`` applied; unknown keys raise :class:`ScdpoError`."""
    cfg = dataclasses.replace(base) if base is not None else TrainConfig()
    aliases = {"lambda": "lam"}
    for key, value in values.items():
        key = aliases.get(key, key).replace("-", "_")
        if key not in _FIELD_TYPES:
            raise ScdpoError(f"{source}: unknown training option {key!r}; see `scdpo lora train --help` for the options")
        setattr(cfg, key, _coerce(key, value, source))
    return cfg


def load_train_config(path: str | Path, base: TrainConfig | None = None) -> TrainConfig:
    """Read a TOML config (flat keys, or under a ``[train]`` table)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"training config not found: {path}; check the --config path")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputFileError(f"training config {path} is not valid TOML ({exc}); fix the file") from None
    if isinstance(data.get("train"), dict):
        data = data["train"]
    return config_from_mapping(data, base, source=str(path))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def config_to_toml(cfg: TrainConfig, header: str = "") -> str:
    lines = [f"# {line}" for line in header.splitlines()] if header else []
    lines += [f"{k} = {_toml_value(v)}" for k, v in cfg.to_dict().items()]
    return "\n".join(lines) + "\n"


def save_train_config(cfg: TrainConfig, path: str | Path, header: str = "") -> Path:
    write_text_atomic(path, config_to_toml(cfg, header))
    return Path(path)


# -- command-line flags ----------------------------------------------------------------------------
_HELP = {
    "data": "SCP dataset folder (pairs.parquet) or 'toy-oracle' (pairs rendered from the toy world)",
    "base": "base model: 'toy', a toy/SD .safetensors checkpoint or a diffusers folder",
    "categories": "SafetyDPO expert: train only on harmful pairs of these categories (comma-separated)",
    "beta": "DPO temperature beta",
    "lam": "safety-margin scale lambda (0 = no margin)",
    "gamma": "dynamic-focusing exponent gamma (0 = no DFM)",
    "winner_anchor": "mu: adds mu*(beta/2)*(e(winner) - e_ref(winner)) per pair, so the safe image is drawn rather "
                     "than the loser merely made unlikely (0 = off; see docs/method.md)",
    "erase_weight": "nu: on harmful pairs, also trains the LoRA's prediction on the noisy loser (under the pair's "
                    "conditioning, attacked or pushed included) towards the reference's prediction for the safe "
                    "rewrite, weighted nu*(beta/2): the direction to turn away from the concept (0 = off; see "
                    "docs/method.md)",
    "erase_guidance": "eta_e: that target moved further from the concept, ref(safe) - eta_e*(ref(prompt) - ref(safe)) "
                      "(ESD's negative guidance; 0 = the safe rewrite's prediction itself)",
    "preserve_weight": "on clean and look-alike pairs, also trains the LoRA's prediction on the noisy winner "
                       "towards the reference's, weighted (beta/2) times this: the erasure stays with the concept "
                       "(0 = off)",
    "target_modules": "comma-separated module names to adapt",
    "mixed_precision": "auto | no | fp16 | bf16 (auto: bf16/fp16 on CUDA, off on CPU)",
    "base_dtype": "dtype of the frozen base UNet's weights: auto | fp32 | bf16 | fp16; the LoRA, its gradients, "
                  "the optimiser and the loss stay fp32 (auto: bf16 on CPUs and GPUs that have it, fp16 on older "
                  "GPUs, fp32 for the toy model)",
    "optimizer": "adamw | adamw8bit (needs bitsandbytes)",
    "lr_schedule": "constant | cosine | linear, after linear warm-up",
    "resume": "continue from <out>/<name>.state.safetensors if it exists (--no-resume starts over)",
    "adversarial_share": "share of harmful pairs trained, at every step, on their safe rewrite under an embedding "
                         "attack optimised against the current LoRA (adversarial training; 0 = off; see "
                         "docs/method.md)",
    "adversarial_steps": "projected gradient steps of that attack per training step",
    "adversarial_budget": "the attack's L2 budget, in units of the category's concept-direction norm",
    "adversarial_mode": "pair: each attacked pair gets its own shift, optimised from a random push along the "
                        "concept direction; universal: one shift per category, kept from step to step and refined "
                        "against the current LoRA, as the evaluation's soft-prompt attack is (see docs/method.md)",
    "adversarial_objective": "preference: an attacked pair trains its SC-DPO loss under the attack, in place of its "
                             "prompt; erasure: the pair keeps its prompt, and under the attack the LoRA's prediction "
                             "on the noisy loser is trained towards the reference's for the safe rewrite, weighted "
                             "erase_weight*(beta/2) (AdvUnlearn's objective; see docs/method.md)",
    "export_strength": "the written LoRA's alpha is alpha times this, so a host applies it at this strength at "
                       "its LoRA weight 1 (training runs at alpha/rank as usual; the demo's sc-dpo uses 1.25, "
                       "chosen on the validation split; see docs/method.md)",
    "adversarial_lr": "universal mode: the attacker's Adam step, as a share of the RMS entry of a shift at the budget",
    "adversarial_restart": "universal mode: after this many of its Adam steps a category's shift starts again from "
                           "Ring-A-Bell's point (the concept direction at the budget) with fresh moments, so the LoRA "
                           "is trained along the path a fresh attack on it takes (0 = never; see docs/method.md)",
    "adversarial_refresh": "universal mode: every this many training steps each category's shift is replaced by a "
                           "fresh attack on the current LoRA (from Ring-A-Bell's point, adversarial_refresh_steps "
                           "Adam steps on harmful pairs drawn anew from the data, as the evaluation's soft-prompt "
                           "attack runs); the training steps between refine it as before (0 = never; see "
                           "docs/method.md)",
    "adversarial_refresh_steps": "Adam steps of each fresh attack of adversarial_refresh",
    "shift_augment": "share of harmful pairs trained with winner and loser moved sideways together, so the "
                     "concept goes wherever a prompt puts it, not only where the training captions do (0 = off; "
                     "see docs/method.md)",
    "shift_fraction": "largest sideways move of shift_augment, as a share of the image width",
    "erase_shift": "the erasure target asked once more per harmful pair, with its noisy loser and the target "
                   "moved sideways together by up to this share of the width, so the concept is erased wherever "
                   "a caption draws it (0 = off; needs erase_weight; see docs/method.md)",
    "preserve_shift": "the preservation term asked once more per clean or look-alike pair, at its noisy winner "
                      "moved sideways by up to this share of the width, towards the base model's prediction there, "
                      "so look-alikes are kept wherever a caption draws them (0 = off; needs preserve_weight)",
    "preserve_shift_pairs": "which pairs preserve_shift moves: all (clean and look-alike pairs) or look-alikes (the "
                            "look-alike pairs only; clean pairs keep the unmoved term)",
    "init_lora": "start from this safety LoRA (kohya .safetensors written by scdpo lora train) instead of a fresh "
                 "adapter: a second round on data mined with it (scdpo data build --attack-lora); it must match "
                 "--rank, --alpha and the target modules",
}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`TrainConfig` field; unset flags are absent from the namespace."""
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        names = [flag, "--lambda"] if f.name == "lam" else [flag]
        want = _FIELD_TYPES[f.name]
        default = getattr(defaults, f.name)
        text = f"{_HELP.get(f.name, f.name.replace('_', ' '))} (default: {','.join(default) if isinstance(default, list) else default})"
        if want is bool:
            parser.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=text)
        else:
            parser.add_argument(*names, dest=f.name, default=argparse.SUPPRESS, help=text,
                                type=str if want not in (int, float) else want)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < ``args.config`` TOML < explicit flags."""
    cfg = load_train_config(args.config) if getattr(args, "config", None) else TrainConfig()
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    return config_from_mapping(given, cfg, source="command line").validate()
