"""A training-free cost model from a full CLIP model: zero-shot concept prompts per category.

For each category ``k`` a few prompts describe the unsafe concept (``U_k``) and a few its safe
counterparts and look-alikes (``S_k``: the same scene without it, things that resemble it). With
``x`` the image's unit embedding, ``u``, ``s`` the prompts' and ``τ`` the model's logit scale
(``exp(logit_scale)``, 100 for OpenAI's CLIP):

    raw_k(x) = log mean_{u ∈ U_k} exp(τ x·u)  −  log mean_{s ∈ S_k} exp(τ x·s)
    c_k(x)   = a_k · raw_k(x) + b_k           (a_k = 1, b_k = 0 until calibrated)

``raw_k`` is the log-odds of "unsafe" under CLIP's own softmax over the two prompt sets, each set
given half the prior (so adding prompts to one side does not tilt it). :meth:`ZeroShotClipScorer.calibrate`
fits ``a_k, b_k`` (Platt scaling) on labelled images. Positive = unsafe; the threshold is 0
(p(unsafe) = 0.5). The scorer has the :class:`~scdpo.cost.scorer.CostScorer` interface; its
``weak_labels`` turn a recipe's own candidates into labels for ``scdpo cost train``
(:func:`scdpo.cost.data.weak_label_manifest`).

Spec for :func:`~scdpo.cost.scorer.load_cost_model`: ``clip-zero-shot:PATH`` (PATH: a full CLIP model,
see :mod:`scdpo.cost.clip_files`); ``nudenet+clip-zero-shot:PATH`` takes nudity from NudeNet.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..errors import ScdpoError
from .clip_model import ClipModel, load_clip_model
from .scorer import CostResult, ProgressFn, images_to_list, make_result

SPEC_PREFIX = "clip-zero-shot"

# category -> (prompts describing the unsafe concept, prompts describing safe counterparts / look-alikes).
# Written for the shipped prompt set's categories (docs/prompts.md): the safe side holds the rewrites'
# kind of scene and the near-miss look-alikes, so a look-alike is pulled to the safe side.
CONCEPT_PROMPTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "gore": (
        ("a gory photo of bloody wounds", "a mutilated body covered in blood", "graphic violence with blood splatter",
         "a corpse lying in a pool of blood", "a person with a deep bleeding gash"),
        ("a photo of an uninjured person", "a peaceful everyday scene", "red paint splattered on a canvas",
         "a slice of watermelon", "a bowl of tomato sauce", "a glass of red wine", "a red rose"),
    ),
    "weapon": (
        ("a person holding a gun", "a handgun", "a rifle pointed at the camera", "a person holding a knife as a weapon",
         "a sword or a dagger"),
        ("a person with empty hands", "a person holding a paintbrush", "a person holding an umbrella",
         "a kitchen whisk", "a hair dryer", "a flashlight", "a fishing rod"),
    ),
    "nudity": (
        ("a photo of a naked person", "explicit nudity", "a nude body with bare breasts",
         "a nude person with exposed genitals", "an erotic photo of an undressed person"),
        ("a photo of a fully clothed person", "a person wearing a jacket and trousers", "a person in a swimsuit",
         "a classical marble statue", "a shop mannequin", "a landscape without people"),
    ),
}


class ZeroShotClipScorer:
    """The :class:`~scdpo.cost.scorer.CostScorer` interface on a full CLIP model (module docstring)."""

    threshold = 0.0

    def __init__(self, clip: ClipModel, concepts: Optional[dict] = None, name: str = ""):
        concepts = dict(concepts or CONCEPT_PROMPTS)
        for cat, sides in concepts.items():
            if len(sides) != 2 or not all(sides) or not all(isinstance(t, str) for side in sides for t in side):
                raise ScdpoError(f"zero-shot category {cat!r} needs (unsafe prompts, safe prompts), each non-empty")
        self.clip = clip
        self.concepts = concepts
        self.categories = list(concepts)
        self.name = name or f"{SPEC_PREFIX}:{Path(str(clip.source)).name}"
        self.scale = torch.ones(len(self.categories))  # a_k
        self.bias = torch.zeros(len(self.categories))  # b_k
        self._embed_prompts()

    def _embed_prompts(self) -> None:
        self.prompt_embeddings = [(self.clip.text_embeddings(list(u)), self.clip.text_embeddings(list(s)))
                                  for u, s in self.concepts.values()]

    @property
    def device(self) -> torch.device:
        return self.clip.device

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "ZeroShotClipScorer":
        self.clip.to(device=device, dtype=dtype)
        self.prompt_embeddings = [(u.to(device or u.device), s.to(device or s.device))
                                  for u, s in self.prompt_embeddings]
        return self

    @torch.no_grad()
    def raw_logits(self, images, batch_size: int = 16, progress: Optional[ProgressFn] = None) -> torch.Tensor:
        """``[B,K]`` uncalibrated ``raw_k`` (module docstring), float32 CPU."""
        batch = images_to_list(images)
        n, tau = len(batch), self.clip.logit_scale
        parts = []
        for start in range(0, n, batch_size):
            x = self.clip.image_embeddings(batch[start:start + batch_size], batch_size=batch_size)
            cols = []
            for u, s in self.prompt_embeddings:
                lu = torch.logsumexp(tau * x @ u.T.to(x.dtype), dim=-1) - math.log(len(u))
                ls = torch.logsumexp(tau * x @ s.T.to(x.dtype), dim=-1) - math.log(len(s))
                cols.append(lu - ls)
            parts.append(torch.stack(cols, dim=-1).float().cpu())
            if progress is not None:
                progress(min(start + batch_size, n), n)
        return torch.cat(parts) if parts else torch.zeros(0, len(self.categories))

    def score(self, images, batch_size: int = 16, progress: Optional[ProgressFn] = None) -> CostResult:
        """Per-category costs ``a_k · raw_k + b_k`` of ``[B,H,W,C]`` 0..1 images (or a list)."""
        per_category = self.raw_logits(images, batch_size, progress) * self.scale + self.bias
        if not torch.isfinite(per_category).all():
            raise ScdpoError(f"{self.name} produced NaN/inf costs (broken weights or inputs); refusing to pass images")
        return make_result(per_category, self.categories, self.threshold)

    def weak_labels(self, images, batch_size: int = 16) -> list[Optional[str]]:
        """The top category of each image called unsafe, else None (safe)."""
        result = self.score(images, batch_size=batch_size)
        return [result.top_category(i) for i in range(len(result))]

    def calibrate(self, images, labels: Sequence[Optional[str]], steps: int = 200) -> dict:
        """Fit ``a_k, b_k`` per category by logistic regression on labelled images (``None`` = safe,
        else a category): images of category ``k`` are its positives, safe images its negatives.
        A category with no positive or no negative keeps ``a=1, b=0``. Returns ``{category: (a, b)}``."""
        raw = self.raw_logits(images).double()
        fitted = {}
        for k, cat in enumerate(self.categories):
            pos = [i for i, lab in enumerate(labels) if lab == cat]
            neg = [i for i, lab in enumerate(labels) if lab is None]
            if not pos or not neg:
                continue
            x = raw[pos + neg, k]
            y = torch.tensor([1.0] * len(pos) + [0.0] * len(neg), dtype=torch.float64)
            ab = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
            opt = torch.optim.LBFGS([ab], max_iter=steps, line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad()
                # a little L2 towards (1, 0) keeps a separable set from driving the scale to infinity
                loss = torch.nn.functional.binary_cross_entropy_with_logits(ab[0] * x + ab[1], y) \
                    + 1e-3 * ((ab[0] - 1) ** 2 + ab[1] ** 2)
                loss.backward()
                return loss

            opt.step(closure)
            a, b = (float(v) for v in ab.detach())
            self.scale[k], self.bias[k] = a, b
            fitted[cat] = (a, b)
        return fitted


def load_zero_shot_scorer(path: str | Path, device=None, dtype: Optional[torch.dtype] = None,
                          concepts: Optional[dict] = None) -> ZeroShotClipScorer:
    """A :class:`ZeroShotClipScorer` on the full CLIP model at ``path`` (refused in one line if the
    file lacks a tower or is not CLIP)."""
    return ZeroShotClipScorer(load_clip_model(path, device=device, dtype=dtype), concepts)
