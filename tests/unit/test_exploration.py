"""The artist's exploration: seeded global tone changes along the four attributes the reward measures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from artist_actor.codec import images_to_pixels, pixels_to_images
from artist_actor.exploration import LEVEL_ONE_AMOUNTS, ToneChange, apply_tone_changes, draw_tone_change
from rewards.attributes import NEGLIGIBLE_CHANGE, compute_attributes


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from rollout.data.synthesis import EMBEDDED_TRAIN_PHOTOS, embedded_photos, random_square_crop

    return random_square_crop(embedded_photos(EMBEDDED_TRAIN_PHOTOS[:1])[0][1], 64, np.random.default_rng(3))


def changed(photo: np.ndarray, change: ToneChange) -> np.ndarray:
    return pixels_to_images(apply_tone_changes(images_to_pixels([photo]), [change]))[0]


def test_draws_are_a_pure_function_of_the_seed_and_scale_zero_draws_nothing():
    assert draw_tone_change(11, 0.5) == draw_tone_change(11, 0.5)
    assert draw_tone_change(11, 0.5) != draw_tone_change(12, 0.5)
    assert draw_tone_change(11, 0.0).is_identity
    amounts = np.array([[getattr(draw_tone_change(seed, 1.0), name) / LEVEL_ONE_AMOUNTS[name]
                         for name in LEVEL_ONE_AMOUNTS] for seed in range(400)])
    assert np.all(np.abs(amounts) <= 3.0 + 1e-9)              # clipped at 3 standard deviations
    assert np.allclose(amounts.std(axis=0), 1.0, atol=0.15)  # one level-1 op per unit of scale
    with pytest.raises(ValueError, match="≥ 0"):
        draw_tone_change(0, -0.1)


@pytest.mark.parametrize("attribute, change", [
    ("exposure", ToneChange(exposure=0.25, warmth=0.0, contrast=0.0, saturation=0.0)),
    ("warmth", ToneChange(exposure=0.0, warmth=0.04, contrast=0.0, saturation=0.0)),
    ("contrast", ToneChange(exposure=0.0, warmth=0.0, contrast=0.15, saturation=0.0)),
    ("saturation", ToneChange(exposure=0.0, warmth=0.0, contrast=0.0, saturation=0.15)),
])
def test_each_amount_moves_its_attribute_the_way_a_level_one_op_does(photo, attribute, change):
    before, after = compute_attributes(photo), compute_attributes(changed(photo, change))
    assert after[attribute] - before[attribute] > 0.5 * NEGLIGIBLE_CHANGE[attribute], (before, after)
    lowered = ToneChange(**{name: -getattr(change, name) for name in LEVEL_ONE_AMOUNTS})
    assert compute_attributes(changed(photo, lowered))[attribute] < before[attribute]


def test_an_identity_change_returns_the_pixels_bit_for_bit(photo):
    pixels = images_to_pixels([photo, photo])
    out = apply_tone_changes(pixels, [ToneChange(0.0, 0.0, 0.0, 0.0), draw_tone_change(5, 1.0)])
    assert torch.equal(out[0], pixels[0]) and not torch.equal(out[1], pixels[1])
    assert out.min() >= -1.0 and out.max() <= 1.0
    with pytest.raises(ValueError, match="one tone change per item"):
        apply_tone_changes(pixels, [ToneChange(0.0, 0.0, 0.0, 0.0)])
