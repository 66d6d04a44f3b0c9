"""Critic rewards: format gating, score ranking, suggestion reward (retouch pseudo-edit, restoration labels)."""

from __future__ import annotations

import cv2
import pytest
from skimage import data

from rewards.attributes import compute_attributes
from rewards.critic import critic_reward, format_reward, rank_reward, restoration_coverage, suggestion_reward
from rewards.operators import apply_edit_ops
from rollout.records.types import EditOp, ParsedCritique, Suggestion


def _tone(attribute, direction, level=2):
    return Suggestion(text=f"{attribute} {direction:+d}", op=EditOp(attribute=attribute, direction=direction,
                                                                       level=level))


@pytest.fixture(scope="module")
def pair():
    photo = cv2.resize(data.coffee(), (240, 160), interpolation=cv2.INTER_AREA)
    degraded = apply_edit_ops(photo, [EditOp(attribute="exposure", direction=-1, level=2),
                                      EditOp(attribute="warmth", direction=1, level=2)])
    return degraded, compute_attributes(photo)


def test_format_reward_needs_a_well_formed_response_with_a_score():
    assert format_reward(ParsedCritique(format_ok=True, score=62.0)) == 1.0
    assert format_reward(ParsedCritique(format_ok=False, score=62.0, error="missing </think>")) == 0.0
    assert format_reward(ParsedCritique(format_ok=True, score=None)) == 0.0


def test_rank_reward_compares_the_edit_rescores_with_the_input_score():
    assert rank_reward(40.0, [55.0, 35.0]) == (1.0, "")      # mean 45 > 40
    assert rank_reward(50.0, [45.0, 50.0]) == (0.0, "")      # not strictly above
    assert rank_reward(40.0, [None, 60.0]) == (1.0, "")      # unparsed re-scores are left out
    value, reason = rank_reward(40.0, [None, None])
    assert value == 0.0 and "none of the 2 re-scores" in reason
    value, reason = rank_reward(None, [80.0])
    assert value == 0.0 and "no score" in reason


def test_suggestions_that_undo_the_degradation_earn_the_reward(pair):
    degraded, target_attrs = pair
    right = [_tone("exposure", 1), _tone("warmth", -1)]
    wrong = [_tone("exposure", -1), _tone("warmth", 1)]
    kwargs = dict(kind="retouch", degradations=(), input_image=degraded, target_attrs=target_attrs)
    assert suggestion_reward(suggestions=right, **kwargs) == 1.0
    assert suggestion_reward(suggestions=wrong, **kwargs) == 0.0
    assert suggestion_reward(suggestions=[], **kwargs) == 0.0


def test_restoration_reward_needs_every_label_covered():
    blur = Suggestion(text="remove the blur", restoration="blur")
    noise = Suggestion(text="denoise", restoration="noise")
    assert restoration_coverage(("blur", "noise"), [blur, noise, _tone("exposure", 1)]) == 1.0
    assert restoration_coverage(("blur", "noise"), [blur]) == 0.0
    assert suggestion_reward(kind="restoration", suggestions=[noise], degradations=("noise",), input_image=None,
                             target_attrs=None) == 1.0


def test_critic_reward_is_gated_by_format_and_keeps_every_component():
    good = critic_reward(task_id="t", critique_index=1, format_value=1.0, rank_value=1.0, suggestion_value=0.0)
    assert good.total == 2.0 and (good.format, good.rank, good.suggestion) == (1.0, 1.0, 0.0)
    weighted = critic_reward(task_id="t", critique_index=1, format_value=1.0, rank_value=1.0, suggestion_value=1.0,
                             format_weight=0.5, rank_weight=2.0, suggestion_weight=1.0)
    assert weighted.total == 3.5
    malformed = critic_reward(task_id="t", critique_index=2, format_value=0.0, rank_value=1.0, suggestion_value=1.0,
                              reasons={"format": "missing <answer>"})
    assert malformed.total == 0.0 and malformed.rank == 1.0 and malformed.reasons["format"] == "missing <answer>"
