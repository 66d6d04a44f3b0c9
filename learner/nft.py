"""DiffusionNFT mathematics for the artist: reward → optimality, the NFT loss, timesteps, old-policy decay.

Owns the pure-torch/numpy pieces of ALGORITHMS.md §1 that need no model: the mapping of raw rewards to
optimality probabilities r ∈ [0, 1] (§1.2), the x0-space loss with adaptive weighting, guidance strength β and
the KL term (§1.3), the choice of training timesteps from the sampler's own schedule (§1.4) and the soft-update
schedule of the sampling ("old") policy (§1.1). It must not load models, touch adapters or step optimizers;
``learner.artist_learner`` composes these pieces with the transformer.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

REWARD_STD_EPS = 1e-4
"""Added to the global reward std before dividing (as the reference stat tracker does)."""

MIN_WEIGHT_FACTOR = 1e-5
"""Floor of the adaptive weight mean|x̂0 − x0|, so an exact prediction never divides by zero."""


MIN_EDITS_PER_CRITIQUE_GROUP = 4
"""Smallest K at which ``group_by: auto`` normalises each critique's edits on their own."""


def normalisation_key(task_id: str, critique_index: int, group_by: str, edits_per_critique: int) -> tuple:
    """The group an edit's reward is normalised in: its photo, or its (photo, critique) pair.

    ``auto`` picks the pair when the critique has at least :data:`MIN_EDITS_PER_CRITIQUE_GROUP` edits and the
    photo otherwise: a mean over two edits leaves each advantage a coin flip between two noise draws.
    """
    if group_by == "auto":
        group_by = "critique" if edits_per_critique >= MIN_EDITS_PER_CRITIQUE_GROUP else "photo"
    if group_by == "photo":
        return (task_id,)
    if group_by == "critique":
        return (task_id, critique_index)
    raise ValueError(f"learner.artist.group_by {group_by!r}: expected auto, critique or photo")


def optimality_probabilities(rewards: Sequence[float] | np.ndarray, group_keys: Sequence[Hashable],
                             adv_clip_max: float = 5.0) -> np.ndarray:
    """Map raw rewards to optimality probabilities r = ½ + ½·clip((R − mean_group R) / (c·(σ_all + 1e-4)), −1, 1).

    The mean is taken per group key (one (photo, critique) or one photo); the std is the population std over
    *all* rewards passed in (the reference implementation's ``global_std``), so a group whose edits all score
    alike lands on r = ½ without blowing up. Returns float32 ``[n]``.
    """
    values = np.asarray(rewards, dtype=np.float64).reshape(-1)
    keys = list(group_keys)
    if len(keys) != values.size:
        raise ValueError(f"got {values.size} rewards but {len(keys)} group keys; give one key per reward")
    if values.size == 0:
        return np.zeros(0, dtype=np.float32)
    if not np.all(np.isfinite(values)):
        bad = int(np.sum(~np.isfinite(values)))
        raise ValueError(f"{bad} of {values.size} rewards are NaN or infinite; drop or repair those edits "
                         f"before the update")
    if adv_clip_max <= 0:
        raise ValueError(f"adv_clip_max must be positive, got {adv_clip_max}")
    group_mean = np.empty_like(values)
    for key in dict.fromkeys(keys):
        members = np.array([k == key for k in keys])
        group_mean[members] = values[members].mean()
    advantages = (values - group_mean) / (values.std() + REWARD_STD_EPS)
    clipped = np.clip(advantages, -adv_clip_max, adv_clip_max)
    return np.clip(clipped / adv_clip_max / 2.0 + 0.5, 0.0, 1.0).astype(np.float32)


def low_variance_groups(rewards: Sequence[float] | np.ndarray, group_keys: Sequence[Hashable],
                        std_threshold: float) -> np.ndarray:
    """bool ``[n]``: True for rewards whose group's population std is ≤ ``std_threshold`` (to be masked).

    A threshold of 0 masks nothing: zero-variance masking is opt-in (Edit-R1 uses 0.05).
    """
    values = np.asarray(rewards, dtype=np.float64).reshape(-1)
    keys = list(group_keys)
    masked = np.zeros(values.size, dtype=bool)
    if std_threshold <= 0:
        return masked
    for key in dict.fromkeys(keys):
        members = np.array([k == key for k in keys])
        masked[members] = values[members].std() <= std_threshold
    return masked


def old_policy_decay(step: int, decay_type: int) -> float:
    """Decay d of the soft update old ← d·old + (1 − d)·θ after ``step`` optimizer steps (ALGORITHMS.md §1.1).

    Type 0: d = 0 (the sampler is the trained policy); type 1: d = min(0.001·step, 0.5) (the default);
    type 2: d = 0 for the first 75 steps, then min(0.0075·(step − 75), 0.999).
    """
    if step < 0:
        raise ValueError(f"optimizer step count must be ≥ 0, got {step}")
    schedules = {0: (0, 0.0, 0.0), 1: (0, 0.001, 0.5), 2: (75, 0.0075, 0.999)}
    if decay_type not in schedules:
        raise ValueError(f"old-policy decay_type must be 0, 1 or 2, got {decay_type!r}")
    flat, uprate, uphold = schedules[decay_type]
    if step < flat:
        return 0.0
    return min((step - flat) * uprate, uphold)


def num_training_timesteps(num_schedule_points: int, timestep_fraction: float) -> int:
    """How many of the sampler's N schedule points each sample trains on: int(N·fraction), at least 1."""
    if num_schedule_points < 1:
        raise ValueError(f"the sampler schedule has {num_schedule_points} points; it needs at least one")
    return max(1, min(num_schedule_points, int(num_schedule_points * timestep_fraction)))


def select_training_timesteps(sigmas: torch.Tensor | np.ndarray, num_samples: int, timestep_fraction: float,
                              generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample random subsets of the sampler's schedule points, in random order: float64 ``[B, n_train]``.

    ``sigmas`` is the sampler's ``[N + 1]`` schedule from 1.0 down to the terminal 0, or a batch ``[B, N + 1]``
    of them; the terminal 0 is never a training point (x_t would equal x0). Each sample draws its own
    permutation, as the reference trainer does, so the N − 1 points it trains on differ between samples.
    """
    # A copy of an array (it may be a read-only buffer from the object store, which a tensor must not alias).
    schedule = sigmas.to(torch.float64) if torch.is_tensor(sigmas) else torch.tensor(np.asarray(sigmas),
                                                                                      dtype=torch.float64)
    if schedule.ndim == 1:
        schedule = schedule.unsqueeze(0).expand(num_samples, -1)
    if schedule.ndim != 2 or schedule.shape[0] != num_samples:
        raise ValueError(f"sigmas must be [N+1] or [{num_samples}, N+1], got shape {tuple(schedule.shape)}")
    points = schedule[:, :-1]
    if points.shape[1] < 1 or not torch.all(points > 0):
        raise ValueError("sigmas must list N ≥ 1 positive noise levels followed by the terminal 0")
    n_train = num_training_timesteps(points.shape[1], timestep_fraction)
    order = torch.stack([torch.randperm(points.shape[1], generator=generator)[:n_train]
                         for _ in range(num_samples)])
    return torch.gather(points, 1, order)


@dataclass(frozen=True, slots=True)
class NFTLossTerms:
    """The DiffusionNFT loss of one micro-batch at one timestep and its parts."""

    loss: torch.Tensor
    """Scalar: policy_loss + kl_coef · kl_loss (the tensor to backpropagate)."""
    policy_loss: torch.Tensor
    """Scalar: adv_clip_max · mean over samples of (r ℓ⁺ + (1 − r) ℓ⁻) / β."""
    kl_loss: torch.Tensor
    """Scalar: mean over samples of mean‖v_θ − v_ref‖² (before the coefficient)."""
    positive_loss: torch.Tensor
    """``[B]`` adaptively weighted x0 error ℓ⁺ of the implicit positive policy (detached)."""
    negative_loss: torch.Tensor
    """``[B]`` adaptively weighted x0 error ℓ⁻ of the implicit negative policy (detached)."""


class DiffusionNFTLoss:
    """DiffusionNFT's training objective in x0 space (ALGORITHMS.md §1.3).

    With the implicit policies v⁺ = β·v_θ + (1 − β)·v_old and v⁻ = (1 + β)·v_old − β·v_θ and the x0 errors
    e± = (x_t − t·v±) − x0, each sample contributes ℓ± = mean(e±²) / sg(mean|e±|) (the adaptive weight is the
    per-sample L1 norm of the error, without gradient), and

        L = adv_clip_max · mean_b[(r·ℓ⁺ + (1 − r)·ℓ⁻) / β] + kl_coef · mean_b mean‖v_θ − v_ref‖².

    r = 1 pulls the positive policy onto the sample; r = 0 pulls the negative policy onto it, i.e. pushes v_θ
    away from it; r = ½ balances both.
    """

    def __init__(self, beta: float = 1.0, adv_clip_max: float = 5.0, kl_coef: float = 1e-4):
        if beta <= 0:
            raise ValueError(f"NFT guidance strength beta must be positive, got {beta}")
        if adv_clip_max <= 0:
            raise ValueError(f"adv_clip_max must be positive, got {adv_clip_max}")
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be ≥ 0, got {kl_coef}")
        self.beta = beta
        self.adv_clip_max = adv_clip_max
        self.kl_coef = kl_coef

    def __call__(self, *, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, v_theta: torch.Tensor,
                 v_old: torch.Tensor, optimality: torch.Tensor, v_ref: torch.Tensor | None = None) -> NFTLossTerms:
        """Loss terms for clean latents ``x0``, their noised ``xt`` at noise level ``t`` ``[B]`` and velocities.

        ``v_old`` and ``v_ref`` are treated as constants (detached here as well); ``v_ref`` may be omitted when
        ``kl_coef`` is 0. ``optimality`` is r ``[B]`` in [0, 1].
        """
        if not (x0.shape == xt.shape == v_theta.shape == v_old.shape):
            raise ValueError(f"x0 {tuple(x0.shape)}, xt {tuple(xt.shape)}, v_theta {tuple(v_theta.shape)} and "
                             f"v_old {tuple(v_old.shape)} must have the same shape")
        batch = x0.shape[0]
        if t.shape != (batch,) or optimality.shape != (batch,):
            raise ValueError(f"t {tuple(t.shape)} and optimality {tuple(optimality.shape)} must be [{batch}]")
        if v_ref is None and self.kl_coef > 0:
            raise ValueError("v_ref (the adapter-free prediction) is required when kl_coef > 0")
        # Losses are accumulated in float32 even when the transformer runs in bf16.
        x0, xt, v_theta = x0.float(), xt.float(), v_theta.float()
        v_old = v_old.detach().float()
        t_b = t.float().reshape(batch, *([1] * (x0.ndim - 1)))
        r = optimality.float()
        reduce_dims = tuple(range(1, x0.ndim))

        v_positive = self.beta * v_theta + (1.0 - self.beta) * v_old
        v_negative = (1.0 + self.beta) * v_old - self.beta * v_theta
        positive_loss = self._weighted_x0_error(xt - t_b * v_positive, x0, reduce_dims)
        negative_loss = self._weighted_x0_error(xt - t_b * v_negative, x0, reduce_dims)
        per_sample = (r * positive_loss + (1.0 - r) * negative_loss) / self.beta
        policy_loss = self.adv_clip_max * per_sample.mean()

        if v_ref is not None:
            kl_loss = ((v_theta - v_ref.detach().float()) ** 2).mean(dim=reduce_dims).mean()
        else:
            kl_loss = torch.zeros((), dtype=policy_loss.dtype, device=policy_loss.device)
        loss = policy_loss + self.kl_coef * kl_loss
        return NFTLossTerms(loss=loss, policy_loss=policy_loss, kl_loss=kl_loss,
                            positive_loss=positive_loss.detach(), negative_loss=negative_loss.detach())

    @staticmethod
    def _weighted_x0_error(x0_prediction: torch.Tensor, x0: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        error = x0_prediction - x0
        with torch.no_grad():
            # Self-normalising weight: an error's scale (which varies strongly with t) no longer sets its
            # share of the gradient. Computed in float64 as the reference does, then held constant.
            weight = error.double().abs().mean(dim=dims, keepdim=True).clamp(min=MIN_WEIGHT_FACTOR)
        return (error ** 2 / weight.to(error.dtype)).mean(dim=dims)
