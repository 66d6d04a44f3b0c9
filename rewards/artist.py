"""Artist reward r_PA = r_comp · (λ1·r_photo + λ2·r_perc) from measured attributes and an LPIPS distance.

Owns the math of ALGORITHMS.md §5.3 as pure functions over :class:`PhotometricAttributes`: the compliance
gate (did the edit follow the critic's tone suggestions), photometric control (per-attribute progress from
the input toward the target) and their combination into an :class:`EditReward` with every component. It
must not load images or models; the reward worker measures, this module only scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rewards.attributes import NEGLIGIBLE_CHANGE, PhotometricAttributes
from rewards.perceptual import perceptual_reward
from rollout.records.types import TONE_ATTRIBUTES, EditOp, EditReward, Suggestion

PROGRESS_EPSILON = 1e-6
"""Guards the progress ratio |d_e| / |d_in| against a zero denominator."""


def photometric_scores(input_attrs: PhotometricAttributes, edit_attrs: PhotometricAttributes,
                       target_attrs: PhotometricAttributes) -> dict[str, float]:
    """Per-attribute scores s_k ∈ [0, 1].

    With d_in = a_k(input) − a_k(target) and d_e = a_k(edit) − a_k(target):
    if the target did not change k (|d_in| < τ_k), s_k = 1 when the edit also left k alone (|a_k(edit) −
    a_k(input)| < τ_k), else 0; otherwise s_k = clip(1 − |d_e| / |d_in|, 0, 1) — 1 on the target, 0 for no
    change, for a 2× overshoot or for the wrong direction.
    """
    scores = {}
    for attribute in TONE_ATTRIBUTES:
        tolerance = NEGLIGIBLE_CHANGE[attribute]
        d_in = input_attrs[attribute] - target_attrs[attribute]
        d_edit = edit_attrs[attribute] - target_attrs[attribute]
        if abs(d_in) < tolerance:
            scores[attribute] = float(abs(edit_attrs[attribute] - input_attrs[attribute]) < tolerance)
        else:
            scores[attribute] = float(np.clip(1.0 - abs(d_edit) / (abs(d_in) + PROGRESS_EPSILON), 0.0, 1.0))
    return scores


def photometric_reward(input_attrs: PhotometricAttributes, edit_attrs: PhotometricAttributes,
                       target_attrs: PhotometricAttributes) -> float:
    """r_photo = mean_k s_k (see :func:`photometric_scores`)."""
    scores = photometric_scores(input_attrs, edit_attrs, target_attrs)
    return float(np.mean(list(scores.values())))


@dataclass(frozen=True, slots=True)
class ComplianceCheck:
    """How one tone suggestion was judged by the compliance gate."""

    op: EditOp
    change: float
    """a_k(edit) − a_k(input), in the attribute's unit."""
    required: float
    """The signed change the gate needed to exceed (direction · margin · τ_k)."""
    followed: bool


def compliance_checks(suggestions: Sequence[Suggestion], input_attrs: PhotometricAttributes,
                      edit_attrs: PhotometricAttributes, margin: float = 0.5) -> list[ComplianceCheck]:
    """One :class:`ComplianceCheck` per tone suggestion (restoration and unrecognised ones are skipped)."""
    checks = []
    for op in (s.op for s in suggestions if s.op is not None):
        change = edit_attrs[op.attribute] - input_attrs[op.attribute]
        threshold = margin * NEGLIGIBLE_CHANGE[op.attribute]
        checks.append(ComplianceCheck(op=op, change=float(change), required=op.direction * threshold,
                                      followed=bool(op.direction * change > threshold)))
    return checks


def compliance_reward(suggestions: Sequence[Suggestion], input_attrs: PhotometricAttributes,
                      edit_attrs: PhotometricAttributes, margin: float = 0.5) -> float:
    """r_comp: fraction of tone suggestions whose attribute moved the asked way by more than margin·τ_k.

    Restoration and unrecognised suggestions do not count; with no tone suggestion at all the gate is
    neutral (1.0), since there was nothing to comply with.
    """
    checks = compliance_checks(suggestions, input_attrs, edit_attrs, margin)
    if not checks:
        return 1.0
    return sum(check.followed for check in checks) / len(checks)


def artist_reward(*, task_id: str, critique_index: int, edit_index: int,
                  input_attrs: PhotometricAttributes, edit_attrs: PhotometricAttributes,
                  target_attrs: PhotometricAttributes, suggestions: Sequence[Suggestion],
                  lpips_distance: float, photometric_weight: float = 1.0, perceptual_weight: float = 0.5,
                  compliance_margin: float = 0.5) -> EditReward:
    """Every component of r_PA = r_comp · (λ1·r_photo + λ2·r_perc) for one edit, as an :class:`EditReward`."""
    scores = photometric_scores(input_attrs, edit_attrs, target_attrs)
    photometric = float(np.mean(list(scores.values())))
    compliance = compliance_reward(suggestions, input_attrs, edit_attrs, compliance_margin)
    perceptual = perceptual_reward(lpips_distance)
    total = compliance * (photometric_weight * photometric + perceptual_weight * perceptual)
    return EditReward(
        task_id=task_id, critique_index=critique_index, edit_index=edit_index,
        total=float(total), compliance=float(compliance), photometric=photometric, perceptual=perceptual,
        attribute_scores=scores, gate_passed=compliance == 1.0)


def failed_edit_reward(*, task_id: str, critique_index: int, edit_index: int, reason: str) -> EditReward:
    """The result for an edit that could not be scored: all components 0, the gate closed, the reason kept."""
    return EditReward(task_id=task_id, critique_index=critique_index, edit_index=edit_index, total=0.0,
                      compliance=0.0, photometric=0.0, perceptual=0.0, gate_passed=False, error=reason)
