"""One DPO forward on a batch of pairs: the part the trainer and the benchmark share.

The policy is the UNet with the training LoRA active; the reference is *the same UNet* with its
adapters disabled (peft), never a second copy. Winners and losers go through one batched forward
``[winners; losers]`` (2B samples) with shared noise ``ε`` and timestep ``t`` per pair.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Sequence

import torch

from ..errors import ScdpoError
from ..pipeline import Conditioning, TextToImageModel
from .inputs import NEAR_MISS_PAIR, shift_columns, sideways_moves
from .loss import ScDpoDiagnostics, denoising_error, sc_dpo_loss
from .pairs import PairBatch

if TYPE_CHECKING:  # pragma: no cover
    from .adversarial import UniversalAttack
    from .inputs import EncodedPairBatch, EncodedPairs

TRAIN_ADAPTER = "scdpo_train"

# (noisy latents [N,c,h,w], timesteps [N], conditioning) -> predicted ε (or v) [N,c,h,w]
UNetCall = Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]


def attach_training_lora(unet: torch.nn.Module, rank: int, alpha: float, target_modules: Sequence[str],
                         seed: int = 0, adapter_name: str = TRAIN_ADAPTER) -> list[torch.nn.Parameter]:
    """Freeze ``unet`` and add a fresh peft LoRA (A: seeded Kaiming init, B: zeros, so the policy
    starts equal to the reference). Returns its trainable parameters, kept in float32."""
    from peft import LoraConfig

    if getattr(unet, "peft_config", None):
        raise ValueError(
            f"the UNet already carries adapters {sorted(unet.peft_config)}; remove them before training "
            "(the reference model is the UNet with every adapter disabled)"
        )
    unet.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(target_modules), init_lora_weights=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            unet.add_adapter(config, adapter_name=adapter_name)
        except ValueError as exc:
            raise ScdpoError(
                f"LoRA target modules {list(target_modules)} do not match this UNet ({exc}); "
                "use names such as to_q,to_k,to_v,to_out.0,proj_in,proj_out,ff.net.0.proj,ff.net.2"
            ) from None
    params = list(lora_named_parameters(unet, adapter_name).values())
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    return params


def lora_named_parameters(unet: torch.nn.Module, adapter_name: str = TRAIN_ADAPTER) -> dict[str, torch.nn.Parameter]:
    """Training-adapter parameters by their name in ``unet`` (checkpoint keys)."""
    return {n: p for n, p in unet.named_parameters() if ".lora_" in n and n.split(".")[-2] == adapter_name}


class AdapterSwitch:
    """Turns every peft adapter of a UNet off and on again, cheaply enough to do twice a step.

    The layers are found once. Inside :meth:`disabled` each layer's ``disable_adapters`` flag is
    set (peft's ``BaseTunerLayer._disable_adapters``, which its ``forward`` reads). Going through
    ``unet.disable_adapters()`` instead walks every module and toggles ``requires_grad`` each
    time, which at two switches a step is a noticeable share of a toy training step
    (docs/results.md §6, "Measurements behind code defaults").
    Falls back to peft's public ``enable_adapters`` on layers without the flag.
    """

    def __init__(self, unet: torch.nn.Module):
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
        if not self.layers:
            raise ValueError("the UNet has no peft adapter to disable")

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        fast = [layer for layer in self.layers if hasattr(layer, "_disable_adapters")]
        slow = [layer for layer in self.layers if not hasattr(layer, "_disable_adapters")]
        previous = [layer._disable_adapters for layer in fast]
        for layer in fast:
            layer._disable_adapters = True
        for layer in slow:  # pragma: no cover - older / other peft layer types
            layer.enable_adapters(False)
        try:
            yield
        finally:
            for layer, prev in zip(fast, previous):
                layer._disable_adapters = prev
            for layer in slow:  # pragma: no cover
                layer.enable_adapters(True)


@contextlib.contextmanager
def adapters_disabled(unet: torch.nn.Module) -> Iterator[None]:
    """Run the base UNet: every peft adapter off inside the block, back on after it."""
    with AdapterSwitch(unet).disabled():
        yield


def base_weight_dtype(unet: torch.nn.Module) -> torch.dtype:
    """The dtype of the frozen base weights (the first parameter that is not a LoRA's)."""
    return next(p.dtype for n, p in unet.named_parameters() if ".lora_" not in n)


def unet_call(unet: torch.nn.Module) -> UNetCall:
    """``unet`` as a :data:`UNetCall`; inputs are cast to the base weights' dtype (a bf16 base gets bf16
    latents and embeddings; the LoRA layers compute in their own fp32)."""
    dtype = base_weight_dtype(unet)

    def call(noisy: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return unet(noisy.to(dtype), timesteps, **cond.to(dtype=dtype).unet_kwargs(), return_dict=False)[0]

    return call


def disabled_adapter_reference(unet: torch.nn.Module) -> UNetCall:
    """The reference model of our trainer: ``unet`` itself with its adapters disabled, no grad."""
    base, switch = unet_call(unet), AdapterSwitch(unet)

    def call(noisy: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        with torch.no_grad(), switch.disabled():
            return base(noisy, timesteps, cond)

    return call


def _attack_shifts(model: TextToImageModel, policy: UNetCall, batch: "EncodedPairBatch", losers: torch.Tensor,
                   noise: torch.Tensor, timesteps: torch.Tensor, drop: Sequence[bool], generator: torch.Generator,
                   share: float, steps: int, budget: float, device, universal: Optional["UniversalAttack"] = None
                   ) -> Optional[tuple[torch.Tensor, Conditioning, torch.Tensor]]:
    """The picked harmful pairs (indices on ``device``), their safe rewrites' conditioning and the attack
    shift of each (optimised per pair, or the category's shift of ``universal`` refined on them); None when
    no pair is picked."""
    from .adversarial import adversarial_rows, attack_conditioning

    pick, eta = adversarial_rows(batch.category_rows, batch.safe_rows, drop, generator, share, budget)
    if not bool(pick.any()):
        return None
    idx = pick.nonzero().squeeze(1)
    inputs = batch.inputs
    rewrite = model.conditioning_for_size(inputs.cond.index(batch.safe_rows[idx]), inputs.height, inputs.width)
    rewrite = rewrite.to(device)
    scheduler = model.noise_scheduler
    idx_d = idx.to(device)
    noisy = scheduler.add_noise(losers[idx_d], noise[idx_d], timesteps[idx_d])
    target = model.training_target(losers[idx_d], noise[idx_d], timesteps[idx_d])
    if universal is not None:
        delta = universal.attack(policy, rewrite, noisy, timesteps[idx_d], target, batch.category_rows[idx])
    else:
        directions = inputs.concept_directions()["hidden"][batch.category_rows[idx]].to(device)  # [n, L, D]
        radius = budget * directions.flatten(1).norm(dim=1)
        start = eta[idx].to(device).view(-1, 1, 1) * directions
        delta = attack_conditioning(policy, rewrite, noisy, timesteps[idx_d], target, start, radius, steps)
    return idx_d, rewrite, delta


# t of a fresh attack's draws, as fractions of the training timesteps: those of the evaluation's
# soft-prompt attack (``SoftPromptConfig.timesteps``), where the concept is decided
REFRESH_TIMESTEPS = (0.3, 1.0)


def refresh_draws(model: TextToImageModel, inputs: "EncodedPairs", generator: torch.Generator, steps: int,
                  per_category: int, device) -> Iterator[tuple[Conditioning, torch.Tensor, torch.Tensor, torch.Tensor,
                                                              torch.Tensor]]:
    """``steps`` batches for :meth:`.adversarial.UniversalAttack.refresh`: each holds ``per_category``
    harmful pairs of every category (drawn with replacement from those carrying a safe rewrite) as
    ``(safe rewrites' conditioning, noisy losers, t, targets, categories)``, with ``t`` in
    :data:`REFRESH_TIMESTEPS` and fresh noise. All draws come from ``generator``."""
    pools = [((inputs.pair_category == k) & (inputs.pair_safe_prompt >= 0)).nonzero().squeeze(1)
             for k in range(len(inputs.categories))]
    pools = [(k, pool) for k, pool in enumerate(pools) if pool.numel()]
    if not pools:
        return
    scheduler = model.noise_scheduler
    total = scheduler.config.num_train_timesteps
    lo = int(REFRESH_TIMESTEPS[0] * total)
    hi = max(lo + 1, int(REFRESH_TIMESTEPS[1] * total))
    for _ in range(steps):
        pos = torch.cat([pool[torch.randint(len(pool), (per_category,), generator=generator)] for _, pool in pools])
        cats = torch.cat([torch.full((per_category,), k, dtype=torch.long) for k, _ in pools])
        losers = inputs.latents[pos][:, 1].to(device)
        noise = torch.randn(losers.shape, generator=generator).to(device, losers.dtype)
        t = torch.randint(lo, hi, (len(pos),), generator=generator).to(device)
        cond = model.conditioning_for_size(inputs.cond.index(inputs.pair_safe_prompt[pos]), inputs.height,
                                           inputs.width).to(device)
        yield cond, scheduler.add_noise(losers, noise, t), t, model.training_target(losers, noise, t), cats


def _shifted(rewrite: Conditioning, delta: torch.Tensor) -> Conditioning:
    return Conditioning((rewrite.hidden.float() + delta).to(rewrite.hidden.dtype), rewrite.added)


def _replace_rows(cond: Conditioning, idx: torch.Tensor, rows: Conditioning) -> Conditioning:
    """``cond`` with rows ``idx`` replaced by ``rows``."""
    hidden = cond.hidden.clone()
    hidden[idx] = rows.hidden.to(hidden.dtype)
    added = {}
    for key, value in cond.added.items():
        value = value.clone()
        value[idx] = rows.added[key].to(value.dtype)
        added[key] = value
    return Conditioning(hidden, added)


def dpo_batch_loss(
    model: TextToImageModel,
    policy: UNetCall,
    reference: UNetCall,
    batch: PairBatch | EncodedPairBatch,
    generator: torch.Generator,
    beta: float,
    lam: float,
    gamma: float,
    prompt_dropout: float = 0.0,
    device: Optional[torch.device] = None,
    concept_augment: float = 0.0,
    concept_scale: float = 2.0,
    adversarial_share: float = 0.0,
    adversarial_steps: int = 3,
    adversarial_budget: float = 2.0,
    winner_anchor: float = 0.0,
    shift_augment: float = 0.0,
    shift_fraction: float = 0.25,
    universal_attack: Optional["UniversalAttack"] = None,
    adversarial_objective: str = "preference",
    erase_weight: float = 0.0,
    erase_guidance: float = 0.0,
    preserve_weight: float = 0.0,
    erase_shift: float = 0.0,
    preserve_shift: float = 0.0,
    preserve_shift_pairs: str = "all",
) -> tuple[torch.Tensor, ScDpoDiagnostics]:
    """Mean SC-DPO loss of ``batch`` (scalar, differentiable w.r.t. the policy) and diagnostics.

    Every random draw (prompt dropout, ε ``[B,c,h,w]``, t ``[B]``) comes from ``generator`` on the
    CPU, so a step is reproducible on any device. ``batch``: images and prompts (encoded here by
    ``model``'s VAE and text encoders) or inputs encoded once before training
    (:class:`~scdpo.dpo.inputs.EncodedPairBatch`). ``model`` provides the noise scheduler;
    ``policy`` / ``reference`` are the two UNet calls. ``concept_augment`` > 0 (encoded batches only):
    that share of harmful pairs trains under a prompt embedding pushed along its category's concept
    direction by up to ``concept_scale`` (:meth:`~scdpo.dpo.inputs.EncodedPairBatch.augment`).
    ``adversarial_share`` > 0 (encoded batches only): that share of harmful pairs trains on its safe
    rewrite under an embedding shift optimised against the current policy in ``adversarial_steps``
    projected steps within ``adversarial_budget`` concept-direction norms (:mod:`.adversarial`).
    ``shift_augment`` > 0 (encoded batches only): that share of harmful pairs trains with winner and
    loser moved sideways together by up to ``shift_fraction`` of the width
    (:meth:`~scdpo.dpo.inputs.EncodedPairBatch.shift_sideways`). ``erase_weight`` > 0 (encoded batches
    only): :func:`erasure_error` of the harmful pairs' losers is added, weighted ``erase_weight · β/2``;
    ``preserve_weight`` > 0: :func:`preservation_error` of the other pairs' winners, weighted
    ``preserve_weight · β/2``. ``erase_shift`` > 0 (with ``erase_weight``): :func:`shifted_erasure_error`
    is added with the same weight, the erasure target asked once more with each loser moved sideways
    by up to that share of the width; ``preserve_shift`` > 0 (with ``preserve_weight``):
    :func:`shifted_preservation_error` likewise, on every clean and look-alike pair or, with
    ``preserve_shift_pairs="look-alikes"``, on the look-alike pairs only.
    """
    device = device or model.device
    b = len(batch)
    drop = (torch.rand(b, generator=generator) < prompt_dropout).tolist() if prompt_dropout > 0 else [False] * b
    latents, cond = batch.encode(model, drop, device)
    scheduler = model.noise_scheduler
    noise = torch.randn((b, *latents.shape[1:]), generator=generator).to(device, latents.dtype)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator).to(device)
    if concept_augment > 0:
        if not hasattr(batch, "augment"):
            raise ScdpoError("concept augmentation needs inputs encoded before training (--cache-inputs)")
        cond = batch.augment(cond, drop, generator, concept_augment, concept_scale)
    if shift_augment > 0:
        if not hasattr(batch, "shift_sideways"):
            raise ScdpoError("shift augmentation needs inputs encoded before training (--cache-inputs)")
        latents = batch.shift_sideways(latents, generator, shift_augment, shift_fraction)
    attacked = None
    if adversarial_share > 0:
        if not hasattr(batch, "augment"):
            raise ScdpoError("adversarial training needs inputs encoded before training (--cache-inputs)")
        attacked = _attack_shifts(model, policy, batch, latents[b:], noise, timesteps, drop, generator,
                                  adversarial_share, adversarial_steps, adversarial_budget, device, universal_attack)
        if attacked is not None and adversarial_objective == "preference":
            idx, rewrite, delta = attacked
            cond = _replace_rows(cond, idx, _shifted(rewrite, delta))
    noise2, timesteps2, cond2 = torch.cat([noise, noise]), torch.cat([timesteps, timesteps]), cond.cat(cond)
    noisy = scheduler.add_noise(latents, noise2, timesteps2)
    target = model.training_target(latents, noise2, timesteps2)
    ref_pred = reference(noisy, timesteps2, cond2)
    pred = policy(noisy, timesteps2, cond2)
    ref_err, err = denoising_error(ref_pred, target), denoising_error(pred, target)
    loss, diagnostics = sc_dpo_loss(
        err[:b], err[b:], ref_err[:b], ref_err[b:],
        batch.winner_cost.to(device), batch.loser_cost.to(device), beta, lam, gamma, winner_anchor,
    )
    erased: list[torch.Tensor] = []  # the erasure target's per-sample errors, for the log
    if erase_weight > 0:
        if not hasattr(batch, "safe_rows"):
            raise ScdpoError("the erasure target needs inputs encoded before training (--cache-inputs)")
        safe_pred = safe_rewrite_predictions(model, reference, batch, noisy[b:], timesteps, device)
        erase = erasure_error(model, reference, batch, noisy[b:], timesteps, pred[b:], ref_pred[b:], erase_guidance,
                              device, safe_pred=safe_pred)
        loss = loss + erase_weight * 0.5 * beta * erase
        erased.append(erase[batch.with_rewrite.to(erase.device)])
        if erase_shift > 0:
            moved = shifted_erasure_error(policy, batch, noisy[b:], timesteps, cond, safe_pred, ref_pred[b:],
                                          erase_guidance, generator, erase_shift)
            loss = loss + erase_weight * 0.5 * beta * moved
            erased.append(moved[batch.with_rewrite.to(moved.device)])
    if attacked is not None and adversarial_objective == "erasure":  # erase_weight > 0: the config checks it
        idx, rewrite, delta = attacked
        noisy_l, t = noisy[b:][idx], timesteps[idx]
        under_attack = _shifted(rewrite, delta.detach())
        pred_attacked = policy(noisy_l, t, under_attack)
        ref_attacked = reference(noisy_l, t, under_attack) if erase_guidance > 0 else None
        # the attacked pairs are harmful pairs with a rewrite: their safe prediction is already there
        err_attacked = _erasure_mse(pred_attacked, safe_pred[idx], ref_attacked, erase_guidance)
        loss = loss.index_add(0, idx, erase_weight * 0.5 * beta * err_attacked)
        erased.append(err_attacked)
    if preserve_weight > 0:
        kept = preservation_error(batch, pred[:b], ref_pred[:b])
        loss = loss + preserve_weight * 0.5 * beta * kept
        keep = (batch.category_rows < 0).to(kept.device)
        logged = [kept[keep]]
        if preserve_shift > 0:
            only = preserve_shift_pairs == "look-alikes"
            moved = shifted_preservation_error(policy, reference, batch, noisy[:b], timesteps, cond, generator,
                                               preserve_shift, look_alikes_only=only)
            loss = loss + preserve_weight * 0.5 * beta * moved
            logged.append(moved[moved_preservation_rows(batch, only).to(moved.device)])
        diagnostics.preservation_error = float(torch.cat(logged).detach().mean()) if bool(keep.any()) else 0.0
    erased = [e for e in erased if e.numel()]
    if erased:
        diagnostics.erasure_error = float(torch.cat(erased).detach().mean())
    return loss.mean(), diagnostics


def preservation_error(batch: PairBatch | EncodedPairBatch, pred_winners: torch.Tensor,
                       ref_pred_winners: torch.Tensor) -> torch.Tensor:
    """Per pair ``[B]``: ``‖ε_θ(x_t^w, c) − ε_ref(x_t^w, c)‖²`` (mean over C,H,W) on clean and look-alike pairs,
    0 on harmful ones: the LoRA predicts what the base model predicts where nothing is to be removed (the
    utility term of ESD-style erasure), so what the erasure term teaches stays with the concept."""
    keep = (batch.category_rows < 0).to(pred_winners.device)
    err = (pred_winners.float() - ref_pred_winners.detach().float()).pow(2).flatten(1).mean(1)
    return torch.where(keep, err, torch.zeros_like(err))


def safe_rewrite_predictions(model: TextToImageModel, reference: UNetCall, batch: "EncodedPairBatch",
                             noisy_losers: torch.Tensor, timesteps: torch.Tensor, device) -> torch.Tensor:
    """``ε_ref(x_t^l, safe rewrite)`` ``[B, ...]`` (float32) of the harmful pairs with a safe rewrite, in one
    reference forward of just those rows; 0 in the other rows."""
    out = torch.zeros(noisy_losers.shape, device=noisy_losers.device, dtype=torch.float32)
    pick = batch.with_rewrite
    if not bool(pick.any()):
        return out
    idx = pick.nonzero().squeeze(1)
    inputs = batch.inputs
    rewrite = model.conditioning_for_size(inputs.cond.index(batch.safe_rows[idx]), inputs.height, inputs.width)
    idx_d = idx.to(noisy_losers.device)
    out[idx_d] = reference(noisy_losers[idx_d], timesteps[idx_d], rewrite.to(device)).float()
    return out


def erasure_error(model: TextToImageModel, reference: UNetCall, batch: "EncodedPairBatch", noisy_losers: torch.Tensor,
                  timesteps: torch.Tensor, pred_losers: torch.Tensor, ref_pred_losers: torch.Tensor,
                  guidance: float, device, safe_pred: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per pair ``[B]``: ``‖ε_θ(x_t^l, c) − target‖²`` (mean over C,H,W) on harmful pairs with a safe rewrite,
    0 elsewhere. ``x_t^l`` is the noisy loser (the concept on its way in), ``c`` the conditioning the pair
    trains under (its prompt, pushed or attacked included) and ``target = ε_ref(x_t^l, safe rewrite) −
    guidance · (ε_ref(x_t^l, c) − ε_ref(x_t^l, safe rewrite))``: what the base model does at that point
    when the concept is not asked for, moved further from it by ``guidance`` (ESD's negative guidance,
    Gandikota et al. 2023). Under an attacked ``c`` this is AdvUnlearn's objective (Zhang et al. 2024).
    The preference term only asks the loser to become less likely, which a LoRA may satisfy by fading
    the concept; this term says which image to draw instead, at the noisy states where the concept
    appears, and it has a gradient whether the pair is ranked or not. ``safe_pred``: the
    :func:`safe_rewrite_predictions` of these losers, when the caller has them already."""
    out = torch.zeros(pred_losers.shape[0], device=pred_losers.device, dtype=torch.float32)
    pick = batch.with_rewrite
    if not bool(pick.any()):
        return out
    if safe_pred is None:
        safe_pred = safe_rewrite_predictions(model, reference, batch, noisy_losers, timesteps, device)
    idx_d = pick.nonzero().squeeze(1).to(pred_losers.device)
    return out.index_put((idx_d,), _erasure_mse(pred_losers[idx_d], safe_pred[idx_d], ref_pred_losers[idx_d], guidance))


def shifted_erasure_error(policy: UNetCall, batch: "EncodedPairBatch", noisy_losers: torch.Tensor,
                          timesteps: torch.Tensor, cond: Conditioning, safe_pred: torch.Tensor,
                          ref_pred_losers: torch.Tensor, guidance: float, generator: torch.Generator,
                          fraction: float) -> torch.Tensor:
    """Per pair ``[B]``: the :func:`erasure_error` of each harmful pair with a rewrite once more, with its
    noisy loser and its target both moved sideways (:func:`_moved_error`); 0 elsewhere.

    Training captions draw a harmful thing where their one caption shape puts it, and a LoRA that
    erases it only there leaves it wherever another shape of caption draws it (a thing named first,
    a thing alone). Moving the noisy state and the target together asks the same thing at another
    place: where the concept appears *there*, predict what the base model predicts for the safe rewrite,
    moved with it (the prediction of noise or v is linear in the image, so the moved target is the same
    safe image at the other place, the clean object staying where the state has it). One more policy
    forward of these rows; no reference forward. Draws ``2B`` numbers from ``generator``.
    """
    target = _erasure_target(safe_pred, ref_pred_losers, guidance)
    return _moved_error(policy, batch.with_rewrite, noisy_losers, timesteps, cond, generator, fraction, target=target)


def shifted_preservation_error(policy: UNetCall, reference: UNetCall, batch: "EncodedPairBatch",
                               noisy_winners: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning,
                               generator: torch.Generator, fraction: float,
                               look_alikes_only: bool = False) -> torch.Tensor:
    """Per pair ``[B]``: :func:`preservation_error` of the clean and look-alike pairs (``look_alikes_only``: the
    look-alike pairs alone) once more at their noisy winner moved sideways (:func:`_moved_error`): the
    LoRA's prediction there is kept equal to the reference's *at the moved state* (the preservation
    term asks for the base model's behaviour everywhere; the base model's own prediction there, not the
    moved one, is that). 0 on harmful pairs.
    The counterpart of :func:`shifted_erasure_error`, for look-alikes drawn where training captions
    never draw them. One more policy and one more reference forward of these rows. Draws ``2B`` numbers
    from ``generator``."""
    return _moved_error(policy, moved_preservation_rows(batch, look_alikes_only), noisy_winners, timesteps, cond,
                        generator, fraction, reference=reference)


def moved_preservation_rows(batch: PairBatch | EncodedPairBatch, look_alikes_only: bool = False) -> torch.Tensor:
    """``[B]`` bool: the pairs :func:`shifted_preservation_error` asks, every clean and look-alike pair or
    the look-alike pairs alone."""
    rows = batch.category_rows
    return rows == NEAR_MISS_PAIR if look_alikes_only else rows < 0


def _moved_error(policy: UNetCall, pick: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor,
                 cond: Conditioning, generator: torch.Generator, fraction: float,
                 target: Optional[torch.Tensor] = None, reference: Optional[UNetCall] = None) -> torch.Tensor:
    """``[B]``: ``‖ε_θ(S_k x_t, c) − goal‖²`` (mean over C,H,W) on the rows ``pick``, 0 elsewhere, where ``goal``
    is ``S_k target`` or, with ``reference``, ``ε_ref(S_k x_t, c)``. ``S_k`` moves ``k`` latent columns sideways,
    ``1 <= |k| <= max(1, round(fraction · w))`` with a random sign (:func:`~scdpo.dpo.inputs.sideways_moves`),
    the edge column repeated into the gap. Draws ``2B`` numbers from
    ``generator`` whatever is picked."""
    b = noisy.shape[0]
    moves = sideways_moves(b, noisy.shape[-1], fraction, generator)
    out = torch.zeros(b, device=noisy.device, dtype=torch.float32)
    if not bool(pick.any()):
        return out
    rows = pick.nonzero().squeeze(1).tolist()
    idx_d = torch.tensor(rows, device=noisy.device)

    def moved(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([shift_columns(x[i], moves[i]) for i in rows])

    x, t, c = moved(noisy), timesteps[idx_d], cond.index(idx_d)
    pred = policy(x, t, c)
    goal = reference(x, t, c) if reference is not None else moved(target)
    return out.index_put((idx_d,), (pred.float() - goal.detach().float()).pow(2).flatten(1).mean(1))


def _erasure_mse(pred: torch.Tensor, safe_pred: torch.Tensor, ref_pred: Optional[torch.Tensor],
                 guidance: float) -> torch.Tensor:
    """``‖pred − target‖²`` per sample (float32, mean over C,H,W), the target of :func:`_erasure_target`."""
    return (pred.float() - _erasure_target(safe_pred, ref_pred, guidance)).pow(2).flatten(1).mean(1)


def _erasure_target(safe_pred: torch.Tensor, ref_pred: Optional[torch.Tensor], guidance: float) -> torch.Tensor:
    """``safe_pred − guidance · (ref_pred − safe_pred)`` (float32, detached): the base model's prediction for the
    safe rewrite, moved further from the concept by ``guidance``."""
    target = safe_pred.detach().float()
    if guidance > 0:
        target = target - guidance * (ref_pred.detach().float() - target)
    return target
