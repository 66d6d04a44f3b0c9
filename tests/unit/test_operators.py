"""Rule-based tone operators on real photos: direction, size per level, order, inversion."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from rewards.attributes import NEGLIGIBLE_CHANGE, compute_attributes
from rewards.operators import LEVEL_MAGNITUDES, apply_edit_ops, invert_op, magnitude
from rollout.records.types import TONE_ATTRIBUTES, EditOp


@pytest.fixture(scope="module")
def photo():
    return data.chelsea()


@pytest.mark.parametrize("attribute", TONE_ATTRIBUTES)
@pytest.mark.parametrize("direction", [1, -1])
def test_each_level_moves_its_attribute_beyond_tolerance_and_levels_grow(photo, attribute, direction):
    before = compute_attributes(photo)[attribute]
    changes = [
        compute_attributes(apply_edit_ops(photo, [EditOp(attribute=attribute, direction=direction, level=level)]))[
            attribute] - before
        for level in (1, 2, 3)
    ]
    signed = [direction * change for change in changes]
    assert signed[0] > NEGLIGIBLE_CHANGE[attribute], (attribute, changes)
    assert signed[0] < signed[1] < signed[2], (attribute, changes)


def test_exposure_one_stop_doubles_linear_light():
    grey = np.full((8, 8, 3), 100, np.uint8)  # linear ≈ 0.127
    brighter = apply_edit_ops(grey, [EditOp(attribute="exposure", direction=1, level=3)])
    linear = lambda v: ((v / 255 + 0.055) / 1.055) ** 2.4  # noqa: E731
    assert linear(float(brighter[0, 0, 0])) / linear(100.0) == pytest.approx(2.0, rel=0.02)


def test_warmth_shift_keeps_exposure(photo):
    warmer = apply_edit_ops(photo, [EditOp(attribute="warmth", direction=1, level=3)])
    assert abs(compute_attributes(warmer).exposure - compute_attributes(photo).exposure) < NEGLIGIBLE_CHANGE[
        "exposure"]


def test_ops_apply_in_fixed_order_whatever_the_listing(photo):
    ops = [EditOp(attribute="saturation", direction=1, level=2), EditOp(attribute="contrast", direction=-1, level=1),
           EditOp(attribute="exposure", direction=1, level=1), EditOp(attribute="warmth", direction=-1, level=2)]
    assert np.array_equal(apply_edit_ops(photo, ops), apply_edit_ops(photo, list(reversed(ops))))


def test_inverse_op_undoes_most_of_the_op(photo):
    # Same level, opposite direction is a first-order inverse: ×0.7 then ×1.3 leaves 0.91, not 1.
    before = compute_attributes(photo)
    for attribute in TONE_ATTRIBUTES:
        op = EditOp(attribute=attribute, direction=-1, level=2)
        assert invert_op(op) == EditOp(attribute=attribute, direction=1, level=2)
        degraded_image = apply_edit_ops(photo, [op])
        degraded = compute_attributes(degraded_image)[attribute]
        restored = compute_attributes(apply_edit_ops(degraded_image, [invert_op(op)]))[attribute]
        assert abs(restored - before[attribute]) < 0.35 * abs(degraded - before[attribute]), attribute


def test_no_ops_returns_an_unchanged_copy(photo):
    result = apply_edit_ops(photo, [])
    assert result is not photo and np.array_equal(result, photo)


def test_output_stays_uint8_rgb_for_extreme_inputs():
    for image in (np.zeros((3, 5, 3), np.uint8), np.full((1, 1, 3), 255, np.uint8)):
        out = apply_edit_ops(image, [EditOp(attribute=a, direction=1, level=3) for a in TONE_ATTRIBUTES])
        assert out.dtype == np.uint8 and out.shape == image.shape


def test_magnitudes_follow_the_level_table():
    assert magnitude(EditOp(attribute="exposure", direction=-1, level=2)) == 0.5
    assert LEVEL_MAGNITUDES["warmth"] == (0.04, 0.08, 0.15)
