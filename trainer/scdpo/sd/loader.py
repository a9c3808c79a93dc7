"""Load SD 1.x / SDXL offline from a single-file checkpoint or a diffusers folder.

Single files go through diffusers' own LDM → diffusers conversion (``from_single_file``) with
the configs shipped in ``scdpo/configs/<family>`` passed as ``config=`` and the shipped CLIP
tokenizer, so nothing is looked up on a hub (``local_files_only``; the CLI also sets
``HF_HUB_OFFLINE=1``). Weights keep the dtype they are stored in (fp16 / bf16 / fp32) unless
``dtype`` says otherwise. diffusers reads an SD 1.x text encoder only under ``text_model.``; for
older files that lack it the encoder is built here (:func:`sd1_text_encoder_state_dict`) and
handed to diffusers as a ready component.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator, Optional

import torch

from ..errors import ScdpoError, WeightsFormatError
from ..limits import read_json_file
from .configs import config_dir as shipped_config_dir
from .detect import SD1_TEXT_PREFIX, SD_UNET_PREFIX, BaseModelInfo, inspect_base_model
from .model import SDTextToImage
from .tokenizers import clip_tokenizer

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _offline():
    """Hub libraries read these at call time; keep them offline for the duration of a load."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE")}
    os.environ.update({k: "1" for k in saved})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _scheduler(config_source: Path):
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_pretrained(str(config_source), subfolder="scheduler", local_files_only=True)


def _folder_scheduler(info: BaseModelInfo):
    """A diffusers folder's own scheduler, or the shipped one of its family when it has none."""
    has_own = (info.path / "scheduler" / "scheduler_config.json").is_file()
    return _scheduler(info.path if has_own else shipped_config_dir(info.family))


def _check_materialised(path: Path, components: dict) -> None:
    """diffusers leaves weights a file lacks on the meta device; refuse such a model clearly."""
    for name, module in components.items():
        missing = [k for k, v in module.state_dict().items() if v.is_meta]
        if missing:
            raise WeightsFormatError(
                f"{path} lacks {len(missing)} {name} weights (e.g. {missing[0]}); the file is incomplete or not a "
                "standard checkpoint of its family"
            )


def sd1_text_encoder_state_dict(tensors: dict, prefix: str = SD1_TEXT_PREFIX) -> dict:
    """The CLIP text encoder of an SD 1.x file as ``text_model.*`` keys, from either layout
    (``<prefix>text_model.X`` or the older ``<prefix>X``), the way ComfyUI and A1111 rename it.
    ``position_ids`` are dropped: older files store them as floats, and the model makes its own."""
    out = {}
    for key, value in tensors.items():
        if not key.startswith(prefix) or key.endswith("position_ids"):
            continue
        name = key[len(prefix):]
        out[name if name.startswith("text_model.") else "text_model." + name] = value
    return out


def _legacy_sd1_text_encoder(info: BaseModelInfo, dtype: torch.dtype, config_dir: Path):
    """The text encoder of an SD 1.x file stored without ``text_model.``, as a ready CLIPTextModel."""
    from safetensors import safe_open
    from transformers import CLIPTextConfig, CLIPTextModel

    with safe_open(str(info.path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys() if k.startswith(SD1_TEXT_PREFIX)}
    state = sd1_text_encoder_state_dict(tensors)
    model = CLIPTextModel(CLIPTextConfig.from_json_file(str(config_dir / "text_encoder" / "config.json")))
    if not hasattr(model, "text_model"):  # transformers >= 5.6 flattened CLIPTextModel
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        example = (missing or result.unexpected_keys)[0]
        raise WeightsFormatError(
            f"{info.path}: its text encoder (cond_stage_model.transformer.*, without text_model.) does not match "
            f"SD 1.x's CLIP ({len(missing)} weights missing, {len(result.unexpected_keys)} unexpected, e.g. "
            f"{example}); the file is incomplete or not a standard SD 1.x checkpoint"
        )
    return model.to(dtype)


def _load_single_file(info: BaseModelInfo, dtype: torch.dtype, config_dir: Path, with_unet: bool = True):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    kwargs = dict(
        config=str(config_dir), local_files_only=True, torch_dtype=dtype,
        tokenizer=clip_tokenizer(), scheduler=_scheduler(config_dir),
    )
    if not with_unet:
        kwargs["unet"] = None  # diffusers skips a component passed as None
    if info.legacy_text_encoder:
        kwargs["text_encoder"] = _legacy_sd1_text_encoder(info, dtype, config_dir)
    if info.family == "sdxl":
        pipe = StableDiffusionXLPipeline.from_single_file(str(info.path), tokenizer_2=clip_tokenizer("!"), **kwargs)
        encoders, tokenizers = [pipe.text_encoder, pipe.text_encoder_2], [pipe.tokenizer, pipe.tokenizer_2]
    else:
        pipe = StableDiffusionPipeline.from_single_file(
            str(info.path), safety_checker=None, feature_extractor=None, requires_safety_checker=False, **kwargs
        )
        encoders, tokenizers = [pipe.text_encoder], [pipe.tokenizer]
    return pipe.unet, pipe.vae, encoders, tokenizers, pipe.scheduler


def _folder_variant(root: Path) -> Optional[str]:
    """``"fp16"`` for a folder that holds only ``*.fp16.safetensors`` UNet weights, else None."""
    only_fp16 = list((root / "unet").glob("*.fp16.safetensors")) and not list(
        (root / "unet").glob("diffusion_pytorch_model.safetensors"))
    return "fp16" if only_fp16 else None


def _load_folder(info: BaseModelInfo, dtype: torch.dtype, with_unet: bool = True):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    root = info.path
    common = dict(local_files_only=True, torch_dtype=dtype, use_safetensors=True)
    variant = _folder_variant(root)
    unet = None
    if with_unet:
        unet = UNet2DConditionModel.from_pretrained(str(root), subfolder="unet", variant=variant, **common)
    vae = AutoencoderKL.from_pretrained(str(root), subfolder="vae", variant=variant, **common)
    names = ["text_encoder", "text_encoder_2"] if info.family == "sdxl" else ["text_encoder"]
    classes = [CLIPTextModel, CLIPTextModelWithProjection]
    encoders = [cls.from_pretrained(str(root / n), variant=variant, **common) for cls, n in zip(classes, names)]
    tokenizers = []
    for i, n in enumerate(["tokenizer", "tokenizer_2"][: len(names)]):
        if (root / n / "vocab.json").is_file() or (root / n / "tokenizer.json").is_file():
            tokenizers.append(CLIPTokenizer.from_pretrained(str(root / n), local_files_only=True))
        else:
            tokenizers.append(clip_tokenizer("!" if i else "<|endoftext|>"))
    scheduler = _folder_scheduler(info)
    return unet, vae, encoders, tokenizers, scheduler


def load_sd_model(
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: Optional[torch.dtype] = None,
    config_dir: Optional[str | Path] = None,
    unet: bool = True,
) -> SDTextToImage:
    """Load an SD 1.x / SDXL base model, frozen, in eval mode, on ``device``.

    ``dtype`` None keeps the stored dtype of the UNet weights. ``config_dir`` overrides the
    shipped config folder for single files of a non-standard size (a folder laid out like
    ``scdpo/configs/sd15``). ``unet=False`` loads the text encoders and VAE only (``model.unet`` is
    None): what encoding training inputs needs (:func:`load_sd_unet` loads the other half).
    Raises :class:`~scdpo.errors.InputFileError`, :class:`~scdpo.errors.WeightsFormatError` or
    :class:`~scdpo.errors.IncompatibleModelError`.
    """
    info = inspect_base_model(path)
    dtype = dtype or info.dtype
    cfg = Path(config_dir) if config_dir else shipped_config_dir(info.family)
    log.info("loading %s (%s, %s, %s)", info.path, info.family, info.layout, str(dtype).replace("torch.", ""))
    with _load_errors(info):
        if info.layout == "single_file":
            parts = _load_single_file(info, dtype, cfg, with_unet=unet)
        else:
            parts = _load_folder(info, dtype, with_unet=unet)
    unet_module, vae, encoders, tokenizers, scheduler = parts
    components = {"VAE": vae, **{f"text encoder {i + 1}": e for i, e in enumerate(encoders)}}
    if unet_module is not None:
        components["UNet"] = unet_module
    _check_materialised(info.path, components)
    model = SDTextToImage(info.family, unet_module, vae, encoders, tokenizers, _training_scheduler(scheduler),
                          model_id=info.path.stem)
    if unet_module is None:  # SDXL's size conditioning defaults to the UNet's native size
        model.default_size = _unet_sample_size(info, cfg) * model.vae_scale_factor
    for module in components.values():
        module.requires_grad_(False).eval()
    return model.to(device=torch.device(device), dtype=dtype)


@contextlib.contextmanager
def _load_errors(info: BaseModelInfo) -> Iterator[None]:
    """Offline for the duration of a load; a library error becomes one line naming the file."""
    try:
        with _offline():
            yield
    except ScdpoError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise WeightsFormatError(
            f"{info.path} could not be loaded as an {info.family.upper()} model ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:300] if str(exc) else ''}); check that it is a complete, standard checkpoint"
        ) from None


def _training_scheduler(scheduler):
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler.config)


def _component_config(info: BaseModelInfo, config_dir: Path, name: str) -> dict:
    """``<name>/config.json`` of a diffusers folder, or of the config folder a single file is read with."""
    root = info.path if info.layout == "diffusers" else config_dir
    data = read_json_file(root / name / "config.json", f"{name} config",
                          "pass a complete diffusers folder or a standard single-file checkpoint", WeightsFormatError)
    return data if isinstance(data, dict) else {}


def _unet_sample_size(info: BaseModelInfo, config_dir: Path) -> int:
    return int(_component_config(info, config_dir, "unet").get("sample_size", 64))


def load_sd_unet(
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: Optional[torch.dtype] = None,
    config_dir: Optional[str | Path] = None,
) -> SDTextToImage:
    """The UNet of an SD 1.x / SDXL base model alone (no VAE, no text encoder), frozen, in ``dtype``:
    what training on encoded inputs needs (``model.vae`` is None, ``model.text_encoders`` empty).

    Only the UNet's tensors are read (a single file's ``model.diffusion_model.*``, a diffusers
    folder's ``unet/``), one at a time, each cast to ``dtype`` as it is read, into a UNet built
    without weights (:mod:`scdpo.sd.weights`): the load never holds the text encoders, the VAE or
    a second precision of the UNet. Errors as :func:`load_sd_model`.
    """
    from .weights import load_folder_unet, load_single_file_unet

    info = inspect_base_model(path)
    dtype = dtype or info.dtype
    cfg = Path(config_dir) if config_dir else shipped_config_dir(info.family)
    log.info("loading the UNet of %s (%s, %s, %s)", info.path, info.family, info.layout, str(dtype).replace("torch.", ""))
    with _load_errors(info):
        if info.layout == "single_file":
            unet = load_single_file_unet(info.path, cfg, dtype, SD_UNET_PREFIX)
            scheduler = _scheduler(cfg)
        else:
            unet = load_folder_unet(info.path, dtype, _folder_variant(info.path))
            scheduler = _folder_scheduler(info)
        scale = 2 ** (len(_component_config(info, cfg, "vae").get("block_out_channels", [0] * 4)) - 1)
    _check_materialised(info.path, {"UNet": unet})
    model = SDTextToImage(info.family, unet, None, [], [], _training_scheduler(scheduler), model_id=info.path.stem,
                          vae_scale_factor=scale)
    unet.requires_grad_(False).eval()
    return model.to(device=torch.device(device), dtype=dtype)

