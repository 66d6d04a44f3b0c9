"""Rollout/learner agreement: how far the rollout engine's log-probs are from the learner's recomputation.

Owns one pure function over numbers. Both sides score the same sampled tokens, so any gap comes from numerics
(kernels, dtype, M-RoPE positions, a stale weight sync). A gap that grows is the first sign of a broken sync or
mismatched inputs, so the learner logs these numbers every step. No torch, no vLLM: numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class LogprobAgreement:
    """Mismatch between rollout and recomputed log-probs over all response tokens of a batch."""

    mean_abs_diff: float
    """mean |log π_rollout − log π_learner| per token."""
    max_abs_diff: float
    """Largest per-token |Δ|."""
    kl_k1: float
    """mean (log π_rollout − log π_learner): the plain Monte-Carlo estimate of KL(π_rollout ‖ π_learner) from
    tokens sampled by the rollout engine (unbiased, can be negative on small batches)."""
    kl_k3: float
    """mean (r − 1 − log r) with r = π_learner / π_rollout: the non-negative, low-variance ("k3") estimate of
    KL(π_rollout ‖ π_learner)."""
    num_tokens: int

    def as_metrics(self, prefix: str = "critic/agreement") -> dict[str, float]:
        return {f"{prefix}/{key}": float(value) for key, value in asdict(self).items()}


def logprob_agreement(rollout_logprobs: Sequence[np.ndarray] | np.ndarray,
                      learner_logprobs: Sequence[np.ndarray] | np.ndarray,
                      mask: Sequence[np.ndarray] | np.ndarray | None = None) -> LogprobAgreement:
    """Compare per-token log-probs of the same sampled tokens.

    Accepts either ragged lists (one 1-D array per response) or padded 2-D arrays with a 0/1 ``mask``.
    Raises ``ValueError`` when shapes disagree or values are not finite, naming the first offending response.
    """
    rollout_flat, learner_flat = _flatten(rollout_logprobs, learner_logprobs, mask)
    if rollout_flat.size == 0:
        return LogprobAgreement(mean_abs_diff=0.0, max_abs_diff=0.0, kl_k1=0.0, kl_k3=0.0, num_tokens=0)
    delta = rollout_flat - learner_flat
    log_ratio = np.clip(-delta, -20.0, 20.0)
    return LogprobAgreement(
        mean_abs_diff=float(np.abs(delta).mean()),
        max_abs_diff=float(np.abs(delta).max()),
        kl_k1=float(delta.mean()),
        kl_k3=float((np.exp(log_ratio) - 1.0 - log_ratio).mean()),
        num_tokens=int(rollout_flat.size),
    )


def _flatten(rollout, learner, mask) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(rollout, np.ndarray) and rollout.ndim == 2:
        rollout_2d, learner_2d = np.asarray(rollout, np.float64), np.asarray(learner, np.float64)
        if rollout_2d.shape != learner_2d.shape:
            raise ValueError(f"rollout log-probs {rollout_2d.shape} and learner log-probs {learner_2d.shape} differ")
        keep = np.ones_like(rollout_2d, bool) if mask is None else np.asarray(mask).astype(bool)
        if keep.shape != rollout_2d.shape:
            raise ValueError(f"mask {keep.shape} does not match log-probs {rollout_2d.shape}")
        rollout_flat, learner_flat = rollout_2d[keep], learner_2d[keep]
    else:
        if len(rollout) != len(learner):
            raise ValueError(f"{len(rollout)} rollout responses but {len(learner)} learner responses")
        pairs = []
        for i, (a, b) in enumerate(zip(rollout, learner)):
            a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
            if a.shape != b.shape:
                raise ValueError(f"response {i}: {a.size} rollout log-probs but {b.size} learner log-probs")
            pairs.append((a, b))
        rollout_flat = np.concatenate([a for a, _ in pairs]) if pairs else np.zeros(0)
        learner_flat = np.concatenate([b for _, b in pairs]) if pairs else np.zeros(0)
    if not (np.isfinite(rollout_flat).all() and np.isfinite(learner_flat).all()):
        raise ValueError("log-probs contain NaN or inf")
    return rollout_flat, learner_flat
