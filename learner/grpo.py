"""GRPO for the critic, in pure torch: advantages, reward shaping, the clipped policy loss, k3 KL, entropy.

Owns the math of ALGORITHMS.md §2 (verl's GRPO with the DAPO options): group-normalised outcome advantages,
the PPO ratio loss with separate low/high clip and the dual clip for negative advantages, the four loss
aggregation modes, the k3 ("low_var_kl") penalty to a reference policy, token entropy, DAPO's overlong
shaping and zero-variance group filtering, and the rollout/learner log-prob agreement metric.
It must not load models, tokenise or touch Ray: the critic learner feeds it log-prob tensors and masks.
Everything here runs on CPU in unit tests.

Shapes: ``B`` sequences, ``T`` response positions (right-padded), ``response_mask`` is 1 on real tokens.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

LossAggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]

LOG_RATIO_CLAMP = 20.0
"""|log π − log π_old| is clamped here before exp, so one wild token cannot overflow the ratio (verl)."""
K3_CLAMP = 10.0
"""The k3 KL per token is clamped to ±10 (verl's low_var_kl)."""


# ----------------------------------------------------------------------------------------------- rewards


def grpo_advantages(
    rewards: Sequence[float] | np.ndarray,
    group_ids: Sequence[Hashable],
    *,
    norm_by_std: bool = True,
    epsilon: float = 1e-6,
) -> np.ndarray:
    """Group-normalised outcome advantages A_i = (r_i − mean_g r) / (std_g r + ε), float32 ``[N]``.

    ``std_g`` is the unbiased (N−1) standard deviation of the group, as verl computes it; with
    ``norm_by_std=False`` the result is only centred (Dr.GRPO). A group of a single response has no baseline
    to compare against, so its advantage is 0 (verl would instead pass the raw reward through, a signal whose
    sign depends on the reward's offset rather than on the response's relative quality).
    """
    values = np.asarray(rewards, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"grpo_advantages: rewards must be 1-D, got shape {values.shape}")
    if len(group_ids) != len(values):
        raise ValueError(f"grpo_advantages: {len(values)} rewards but {len(group_ids)} group ids")
    if not np.all(np.isfinite(values)):
        bad = [i for i, v in enumerate(values) if not np.isfinite(v)]
        raise ValueError(f"grpo_advantages: non-finite reward at positions {bad[:5]}")
    advantages = np.zeros_like(values)
    for members in _group_members(group_ids).values():
        if len(members) < 2:
            continue
        group = values[members]
        centred = group - group.mean()
        advantages[members] = centred / (group.std(ddof=1) + epsilon) if norm_by_std else centred
    return advantages.astype(np.float32)


def zero_variance_groups(rewards: Sequence[float] | np.ndarray, group_ids: Sequence[Hashable]) -> set[Hashable]:
    """Groups (of ≥ 2 responses) whose rewards are all equal: they carry no GRPO signal (DAPO filter)."""
    values = np.asarray(rewards, dtype=np.float64)
    return {gid for gid, members in _group_members(group_ids).items()
            if len(members) > 1 and np.ptp(values[members]) == 0.0}


def overlong_penalty(
    response_lengths: Sequence[int] | np.ndarray, *, max_length: int, buffer: int, penalty: float = 1.0
) -> np.ndarray:
    """DAPO overlong shaping, float32 ``[N]`` to add to rewards: 0 up to ``max_length − buffer``, then linear
    down to ``−penalty`` at ``max_length`` (and no lower). ``buffer == 0`` turns it off (all zeros)."""
    lengths = np.asarray(response_lengths, dtype=np.float64)
    if buffer <= 0:
        return np.zeros_like(lengths, dtype=np.float32)
    if buffer > max_length:
        raise ValueError(f"overlong buffer {buffer} exceeds max_length {max_length}")
    exceed = lengths - (max_length - buffer)
    shaped = np.minimum(-exceed / buffer * penalty, 0.0)
    return np.maximum(shaped, -penalty).astype(np.float32)


def _group_members(group_ids: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    members: dict[Hashable, list[int]] = {}
    for position, gid in enumerate(group_ids):
        members.setdefault(gid, []).append(position)
    return members


# ------------------------------------------------------------------------------------- token quantities


def token_log_probs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[tokens], ``[B, T]`` in float32, without materialising the full log-softmax."""
    logits = logits.float()
    picked = torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position, ``[B, T]`` in float32 (nats)."""
    logits = logits.float()
    log_z = torch.logsumexp(logits, dim=-1)
    probs = torch.softmax(logits, dim=-1)
    return log_z - (probs * logits).sum(dim=-1)


def k3_kl(log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(π ‖ π_ref) on samples from π: e^{Δ} − Δ − 1 with Δ = log π_ref − log π.

    Δ is clamped to ±20 and the result to ±10, as verl's ``low_var_kl``; the estimate is never negative
    before clamping, and exactly 0 where the two policies agree.
    """
    delta = torch.clamp(ref_log_probs - log_probs, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.clamp(torch.exp(delta) - delta - 1.0, -K3_CLAMP, K3_CLAMP)


def agg_loss(
    values: torch.Tensor,
    mask: torch.Tensor,
    mode: LossAggMode,
    *,
    num_tokens: float | None = None,
    num_sequences: float | None = None,
    loss_scale_factor: float | None = None,
) -> torch.Tensor:
    """Reduce per-token ``values [B, T]`` under ``mask`` to a scalar.

    - ``token-mean``: Σ mask·v / number of valid tokens — every token weighs the same, so long responses
      weigh more than short ones.
    - ``seq-mean-token-mean``: mean over sequences of each sequence's token mean (original GRPO).
    - ``seq-mean-token-sum``: mean over sequences of each sequence's token sum.
    - ``seq-mean-token-sum-norm``: Σ mask·v / (``loss_scale_factor`` · sequences) (Dr.GRPO; the factor
      defaults to T, the padded response length).

    ``num_tokens``/``num_sequences`` are the counts of the whole mini-batch when it is split into micro-batches:
    summing the micro-batch results then gives exactly the mini-batch reduction. They default to this call's
    own counts.
    """
    mask = mask.to(values.dtype)
    if mode == "token-mean":
        denominator = mask.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=values.dtype)
        return (values * mask).sum() / denominator.clamp(min=1.0)
    sequences = float(values.shape[0]) if num_sequences is None else float(num_sequences)
    sequences = max(sequences, 1.0)
    valid_sequences = mask.sum(dim=-1) > 0
    if mode == "seq-mean-token-mean":
        per_sequence = (values * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)
        return (per_sequence * valid_sequences).sum() / sequences
    if mode == "seq-mean-token-sum":
        return (values * mask).sum() / sequences
    if mode == "seq-mean-token-sum-norm":
        scale = float(values.shape[-1]) if loss_scale_factor is None else float(loss_scale_factor)
        return (values * mask).sum() / (scale * sequences)
    raise ValueError(f"unknown loss_agg_mode {mode!r}; use one of token-mean, seq-mean-token-mean, "
                     f"seq-mean-token-sum, seq-mean-token-sum-norm")


# ------------------------------------------------------------------------------------------- the loss


@dataclass(slots=True)
class GRPOLossOutput:
    """The loss to back-propagate and what it was made of (detached floats, token means over the batch)."""

    loss: torch.Tensor
    """Scalar: policy loss − entropy_coef · entropy + kl_coef · KL."""
    policy_loss: float
    """The aggregated clipped policy-gradient loss."""
    kl: float
    """Aggregated k3 KL to the reference (0 when no reference was given)."""
    entropy: float
    """Aggregated token entropy (0 when no entropy was given)."""
    clip_fraction: float
    """Fraction of valid tokens where the ratio clip (low or high) was the active branch."""
    dual_clip_fraction: float
    """Fraction of valid tokens where the dual clip (A < 0, ratio > c) was the active branch."""
    approx_kl_old: float
    """Token mean of log π_old − log π: how far the update has moved from the sampling policy."""
    ratio_mean: float
    """Token mean of the (clamped) ratio π / π_old."""
    num_tokens: int
    """Valid tokens in this batch (weights for combining micro-batch metrics)."""


class GRPOLoss(nn.Module):
    """verl's PPO-clip policy loss for GRPO with dual clip, k3 KL to a reference, and an entropy bonus.

    Per token, with ratio ρ = exp(clamp(log π − log π_old, ±20)) and advantage A:

    - ℓ₁ = max(−A·ρ, −A·clip(ρ, 1 − ε_low, 1 + ε_high))
    - ℓ = min(ℓ₁, −A·c) where A < 0 (dual clip: a negative-advantage token whose ratio has grown beyond c
      contributes a constant, so it cannot blow up), else ℓ₁.

    Then loss = agg(ℓ) − entropy_coef · agg(H) + kl_coef · agg(k3(π, π_ref)).
    """

    def __init__(
        self,
        *,
        clip_ratio_low: float = 0.2,
        clip_ratio_high: float = 0.2,
        clip_ratio_c: float = 3.0,
        loss_agg_mode: LossAggMode = "token-mean",
        kl_coef: float = 0.0,
        entropy_coef: float = 0.0,
        loss_scale_factor: float | None = None,
    ):
        super().__init__()
        if clip_ratio_c <= 1.0:
            raise ValueError(f"clip_ratio_c must be > 1 (it bounds the ratio of negative-advantage tokens), "
                             f"got {clip_ratio_c}")
        self.clip_ratio_low = clip_ratio_low
        self.clip_ratio_high = clip_ratio_high
        self.clip_ratio_c = clip_ratio_c
        self.loss_agg_mode: LossAggMode = loss_agg_mode
        self.kl_coef = kl_coef
        self.entropy_coef = entropy_coef
        self.loss_scale_factor = loss_scale_factor

    def forward(
        self,
        log_probs: torch.Tensor,
        old_log_probs: torch.Tensor,
        advantages: torch.Tensor,
        response_mask: torch.Tensor,
        *,
        ref_log_probs: torch.Tensor | None = None,
        entropy: torch.Tensor | None = None,
        num_tokens: float | None = None,
        num_sequences: float | None = None,
    ) -> GRPOLossOutput:
        """Loss for one (micro-)batch. ``advantages`` is ``[B]`` (broadcast over tokens) or ``[B, T]``.

        ``num_tokens``/``num_sequences`` are the whole mini-batch's counts when this is one micro-batch of
        it (see :func:`agg_loss`); summing the returned losses then equals the mini-batch loss.
        """
        if log_probs.shape != old_log_probs.shape or log_probs.shape != response_mask.shape:
            raise ValueError(f"GRPOLoss: log_probs {tuple(log_probs.shape)}, old_log_probs "
                             f"{tuple(old_log_probs.shape)} and response_mask {tuple(response_mask.shape)} "
                             f"must share one [B, T] shape")
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(-1)
        advantages = advantages.to(log_probs.dtype).expand_as(log_probs)
        mask = response_mask.to(log_probs.dtype)
        agg = dict(num_tokens=num_tokens, num_sequences=num_sequences, loss_scale_factor=self.loss_scale_factor)

        log_ratio = torch.clamp(log_probs - old_log_probs, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        ratio = torch.exp(log_ratio)
        unclipped = -advantages * ratio
        clipped = -advantages * torch.clamp(ratio, 1.0 - self.clip_ratio_low, 1.0 + self.clip_ratio_high)
        ppo_loss = torch.maximum(unclipped, clipped)
        dual_bound = -advantages * self.clip_ratio_c
        dual_clipped = torch.minimum(dual_bound, ppo_loss)
        negative = advantages < 0
        per_token = torch.where(negative, dual_clipped, ppo_loss)
        policy_loss = agg_loss(per_token, mask, self.loss_agg_mode, **agg)
        loss = policy_loss

        kl_value = torch.zeros((), dtype=log_probs.dtype, device=log_probs.device)
        if ref_log_probs is not None:
            kl_value = agg_loss(k3_kl(log_probs, ref_log_probs), mask, self.loss_agg_mode, **agg)
            if self.kl_coef:
                loss = loss + self.kl_coef * kl_value
        entropy_value = torch.zeros((), dtype=log_probs.dtype, device=log_probs.device)
        if entropy is not None:
            entropy_value = agg_loss(entropy, mask, self.loss_agg_mode, **agg)
            if self.entropy_coef:
                loss = loss - self.entropy_coef * entropy_value

        with torch.no_grad():
            valid = mask.sum().clamp(min=1.0)
            clip_active = (clipped > unclipped).to(mask.dtype) * mask
            dual_active = ((ppo_loss > dual_bound) & negative).to(mask.dtype) * mask
            metrics = dict(
                clip_fraction=float(clip_active.sum() / valid),
                dual_clip_fraction=float(dual_active.sum() / valid),
                approx_kl_old=float((-log_ratio * mask).sum() / valid),
                ratio_mean=float((ratio * mask).sum() / valid),
            )
        return GRPOLossOutput(
            loss=loss,
            policy_loss=float(policy_loss.detach()),
            kl=float(kl_value.detach()),
            entropy=float(entropy_value.detach()),
            num_tokens=int(mask.sum().item()),
            **metrics,
        )


# ------------------------------------------------------------------------------ rollout/learner agreement


@dataclass(frozen=True, slots=True)
class LogProbAgreement:
    """How closely the learner's recomputed log-probs match the rollout engine's for the same tokens."""

    mean_abs_diff: float
    """Token mean of |log π_learner − log π_rollout|."""
    max_abs_diff: float
    """Largest |log π_learner − log π_rollout| over valid tokens."""
    kl: float
    """k3 estimate of KL(π_rollout ‖ π_learner) on the rollout's own samples."""
    num_tokens: int


def logprob_agreement(rollout_log_probs: torch.Tensor, learner_log_probs: torch.Tensor,
                      response_mask: torch.Tensor) -> LogProbAgreement:
    """Mismatch between engine and learner log-probs (a numerics or weight-sync bug shows up here first)."""
    mask = response_mask.bool()
    count = int(mask.sum())
    if count == 0:
        return LogProbAgreement(mean_abs_diff=0.0, max_abs_diff=0.0, kl=0.0, num_tokens=0)
    rollout = rollout_log_probs.float()[mask]
    learner = learner_log_probs.float()[mask]
    diff = (learner - rollout).abs()
    # Tokens were sampled from the rollout policy, so KL(rollout ‖ learner) is the one estimable from them:
    # k3 with Δ = log π_learner − log π_rollout.
    kl = k3_kl(rollout, learner).mean()
    return LogProbAgreement(mean_abs_diff=float(diff.mean()), max_abs_diff=float(diff.max()), kl=float(kl),
                            num_tokens=count)
