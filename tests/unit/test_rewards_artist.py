"""Artist reward sanity table on real photos with synthetic perturbations of known size (ALGORITHMS §5.3).

Target = the photo made 0.5 EV brighter and 0.08 warmer; the edits below are graded against it.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from rewards.artist import artist_reward, compliance_reward, photometric_reward, photometric_scores
from rewards.attributes import PhotometricAttributes, compute_attributes
from rewards.operators import apply_adjustments
from rewards.perceptual import LPIPSScorer, perceptual_reward
from rollout.records.types import EditOp, Suggestion

PHOTOS = {"astronaut": data.astronaut, "chelsea": data.chelsea, "coffee": data.coffee, "rocket": data.rocket}
TARGET_CHANGE = {"exposure": 0.5, "warmth": 0.08}
SUGGESTIONS = (
    Suggestion(text="increase the exposure moderately", op=EditOp(attribute="exposure", direction=1, level=2)),
    Suggestion(text="make it moderately warmer", op=EditOp(attribute="warmth", direction=1, level=2)),
)


def _scaled(photo, fraction):
    return apply_adjustments(photo, {k: v * fraction for k, v in TARGET_CHANGE.items()})


def _overshoot_twice(photo, input_attrs, target_attrs):
    """Edit whose exposure and warmth each land as far beyond the target as the input is before it.

    The operators are not linear in attribute space, so each amount is found by bisection.
    """
    amounts = {}
    for attribute, step in TARGET_CHANGE.items():
        want = input_attrs[attribute] + 2 * (target_attrs[attribute] - input_attrs[attribute])
        low, high = 1.0, 12.0
        for _ in range(16):
            mid = 0.5 * (low + high)
            reached = compute_attributes(apply_adjustments(photo, {**amounts, attribute: step * mid}))[attribute]
            low, high = (mid, high) if reached < want else (low, mid)
        amounts[attribute] = step * 0.5 * (low + high)
    return apply_adjustments(photo, amounts)


@pytest.fixture(scope="module", params=sorted(PHOTOS))
def table(request):
    photo = cv2.resize(PHOTOS[request.param](), None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    target = _scaled(photo, 1.0)
    input_attrs, target_attrs = compute_attributes(photo), compute_attributes(target)
    edits = {
        "target": target,
        "no edit": photo,
        "half-way": _scaled(photo, 0.5),
        "2x overshoot": _overshoot_twice(photo, input_attrs, target_attrs),
        "wrong direction": _scaled(photo, -1.0),
    }
    rows = {}
    for name, edit in edits.items():
        edit_attrs = compute_attributes(edit)
        rows[name] = (photometric_reward(input_attrs, edit_attrs, target_attrs),
                      compliance_reward(SUGGESTIONS, input_attrs, edit_attrs),
                      photometric_scores(input_attrs, edit_attrs, target_attrs))
    return rows


def test_edit_equal_to_target_scores_one(table):
    photometric, compliance, _ = table["target"]
    assert photometric == pytest.approx(1.0, abs=1e-6) and compliance == 1.0


def test_no_edit_scores_low_and_fails_the_gate(table):
    photometric, compliance, _ = table["no edit"]
    assert photometric <= 0.25 + 1e-6 and compliance == 0.0


def test_half_way_scores_in_between(table):
    photometric, compliance, scores = table["half-way"]
    assert 0.3 <= photometric <= 0.8 and compliance == 1.0
    assert 0.3 <= scores["exposure"] <= 0.7


def test_twice_the_change_scores_near_zero(table):
    photometric, compliance, scores = table["2x overshoot"]
    # The two attributes the target moved score ~0; contrast and saturation ride along non-linearly.
    assert scores["exposure"] <= 0.3 and scores["warmth"] <= 0.3
    assert photometric <= 0.4 and photometric < table["half-way"][0]
    assert compliance == 1.0  # it did follow the suggested directions


def test_wrong_direction_scores_zero(table):
    photometric, compliance, _ = table["wrong direction"]
    assert photometric <= 0.25 + 1e-6 and compliance == 0.0


def _attrs(exposure=50.0, contrast=20.0, saturation=20.0, warmth=200.0):
    return PhotometricAttributes(exposure=exposure, contrast=contrast, saturation=saturation, warmth=warmth)


def test_progress_formula_on_exact_attributes():
    source, target = _attrs(exposure=40.0), _attrs(exposure=50.0)
    assert photometric_scores(source, _attrs(exposure=47.5), target)["exposure"] == pytest.approx(0.75)
    assert photometric_scores(source, _attrs(exposure=60.0), target)["exposure"] == pytest.approx(0.0, abs=1e-6)
    # An attribute the target left alone must stay alone (within τ).
    assert photometric_scores(source, _attrs(exposure=50.0, warmth=204.0), target)["warmth"] == 1.0
    assert photometric_scores(source, _attrs(exposure=50.0, warmth=210.0), target)["warmth"] == 0.0


def test_compliance_counts_each_suggestion_and_is_neutral_without_any():
    source, edit = _attrs(), _attrs(exposure=53.0, warmth=198.0)
    assert compliance_reward(SUGGESTIONS, source, edit) == 0.5
    assert compliance_reward([Suggestion(text="remove blur", restoration="blur")], source, edit) == 1.0
    # A move smaller than half the tolerance does not count as following the suggestion.
    assert compliance_reward(SUGGESTIONS[:1], source, _attrs(exposure=50.9)) == 0.0


def test_artist_reward_reports_every_component_and_gates_the_total():
    source, target = _attrs(exposure=40.0), _attrs(exposure=50.0)
    followed = artist_reward(task_id="t", critique_index=0, edit_index=1, input_attrs=source,
                             edit_attrs=_attrs(exposure=50.0), target_attrs=target, suggestions=SUGGESTIONS[:1],
                             lpips_distance=0.2)
    assert followed.total == pytest.approx(1.0 * 1.0 + 0.5 * 0.8)
    assert (followed.compliance, followed.photometric, followed.perceptual, followed.gate_passed) == (
        1.0, pytest.approx(1.0), pytest.approx(0.8), True)
    assert set(followed.attribute_scores) == {"exposure", "contrast", "saturation", "warmth"}
    ignored = artist_reward(task_id="t", critique_index=0, edit_index=2, input_attrs=source, edit_attrs=source,
                            target_attrs=target, suggestions=SUGGESTIONS[:1], lpips_distance=0.0,
                            photometric_weight=1.0, perceptual_weight=0.5)
    assert ignored.total == 0.0 and not ignored.gate_passed and ignored.perceptual == 1.0


@pytest.fixture(scope="module")
def lpips_scorer():
    return LPIPSScorer(resolution=128)


def test_lpips_orders_mild_below_strong_distortions(lpips_scorer):
    target = cv2.resize(data.chelsea(), (192, 128), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(0)
    noisy = lambda sigma: np.clip(target + rng.normal(0, sigma, target.shape), 0, 255).astype(np.uint8)  # noqa: E731
    blurred = lambda sigma: cv2.GaussianBlur(target, (0, 0), sigma)  # noqa: E731
    assert lpips_scorer.distance(target, target) == pytest.approx(0.0, abs=1e-6)
    for mild, strong in ((blurred(1.0), blurred(3.0)), (noisy(5), noisy(25))):
        assert perceptual_reward(lpips_scorer.distance(mild, target)) > perceptual_reward(
            lpips_scorer.distance(strong, target))
