"""Stand-in for comfy.model_management: CPU devices, a record of models loaded, interrupts."""

import torch

loaded_patchers: list = []  # every patcher passed to load_models_gpu, in order (tests read it)
_interrupted = False


class InterruptProcessingException(Exception):
    pass


def get_torch_device():
    return torch.device("cpu")


def unet_offload_device():
    return torch.device("cpu")


def intermediate_device():
    return torch.device("cpu")


def text_encoder_device():
    return torch.device("cpu")


def text_encoder_offload_device():
    return torch.device("cpu")


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False):
    for patcher in models:
        patcher.model.to(patcher.load_device)
        loaded_patchers.append(patcher)


def load_model_gpu(model):
    return load_models_gpu([model])


def interrupt_current_processing(value=True):
    global _interrupted
    _interrupted = value


def processing_interrupted():
    return _interrupted


def throw_exception_if_processing_interrupted():
    global _interrupted
    if _interrupted:
        _interrupted = False
        raise InterruptProcessingException()
