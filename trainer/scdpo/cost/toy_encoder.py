"""The toy world's image encoder: a small convolutional autoencoder's encoder half.

It plays the part CLIP vision plays for real models: a generic, frozen image representation the
cost head is trained on top of. It is trained **self-supervised** (denoising autoencoding) on
renders of toy scenes only — it never sees the oracle judge's labels, a category name or a prompt —
so the cost model cannot inherit the judge's construction rules through its encoder.

Input ``[B,32,32,3]`` float 0..1 (other sizes are resized); embedding ``[B,128]``.
File: one safetensors (``scdpo_kind=toy_image_encoder``), tensors ``encoder.*`` (+ ``decoder.*``
when saved for further training), metadata: architecture config and how it was trained.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..errors import WeightsFormatError
from ..fileio import decode_metadata, load_safetensors, save_safetensors_atomic
from ..limits import TOY_ENCODER_RANGES, int_in_range
from ..toy.world import IMAGE_SIZE, ToyWorld, render
from .backbones import ImageBatch, ImageEncoder, resize_square

TOY_ENCODER_KIND = "toy_image_encoder"
TOY_ENCODER_FILE = "toy_encoder.safetensors"


def _conv_stack(widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1), nn.GELU()]
    for cin, cout in zip(widths[:-1], widths[1:]):
        layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.GroupNorm(8, cout), nn.GELU()]
    return nn.Sequential(*layers)


class ToyImageEncoder(ImageEncoder):
    """Conv encoder 32×32×3 → 4×4×C → linear → ``embed_dim``."""

    def __init__(self, embed_dim: int = 128, widths: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        self.widths = tuple(widths)
        self.embed_dim = embed_dim
        self.input_size = IMAGE_SIZE
        self.features = _conv_stack(self.widths)
        grid = IMAGE_SIZE // 2 ** (len(self.widths) - 1)
        self.to_embedding = nn.Linear(self.widths[-1] * grid * grid, embed_dim)
        self.backbone_id = f"toy-encoder:d{embed_dim}-w{'x'.join(map(str, self.widths))}"

    def pixel_batch(self, images: ImageBatch) -> torch.Tensor:
        return resize_square(images, self.input_size)

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.to_embedding(self.features(pixels * 2 - 1).flatten(1))

    def config(self) -> dict:
        return {"embed_dim": self.embed_dim, "widths": list(self.widths)}


class ToyImageDecoder(nn.Module):
    """Embedding → 32×32×3 reconstruction (used only while training the encoder)."""

    def __init__(self, embed_dim: int = 128, widths: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        self.grid = IMAGE_SIZE // 2 ** (len(widths) - 1)
        self.top = widths[-1]
        self.from_embedding = nn.Linear(embed_dim, widths[-1] * self.grid * self.grid)
        layers: list[nn.Module] = []
        rev = list(reversed(widths))
        for cin, cout in zip(rev[:-1], rev[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1), nn.GroupNorm(8, cout), nn.GELU()]
        layers += [nn.Conv2d(widths[0], 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.from_embedding(z).view(-1, self.top, self.grid, self.grid)
        return torch.sigmoid(self.net(x))  # [B,3,32,32] 0..1


@dataclass
class ToyEncoderTrainConfig:
    steps: int = 1500
    batch_size: int = 128
    lr: float = 2e-3
    embed_dim: int = 128
    noise_std: float = 0.06  # input corruption: generated images are noisy versions of renders
    blur_prob: float = 0.5
    contrast_jitter: float = 0.0  # images are pulled towards their mean colour by up to this fraction
    colour_offset: float = 0.0  # per-image, per-channel shift up to ± this
    seed: int = 0


def render_batch(rng: random.Random, world: ToyWorld, n: int) -> torch.Tensor:
    """``n`` renders of random toy scenes (all prompt kinds, all splits) → ``[n,32,32,3]`` 0..1."""
    imgs = [render(p.scene, p.seed) for p in (world.sample_prompt(rng, 0.35, 0.2) for _ in range(n))]
    return torch.from_numpy(np.stack(imgs)).float() / 255.0


def corrupt(pixels: torch.Tensor, cfg: ToyEncoderTrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Blur some images and add Gaussian noise (``[B,3,H,W]`` 0..1)."""
    blurred = F.avg_pool2d(F.pad(pixels, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    pick = (torch.rand(len(pixels), 1, 1, 1, generator=gen) < cfg.blur_prob).float()
    mix = torch.rand(len(pixels), 1, 1, 1, generator=gen)
    x = pixels + pick * mix * (blurred - pixels)
    if cfg.contrast_jitter > 0:  # generated images are washed out: colours drift towards the image mean
        mean = x.mean(dim=(2, 3), keepdim=True)
        keep = 1 - cfg.contrast_jitter * torch.rand(len(x), 1, 1, 1, generator=gen)
        x = mean + keep * (x - mean)
    if cfg.colour_offset > 0:
        x = x + cfg.colour_offset * (2 * torch.rand(len(x), 3, 1, 1, generator=gen) - 1)
    x = x + cfg.noise_std * torch.rand(len(pixels), 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 1)


def train_toy_encoder(cfg: ToyEncoderTrainConfig = ToyEncoderTrainConfig(), progress: bool = True,
                      extra_images: Optional[np.ndarray] = None, extra_fraction: float = 0.5
                      ) -> tuple[ToyImageEncoder, ToyImageDecoder, dict]:
    """Denoising-autoencoder training on toy renders. Returns encoder, decoder and a summary.

    ``extra_images`` (uint8 ``[N,32,32,3]``, unlabelled, e.g. base-model generations of train-split
    prompts) make up ``extra_fraction`` of every batch; they are reconstructed as they are.
    """
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    world = ToyWorld("all")
    enc, dec = ToyImageEncoder(cfg.embed_dim), ToyImageDecoder(cfg.embed_dim)
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    t0, loss_ema = time.time(), None
    bar = tqdm(range(cfg.steps), desc="toy encoder", disable=not progress, unit="step")
    extra = torch.from_numpy(extra_images).float() / 255.0 if extra_images is not None else None
    n_extra = int(round(cfg.batch_size * extra_fraction)) if extra is not None else 0
    for _ in bar:
        clean = render_batch(rng, world, cfg.batch_size - n_extra)
        if n_extra:
            clean = torch.cat([clean, extra[torch.randint(len(extra), (n_extra,), generator=gen)]])
        clean = clean.permute(0, 3, 1, 2)
        recon = dec(enc.embed_pixels(corrupt(clean, cfg, gen)))
        loss = F.mse_loss(recon, clean)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        bar.set_postfix(mse=f"{loss_ema:.5f}")
    enc.eval().requires_grad_(False)
    dec.eval().requires_grad_(False)
    objective = "denoising autoencoder on toy renders" + (
        f" + {len(extra)} unlabelled toy generations ({extra_fraction:.0%} of each batch)" if n_extra else "")
    summary = {"objective": objective + " (no labels)", "final_mse": round(loss_ema or 0, 6),
               "seconds": round(time.time() - t0, 1), **asdict(cfg)}
    return enc, dec, summary


def save_toy_encoder(path: str | Path, encoder: ToyImageEncoder, decoder: Optional[ToyImageDecoder] = None,
                     training: Optional[dict] = None) -> None:
    tensors = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    if decoder is not None:
        tensors.update({f"decoder.{k}": v for k, v in decoder.state_dict().items()})
    meta = {"scdpo_kind": TOY_ENCODER_KIND, "format_version": 1, "backbone_id": encoder.backbone_id,
            "embed_dim": encoder.embed_dim, "config": encoder.config(), "training": training or {}}
    save_safetensors_atomic(tensors, path, meta)


def toy_encoder_from_tensors(tensors: dict[str, torch.Tensor], config: dict, what: str) -> ToyImageEncoder:
    """The encoder a file's ``encoder.*`` tensors and config describe. The config's numbers are range
    checked and the architecture is compared with the tensors' shapes before any weight is allocated."""
    fix = "re-create it"
    sd = {k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")}
    try:
        embed_dim, widths = config["embed_dim"], config["widths"]
        if not isinstance(widths, list):
            raise TypeError("widths is not a list")
    except (KeyError, TypeError) as exc:
        raise WeightsFormatError(f"{what} holds a damaged toy encoder config ({exc}); {fix}") from None
    low, high = TOY_ENCODER_RANGES["layers"]
    int_in_range(len(widths), f"{what}: toy encoder layer count", low, high, fix, WeightsFormatError)
    int_in_range(embed_dim, f"{what}: toy encoder embed_dim", *TOY_ENCODER_RANGES["embed_dim"], fix,
                 WeightsFormatError)
    for w in widths:
        int_in_range(w, f"{what}: toy encoder width", *TOY_ENCODER_RANGES["widths"], fix, WeightsFormatError)
        if w % 8:
            raise WeightsFormatError(f"{what}: toy encoder width {w} is not a multiple of 8 (GroupNorm); {fix}")
    with torch.device("meta"):  # the architecture alone, to compare with the file before allocating it
        expected = {k: tuple(v.shape) for k, v in ToyImageEncoder(embed_dim, tuple(widths)).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in sd.items()}
    if got != expected:
        diff = sorted(set(got.items()) ^ set(expected.items()))
        raise WeightsFormatError(f"{what} holds a damaged toy encoder (tensor {diff[0][0]} does not fit its config); "
                                 f"{fix}")
    if not all(v.is_floating_point() and torch.isfinite(v).all() for v in sd.values()):
        raise WeightsFormatError(f"{what} holds a toy encoder with NaN/inf or non-float weights; {fix}")
    enc = ToyImageEncoder(embed_dim, tuple(widths))
    enc.load_state_dict(sd)
    return enc.eval().requires_grad_(False)


def load_toy_encoder(path: str | Path, device=None) -> ToyImageEncoder:
    tensors, raw = load_safetensors(path, what="toy image encoder")
    meta = decode_metadata(raw)
    if meta.get("scdpo_kind") != TOY_ENCODER_KIND:
        raise WeightsFormatError(f"{path} is not a toy image encoder (kind {meta.get('scdpo_kind')!r}); "
                                 "pass the file written by `scdpo toy train-encoder`")
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    return toy_encoder_from_tensors(tensors, config, str(path)).to(device or "cpu")


def shipped_toy_encoder() -> Path:
    from ..errors import InputFileError
    from ..toy.model import weights_dir

    path = weights_dir() / TOY_ENCODER_FILE
    if not path.exists():
        raise InputFileError(f"the shipped toy image encoder {path} is missing; reinstall from a full checkout "
                             "or re-create it with `scdpo toy train-encoder --out weights/toy_encoder.safetensors`")
    return path
