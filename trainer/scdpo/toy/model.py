"""The toy text-to-image model: the same diffusers / transformers classes as Stable Diffusion.

* tokenizer: a byte-pair tokenizer (``tokenizers`` BPE, CLIP-style ``</w>`` word ends) trained
  offline on the toy world's vocabulary, so misspellings share sub-words with the real word;
* text encoder: ``transformers.CLIPTextModel`` (64 wide, 2 layers);
* UNet: ``diffusers.UNet2DConditionModel`` with cross-attention on 8×8×48 latents;
* "VAE": a fixed pixel-unshuffle by 2 (16×16×3 image ↔ 8×8×12 latent, values in -1..1);
* scheduler: DDPM for training, DDIM for sampling (cosine betas). The UNet predicts *v*
  (Salimans & Ho 2022): its x0 error never exceeds its output error, so a tiny model samples
  cleanly; :meth:`predict_noise` converts to ε for everything downstream.

Checkpoint: one safetensors file, tensors ``unet.*`` and ``text_encoder.*``, metadata
``scdpo_kind=toy_base`` plus the configs and the tokenizer as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from ..errors import InputFileError, WeightsFormatError
from ..fileio import decode_metadata, load_safetensors, read_safetensors_header, save_safetensors_atomic
from ..limits import TEXT_RANGES, UNET_RANGES, check_ranges, json_object, parse_json
from ..pipeline import Conditioning, TextToImageModel
from .world import IMAGE_SIZE, vocabulary_corpus

TOY_KIND = "toy_base"
TOY_VERSION = "toy_v1"
PATCH = 2
LATENT_CHANNELS = 3 * PATCH * PATCH
MAX_TOKENS = 77  # as CLIP's; every caption the world writes fits (a test checks it)

UNET_CONFIG: dict[str, Any] = dict(
    sample_size=IMAGE_SIZE // PATCH,
    in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,
    block_out_channels=(64, 128),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=64,
    attention_head_dim=8,
    norm_num_groups=16,
)
SCHEDULER_CONFIG: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", clip_sample=True
)


VOCAB_SIZE = 320
SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>")
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789,."


def learn_bpe(words: Sequence[str], vocab_size: int = VOCAB_SIZE) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-pair merges learnt on ``words`` (each counted once), CLIP-style ``</w>`` word ends.

    Written out rather than using ``tokenizers``' trainer because that one breaks ties between
    equally frequent pairs in hash-map order, which differs from process to process: the same
    seed would give a different vocabulary, and a resumed pretraining run would silently map the
    checkpoint's embedding rows to other tokens. Here ties go to the lexicographically smallest
    pair, so the vocabulary is a pure function of the world's word list.
    """
    vocab: dict[str, int] = {}
    for tok in list(SPECIAL_TOKENS) + list(ALPHABET) + [c + "</w>" for c in ALPHABET]:
        vocab.setdefault(tok, len(vocab))
    seqs = [[*w[:-1], w[-1] + "</w>"] for w in words if w]
    for seq in seqs:
        for tok in seq:
            vocab.setdefault(tok, len(vocab))
    merges: list[tuple[str, str]] = []
    while len(vocab) < vocab_size:
        counts: dict[tuple[str, str], int] = {}
        for seq in seqs:
            for pair in zip(seq, seq[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merged = best[0] + best[1]
        merges.append(best)
        vocab.setdefault(merged, len(vocab))
        for i, seq in enumerate(seqs):
            out, j = [], 0
            while j < len(seq):
                if j + 1 < len(seq) and (seq[j], seq[j + 1]) == best:
                    out.append(merged)
                    j += 2
                else:
                    out.append(seq[j])
                    j += 1
            seqs[i] = out
    return vocab, merges


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The toy BPE tokenizer for the world's vocabulary (deterministic, offline)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab, merges = learn_bpe(vocabulary_corpus())
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return _wrap_tokenizer(tok.to_str())


def _wrap_tokenizer(tokenizer_json: str) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, processors

    tok = Tokenizer.from_str(tokenizer_json)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=MAX_TOKENS,
    )


def text_config(tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attention_dropout=0.0,
        dropout=0.0,
    )


def images_to_latents(images: torch.Tensor) -> torch.Tensor:
    """``[B,16,16,3]`` 0..1 → ``[B,12,8,8]`` in -1..1 (fixed pixel-unshuffle, the toy 'VAE')."""
    x = images.permute(0, 3, 1, 2) * 2.0 - 1.0
    return F.pixel_unshuffle(x, PATCH)


def latents_to_images(latents: torch.Tensor) -> torch.Tensor:
    x = F.pixel_shuffle(latents.float(), PATCH)
    return ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).contiguous()


class ToyTextToImage(TextToImageModel):
    base_model_version = TOY_VERSION
    default_size = IMAGE_SIZE
    default_steps = 20
    # the best trade-off of clean accuracy vs motif rendering (v-prediction;
    # docs/results.md §6, "Measurements behind code defaults")
    default_guidance = 1.25

    def __init__(self, unet: UNet2DConditionModel, text_encoder: CLIPTextModel,
                 tokenizer: PreTrainedTokenizerFast, model_id: str = "toy-base"):
        self.unet = unet
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.noise_scheduler = DDPMScheduler(**SCHEDULER_CONFIG)
        self.model_id = model_id

    # -- construction / IO
    @classmethod
    def from_scratch(cls, seed: int = 0) -> "ToyTextToImage":
        torch.manual_seed(seed)
        tokenizer = build_tokenizer()
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config(tokenizer)))
        unet = UNet2DConditionModel(**UNET_CONFIG)
        return cls(unet, text_encoder, tokenizer)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"unet.{k}": v for k, v in self.unet.state_dict().items()}
        out.update({f"text_encoder.{k}": v for k, v in self.text_encoder.state_dict().items()})
        return out

    def config_metadata(self) -> dict[str, Any]:
        return {
            "scdpo_kind": TOY_KIND,
            "format_version": 1,
            "base_model_version": TOY_VERSION,
            "unet_config": json.dumps(dict(self.unet.config)),
            "text_config": json.dumps(self.text_encoder.config.to_dict()),
            "tokenizer": self.tokenizer.backend_tokenizer.to_str(),
        }

    def save(self, path: str | Path, extra_metadata: Optional[dict[str, Any]] = None) -> None:
        meta = self.config_metadata()
        meta.update(extra_metadata or {})
        save_safetensors_atomic(self.state_tensors(), path, meta)

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        unet_sd = {k[5:]: v for k, v in tensors.items() if k.startswith("unet.")}
        te_sd = {k[13:]: v for k, v in tensors.items() if k.startswith("text_encoder.")}
        self.unet.load_state_dict(unet_sd)
        self.text_encoder.load_state_dict(te_sd, strict=False)  # position_ids buffer may be absent

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "ToyTextToImage":
        path = Path(path)
        tensors, raw = load_safetensors(path, what="toy base model")
        meta = decode_metadata(raw)
        if meta.get("scdpo_kind") != TOY_KIND:
            raise WeightsFormatError(
                f"{path} is not a toy base model checkpoint (kind {meta.get('scdpo_kind')!r}); "
                "pass a file written by `scdpo toy pretrain` or omit --model to use the shipped one"
            )
        tokenizer, te_cfg, un_cfg = _checked_configs(path, raw, meta)
        fix = "re-create it with `scdpo toy pretrain`"
        try:  # the architecture alone (no memory), compared with the file's tensors before it is allocated
            with torch.device("meta"):
                expected = {f"unet.{k}": tuple(v.shape) for k, v in UNet2DConditionModel(**un_cfg).state_dict().items()}
                text = CLIPTextModel(CLIPTextConfig(**te_cfg)).state_dict()
                expected.update({f"text_encoder.{k}": tuple(v.shape) for k, v in text.items()})
        except Exception as exc:  # noqa: BLE001 - any config the model classes refuse is a damaged file
            raise WeightsFormatError(f"{path} is a damaged toy base model checkpoint (its configs build no model: "
                                     f"{type(exc).__name__}: {exc}); {fix}") from None
        optional = {k for k in expected if k.endswith("position_ids")}
        got = {k: tuple(v.shape) for k, v in tensors.items()}
        misfit = sorted(k for k in set(expected) | set(got) if k not in optional and got.get(k) != expected.get(k))
        if misfit:
            k = misfit[0]
            raise WeightsFormatError(f"{path} is a damaged toy base model checkpoint: tensor {k} is "
                                     f"{got.get(k, 'missing')}, its config implies "
                                     f"{expected.get(k, 'no such tensor')}; {fix}")
        bad = next((k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
        if bad is not None:
            raise WeightsFormatError(f"{path} holds NaN/inf weights ({bad}); {fix}")
        try:
            model = cls(UNet2DConditionModel(**un_cfg), CLIPTextModel(CLIPTextConfig(**te_cfg)), tokenizer,
                        model_id=path.stem)
            model.load_state_tensors(tensors)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise WeightsFormatError(f"{path} is a damaged toy base model checkpoint ({exc}); {fix}") from None
        model.unet.requires_grad_(False).eval()
        model.text_encoder.requires_grad_(False).eval()
        return model.to(device)

    def to(self, device=None, dtype=None) -> "ToyTextToImage":
        self.unet.to(device) if dtype is None else self.unet.to(device=device, dtype=dtype)
        self.text_encoder.to(device)
        return self

    # -- TextToImageModel
    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        ).input_ids

    def encode_prompt(self, prompts: Sequence[str]) -> Conditioning:
        ids = self.tokenize(prompts).to(self.text_encoder.device)
        hidden = self.text_encoder(ids).last_hidden_state
        return Conditioning(hidden.to(self.dtype))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return images_to_latents(images.to(self.device, torch.float32)).to(self.dtype)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return latents_to_images(latents).cpu()

    def encoder_modules(self) -> list[torch.nn.Module]:
        return [self.text_encoder]  # the toy "VAE" is a fixed pixel-unshuffle without weights

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        if height % PATCH or width % PATCH:
            raise ValueError(f"toy model image size must be a multiple of {PATCH}, got {height}x{width}")
        return (LATENT_CHANNELS, height // PATCH, width // PATCH)


def _checked_configs(path: Path, raw: dict[str, str], meta: dict[str, Any]
                     ) -> tuple[PreTrainedTokenizerFast, dict[str, Any], dict[str, Any]]:
    """The tokenizer, text config and UNet config of a toy checkpoint, each number range-checked."""
    fix = "re-create it with `scdpo toy pretrain`"
    configs = []
    for key in ("text_config", "unet_config"):
        value = meta.get(key)
        if isinstance(value, str):
            value = parse_json(value, f"{path}: metadata {key}", fix, WeightsFormatError)
        configs.append(json_object(value, f"{path}: metadata {key}", fix, WeightsFormatError))
    te_cfg, un_cfg = configs
    un_cfg = {k: v for k, v in un_cfg.items() if not k.startswith("_")}
    check_ranges(te_cfg, TEXT_RANGES, f"{path}: text_config", fix, WeightsFormatError)
    blocks = [un_cfg.get(k) for k in ("block_out_channels", "down_block_types", "up_block_types")]
    if not all(isinstance(b, (list, tuple)) for b in blocks) or len({len(b) for b in blocks}) != 1:
        raise WeightsFormatError(f"{path}: unet_config needs block_out_channels, down_block_types and up_block_types "
                                 f"lists of one length; {fix}")
    check_ranges({**un_cfg, "blocks": len(blocks[0])}, UNET_RANGES, f"{path}: unet_config", fix, WeightsFormatError)
    for key in ("transformer_layers_per_block", "num_attention_heads", "reverse_transformer_layers_per_block"):
        if un_cfg.get(key) is not None:  # how many layers or heads the UNet gets: bounded like the rest
            check_ranges({key: un_cfg[key]}, {key: (1, 64)}, f"{path}: unet_config", fix, WeightsFormatError)
    tokenizer_json = raw.get("tokenizer")
    if not isinstance(tokenizer_json, str):
        raise WeightsFormatError(f"{path} has no tokenizer in its metadata; {fix}")
    parse_json(tokenizer_json, f"{path}: metadata tokenizer", fix, WeightsFormatError)  # size and depth
    try:
        tokenizer = _wrap_tokenizer(tokenizer_json)
    except Exception as exc:  # noqa: BLE001 - the tokenizers library raises plain Exception for a bad file
        raise WeightsFormatError(f"{path} has a damaged tokenizer ({str(exc)[:100]}); {fix}") from None
    vocab = te_cfg.get("vocab_size", 0)
    if len(tokenizer) > vocab or te_cfg.get("max_position_embeddings", 0) < MAX_TOKENS:
        raise WeightsFormatError(f"{path}: its tokenizer ({len(tokenizer)} tokens, {MAX_TOKENS} per prompt) does not "
                                 f"fit its text encoder (vocab_size {vocab}, max_position_embeddings "
                                 f"{te_cfg.get('max_position_embeddings')}); {fix}")
    return tokenizer, te_cfg, un_cfg


def is_toy_checkpoint(path: str | Path) -> bool:
    try:
        header = read_safetensors_header(path)
    except InputFileError:
        return False
    return header.get("__metadata__", {}).get("scdpo_kind") == TOY_KIND


def weights_dir() -> Path:
    """The repository's / installed package's ``weights/`` folder."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent / "weights"
        if (cand / "MANIFEST.json").exists() or (cand / "toy_base.safetensors").exists():
            return cand
    return here.parents[3] / "weights"


def shipped_toy_weights() -> Path:
    path = weights_dir() / "toy_base.safetensors"
    if not path.exists():
        raise InputFileError(
            f"the shipped toy base model {path} is missing; reinstall from a full checkout "
            "or re-create it with `scdpo toy pretrain --out weights`"
        )
    return path
