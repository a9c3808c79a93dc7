"""The extension's settings and how one request's effective safety settings are decided.

The script's arguments (UI controls, or ``alwayson_scripts`` in an API call) are, in order:
``[enabled, lora, strength, threshold, action]`` (see :data:`ARG_NAMES`). With the server-side
**enforce** switch on (Settings, or the environment variable ``SCDPO_ENFORCE=1``), the
administrator's settings replace whatever a request sends.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from .gate import ACTIONS, action_name

SECTION = ("scdpo", "SC-DPO Safety")
ARG_NAMES = ("enabled", "lora", "strength", "threshold", "action")
NO_LORA = "None"
DEFAULT_STRENGTH = 1.0
DEFAULT_THRESHOLD = 0.5  # probability unsafe; 0.5 = the cost model's calibrated threshold
DEFAULT_ACTION = "blur"
ENFORCE_ENV = "SCDPO_ENFORCE"
PREVIEW_MODES = ("gate", "hide")
WITHHOLD, SAVE_REDACTED = "withhold", "save redacted"
BLOCKED_FILE_MODES = (WITHHOLD, SAVE_REDACTED)

# key -> (default, label, kind, choices); kind: text | bool | float | choice | lora
OPTIONS: dict[str, tuple] = {
    "scdpo_cost_model": ("", "Cost model: a .safetensors from `scdpo cost train`, or `nudenet`", "text", None),
    "scdpo_backbone": ("", "Cost model backbone (CLIP vision file or folder; empty = the one inside the cost model)",
                       "text", None),
    "scdpo_lora_dir": ("", "Folder with SC-DPO safety LoRAs besides the webui's Lora folder "
                           "(empty = this project's weights/ folder)", "text", None),
    "scdpo_preview": ("gate", "Live previews while the gate is on: gate each preview, or hide them all",
                      "choice", PREVIEW_MODES),
    "scdpo_blocked_files": (WITHHOLD, "Files of blocked images: withhold them (no file is written to the output "
                                      "folders) or save the redacted image", "choice", BLOCKED_FILE_MODES),
    "scdpo_enforce": (False, "Enforce on every request (UI and API): apply the LoRA and the gate below "
                             "whatever the request says", "bool", None),
    "scdpo_enforce_lora": (NO_LORA, "Enforced safety LoRA", "lora", None),
    "scdpo_enforce_strength": (DEFAULT_STRENGTH, "Enforced LoRA strength", "float", (0.0, 2.0, 0.05)),
    "scdpo_enforce_threshold": (DEFAULT_THRESHOLD, "Enforced gate threshold (probability unsafe)", "float",
                                (0.01, 0.99, 0.01)),
    "scdpo_enforce_action": (DEFAULT_ACTION, "Enforced gate action", "choice", ACTIONS),
}


def option(opts, key: str):
    """Current value of one of :data:`OPTIONS` (its default when the webui does not know it yet)."""
    return getattr(opts, key, OPTIONS[key][0]) if opts is not None else OPTIONS[key][0]


def enforce_on(opts) -> bool:
    env = os.environ.get(ENFORCE_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    return env or bool(option(opts, "scdpo_enforce"))


@dataclass
class SafetyRequest:
    """The effective safety settings of one generation job."""

    enabled: bool
    lora: Optional[str]  # webui network name, or None for gate only
    strength: float
    threshold: float  # probability unsafe above which an image is blocked (0..1)
    action: str
    enforced: bool = False
    notes: list = field(default_factory=list)  # problems with the arguments, for the infotext

    def describe(self) -> str:
        lora = f"LoRA {self.lora} x{self.strength:g}" if self.lora else "no LoRA"
        text = f"{lora}, gate {self.action} above p {self.threshold:.2f}"
        if self.enforced:
            text += ", enforced"
        if self.notes:
            text += ", " + "; ".join(self.notes)
        return text


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _float(value: Any, default: float, low: float, high: float, name: str, notes: list) -> float:
    try:
        x = float(value)
        if math.isnan(x):
            raise ValueError
    except (TypeError, ValueError):
        if value is not None:
            notes.append(f"bad {name} {value!r} -> {default:g}")
        return default
    if not low <= x <= high:
        notes.append(f"{name} {x:g} clamped to {low:g}..{high:g}")
    return min(max(x, low), high)


def _lora(value: Any) -> Optional[str]:
    if value is None:
        return None
    name = str(value).strip()
    return None if name in ("", NO_LORA, "none") else name


def _action(value: Any, notes: list) -> str:
    if value is None:
        return DEFAULT_ACTION
    name = action_name(value)  # an old name (e.g. "pass with warning") from saved settings still counts
    if name is None:
        notes.append(f"unknown action {value!r} -> black")
        return "black"
    return name


def resolve_request(args: tuple | list, opts) -> SafetyRequest:
    """The request's effective settings from its script arguments, the settings and enforce."""
    args = list(args or ())
    args += [None] * (len(ARG_NAMES) - len(args))
    enabled, lora, strength, threshold, action = args[: len(ARG_NAMES)]
    if enforce_on(opts):
        notes: list = []
        return SafetyRequest(
            True,
            _lora(option(opts, "scdpo_enforce_lora")),
            _float(option(opts, "scdpo_enforce_strength"), DEFAULT_STRENGTH, 0.0, 2.0, "strength", notes),
            _float(option(opts, "scdpo_enforce_threshold"), DEFAULT_THRESHOLD, 0.01, 0.99, "threshold", notes),
            _action(option(opts, "scdpo_enforce_action"), notes),
            enforced=True,
            notes=notes,
        )
    notes = []
    return SafetyRequest(
        _bool(enabled),
        _lora(lora),
        _float(strength, DEFAULT_STRENGTH, 0.0, 2.0, "strength", notes),
        _float(threshold, DEFAULT_THRESHOLD, 0.01, 0.99, "threshold", notes),
        _action(action, notes),
        notes=notes,
    )


def register_options(shared, lora_choices) -> None:
    """Add the settings to the webui (``shared.opts``); safe to call again. ``restrict_api`` keeps
    API clients (``/sdapi/v1/options``, ``override_settings``) from changing any of them."""
    import gradio as gr

    for key, (default, label, kind, extra) in OPTIONS.items():
        component, args = None, None
        if kind == "bool":
            component = gr.Checkbox
        elif kind == "float":
            component, args = gr.Slider, {"minimum": extra[0], "maximum": extra[1], "step": extra[2]}
        elif kind == "choice":
            component, args = gr.Radio, {"choices": list(extra)}
        elif kind == "lora":
            component, args = gr.Dropdown, (lambda: {"choices": [NO_LORA, *lora_choices()]})
        try:
            info = shared.OptionInfo(default, label, component, args, section=SECTION, restrict_api=True)
        except TypeError:  # webui older than 1.7 has no restrict_api
            info = shared.OptionInfo(default, label, component, args, section=SECTION)
        shared.opts.add_option(key, info)


__all__ = ["ARG_NAMES", "OPTIONS", "SafetyRequest", "enforce_on", "option", "register_options", "resolve_request"]
