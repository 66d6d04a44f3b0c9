"""Critic reward r_C = r_fmt · (w_fmt + w_rank·r_rank + w_sugg·r_sugg) and its three components.

Owns the math of ALGORITHMS.md §5.4 as pure functions over the critic's parsed output: format (the
grammar's verdict), score ranking (the critic's re-scores of its own edits against its score of the input),
and the suggestion reward (retouch: the rule-based pseudo-edit moves the photo toward its target in
attribute space; restoration: every degradation label has its corrective suggestion). It must not parse
text — the critic's grammar turns responses into :class:`rollout.records.types.ParsedCritique` — and must not run
models: re-scores arrive as numbers from the critic rollout actors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rewards.attributes import (
    PhotometricAttributes,
    attribute_distance,
    compute_attributes,
    downsample_for_attributes,
)
from rewards.operators import apply_edit_ops
from rollout.records.types import CritiqueReward, Degradation, ParsedCritique, Suggestion, TaskKind


def format_reward(parsed: ParsedCritique) -> float:
    """r_fmt ∈ {0, 1}: 1 iff the response matched the output grammar and carried a 0–100 score."""
    return 1.0 if parsed.format_ok and parsed.score is not None else 0.0


def rank_reward(input_score: float | None, edit_scores: Sequence[float | None]) -> tuple[float, str]:
    """r_rank = 1[S(input) < mean S(edit)] and, when it is 0 for want of numbers, why.

    ``edit_scores`` are the critic's re-scores of the edits made from this critique; ``None`` marks a
    re-score that did not parse, and such entries are left out of the mean.
    """
    if input_score is None or not np.isfinite(input_score):
        return 0.0, "the critique gave no score for the input"
    valid = [float(s) for s in edit_scores if s is not None and np.isfinite(s)]
    if not valid:
        if not edit_scores:
            return 0.0, "no edits were re-scored"
        return 0.0, f"none of the {len(edit_scores)} re-scores of the edits parsed"
    return float(np.mean(valid) > input_score), ""


def restoration_coverage(degradations: Sequence[Degradation], suggestions: Sequence[Suggestion]) -> float:
    """1 iff every degradation label has a suggestion that corrects it (e.g. ``noise`` → "denoise")."""
    corrected = {s.restoration for s in suggestions if s.restoration is not None}
    return float(all(label in corrected for label in degradations))


def pseudo_edit_improves(input_image: np.ndarray, suggestions: Sequence[Suggestion],
                         target_attrs: PhotometricAttributes, *, input_attrs: PhotometricAttributes | None = None,
                         resolution: int = 512) -> float:
    """1 iff applying the suggested tone ops to the input brings it closer to the target in attribute space.

    Distance is D = Σ_k |a_k − a_k(target)| / τ_k. With no tone suggestion the pseudo-edit is the input itself,
    which is not closer, so the reward is 0.
    """
    ops = [s.op for s in suggestions if s.op is not None]
    if not ops:
        return 0.0
    # The pseudo-edit is made on the attribute downsample: the attributes are measured there anyway.
    small = downsample_for_attributes(input_image, resolution)
    if input_attrs is None:
        input_attrs = compute_attributes(small, resolution)
    pseudo_attrs = compute_attributes(apply_edit_ops(small, ops), resolution)
    return float(attribute_distance(pseudo_attrs, target_attrs) < attribute_distance(input_attrs, target_attrs))


def suggestion_reward(*, kind: TaskKind, suggestions: Sequence[Suggestion], degradations: Sequence[Degradation],
                      input_image: np.ndarray | None, target_attrs: PhotometricAttributes | None,
                      input_attrs: PhotometricAttributes | None = None, resolution: int = 512) -> float:
    """r_sugg ∈ {0, 1}: restoration samples with labels are judged on label coverage, all others on the
    rule-based pseudo-edit (see :func:`pseudo_edit_improves`); images are needed only for the latter."""
    if kind == "restoration" and degradations:
        return restoration_coverage(degradations, suggestions)
    if input_image is None or target_attrs is None:
        raise ValueError("the pseudo-edit suggestion reward needs the input image and the target's attributes")
    return pseudo_edit_improves(input_image, suggestions, target_attrs, input_attrs=input_attrs,
                                resolution=resolution)


def critic_reward(*, task_id: str, critique_index: int, format_value: float, rank_value: float,
                  suggestion_value: float, format_weight: float = 1.0, rank_weight: float = 1.0,
                  suggestion_weight: float = 1.0, reasons: dict[str, str] | None = None) -> CritiqueReward:
    """r_C = r_fmt · (w_fmt + w_rank·r_rank + w_sugg·r_sugg): a malformed response earns nothing, but its
    rank and suggestion components are still reported."""
    total = format_value * (format_weight + rank_weight * rank_value + suggestion_weight * suggestion_value)
    return CritiqueReward(task_id=task_id, critique_index=critique_index, total=float(total),
                          format=float(format_value), rank=float(rank_value), suggestion=float(suggestion_value),
                          reasons=dict(reasons or {}))


def failed_critique_reward(*, task_id: str, critique_index: int, reason: str) -> CritiqueReward:
    """The result for a critique that could not be scored: all components 0, the reason kept."""
    return CritiqueReward(task_id=task_id, critique_index=critique_index, total=0.0, format=0.0, rank=0.0,
                          suggestion=0.0, error=reason)
