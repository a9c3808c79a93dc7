"""Training-state checkpoints as safetensors (+ JSON metadata): nothing is ever pickled.

A checkpoint holds model/adapter tensors, the optimiser's per-parameter state, and JSON
metadata (step, optimiser hyper-parameters, LR-scheduler state, RNG states, config). Writes are
atomic, so a ``kill -9`` at any moment leaves either the previous or the new checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from .errors import WeightsFormatError
from .fileio import decode_metadata, load_safetensors, save_safetensors_atomic

OPTIM_PREFIX = "__optim__."


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (per-param state) and JSON (param groups, scalars)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{OPTIM_PREFIX}{idx}.{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(OPTIM_PREFIX):
            idx, name = key[len(OPTIM_PREFIX):].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    for idx, scal in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(scal)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state() -> dict[str, Any]:
    """Python-visible RNG states (torch CPU generator as a list of bytes)."""
    return {"torch": torch.get_rng_state().tolist()}


def set_rng_state(state: Mapping[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def save_training_checkpoint(
    path: str | Path,
    model_tensors: Mapping[str, torch.Tensor],
    optimizer: Optional[torch.optim.Optimizer],
    meta: Mapping[str, Any],
    kind: str,
) -> None:
    """Write model tensors + optimiser state + JSON ``meta`` atomically to one safetensors file."""
    tensors = dict(model_tensors)
    full_meta = {"scdpo_kind": kind, "format_version": 1, **meta}
    if optimizer is not None:
        opt_t, opt_meta = optimizer_to_tensors(optimizer)
        tensors.update(opt_t)
        full_meta["optimizer"] = opt_meta
    save_safetensors_atomic(tensors, path, full_meta)


def load_training_checkpoint(path: str | Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a checkpoint written by :func:`save_training_checkpoint`; checks its kind."""
    tensors, raw = load_safetensors(path, what="training checkpoint")
    meta = decode_metadata(raw)
    if meta.get("scdpo_kind") != kind:
        raise WeightsFormatError(
            f"{path} is not a {kind} checkpoint (it says {meta.get('scdpo_kind')!r}); "
            "point --resume at the checkpoint this command wrote, or delete it to start over"
        )
    return tensors, meta


def json_safe(obj: Any) -> Any:
    """Round-trip through JSON (drops non-serialisable values to strings)."""
    return json.loads(json.dumps(obj, default=str))
