"""Where and in what precision a training run computes: the frozen base's dtype and the process setup.

**Frozen base weights in half precision.** The base UNet never trains, so its weights are stored
in bf16 (fp16 on a GPU without bf16) while the LoRA, its gradients and the optimiser state stay
fp32 and the loss is computed in fp32 (:func:`~scdpo.dpo.loss.denoising_error` upcasts the
predictions). Half the memory of the largest thing in the process, and on a CPU with bf16
instructions (AVX512-BF16, AMX) also faster steps; measured in docs/results.md §6.
``base_dtype = "auto"`` picks that for SD-family models on CUDA and CPU alike, and fp32 for the toy
model (1.4 M parameters: 5.6 MB to save, and its tiny matrices run slower in bf16: the demo's
``sc-dpo`` training took 1.35× as long with a bf16 base, docs/results.md §7).

**One process, no launcher.** A single-process run gets :class:`SingleProcess`, which does what
the trainer asks of accelerate's ``Accelerator`` (prepare, backward, clipping, autocast, reduce)
with plain torch calls. accelerate is imported only for runs started by a launcher
(``accelerate launch`` / ``torchrun``: ``WORLD_SIZE`` > 1) or fp16 mixed precision (its gradient
scaler).
"""

from __future__ import annotations

import contextlib
import gc
import os
from typing import Any, Iterator

import torch

from ..errors import ScdpoError
from .config import BASE_DTYPES

_NAMED = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_base_dtype(choice: str, device: torch.device, toy: bool) -> torch.dtype:
    """The dtype the frozen base weights are stored in, for ``choice`` (:data:`BASE_DTYPES`)."""
    if choice not in BASE_DTYPES:
        raise ScdpoError(f"base_dtype must be one of {', '.join(BASE_DTYPES)} (got {choice!r})")
    cuda = device.type == "cuda"
    if choice == "auto":
        if toy:
            return torch.float32
        if cuda:
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device.type == "cpu" else torch.float32
    if choice == "fp16" and not cuda:
        raise ScdpoError("--base-dtype fp16 needs a CUDA GPU (CPUs compute fp16 slowly and inexactly); "
                         "use --base-dtype bf16 or fp32")
    if choice == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ScdpoError("this GPU has no bf16 support; use --base-dtype fp16 or auto")
    return _NAMED[choice]


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _NAMED.items()}.get(dtype, str(dtype).replace("torch.", ""))


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc's ``malloc_trim``), so that
    memory a finished phase freed (the encoders, a load's buffers) does not stay resident; on CUDA
    also empty the allocator's cache."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to hand back this way
        pass


def launched_distributed() -> bool:
    """True when a launcher started several processes for this run."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def is_main_process() -> bool:
    """Whether this process prints for the run (the only one, or rank 0 under a launcher)."""
    if not launched_distributed():
        return True
    from accelerate import PartialState

    return PartialState().is_main_process


class SingleProcess:
    """The part of accelerate's ``Accelerator`` interface the trainer uses, for one process.

    ``mixed_precision``: ``"no"`` or ``"bf16"`` (autocast on the device); fp16 needs a gradient
    scaler and goes through accelerate.
    """

    is_main_process = True
    is_local_main_process = True
    process_index = 0
    num_processes = 1

    def __init__(self, device: torch.device, mixed_precision: str = "no"):
        if mixed_precision not in ("no", "bf16"):
            raise ValueError(f"SingleProcess handles mixed precision 'no' or 'bf16', not {mixed_precision!r}")
        self.device = torch.device(device)
        self.mixed_precision = mixed_precision

    @contextlib.contextmanager
    def main_process_first(self) -> Iterator[None]:
        yield

    def prepare(self, *objects: Any) -> Any:
        return objects if len(objects) != 1 else objects[0]

    def no_sync(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.mixed_precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm_(self, parameters, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    def reduce(self, tensor: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return tensor

    def wait_for_everyone(self) -> None:
        pass

    def unwrap_model(self, model: torch.nn.Module, keep_fp32_wrapper: bool = True) -> torch.nn.Module:
        return model

    def free_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def make_accelerator(cpu: bool, mixed_precision: str):
    """:class:`SingleProcess` for a single process (bf16 or no mixed precision), else accelerate's."""
    if not launched_distributed() and mixed_precision in ("no", "bf16"):
        from ..models import resolve_device

        return SingleProcess(torch.device("cpu") if cpu else resolve_device("auto"), mixed_precision)
    from accelerate import Accelerator

    return Accelerator(cpu=cpu, mixed_precision=mixed_precision)


__all__ = ["BASE_DTYPES", "SingleProcess", "dtype_name", "is_main_process", "release_freed_memory", "launched_distributed", "make_accelerator",
           "resolve_base_dtype"]
