"""Photometric attributes: the fast path against colour-science on real photos, and defined edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from rewards.attributes import (
    D65_MIRED,
    NEGLIGIBLE_CHANGE,
    PhotometricAttributes,
    attribute_distance,
    compute_attributes,
    reference_attributes,
)
from rewards.images import InvalidImageError

PHOTOS = {
    "astronaut": data.astronaut,
    "chelsea": data.chelsea,
    "coffee": data.coffee,
    "rocket": data.rocket,
    "motorcycle": lambda: data.stereo_motorcycle()[0],
    "immunohistochemistry": data.immunohistochemistry,
}


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_fast_path_matches_colour_science_on_real_photos(name):
    photo = PHOTOS[name]()
    fast = compute_attributes(photo)
    reference = reference_attributes(photo)
    assert abs(fast.exposure - reference.exposure) <= 0.5
    assert abs(fast.contrast - reference.contrast) <= 0.5
    assert abs(fast.saturation - reference.saturation) <= 0.5
    assert abs(fast.warmth - reference.warmth) <= 2.0


def test_uniform_grey_is_neutral_and_flat():
    grey = np.full((40, 60, 3), 119, np.uint8)  # sRGB 119 ≈ L* 50
    attributes = compute_attributes(grey)
    assert attributes.exposure == pytest.approx(50.0, abs=0.3)
    assert attributes.contrast == pytest.approx(0.0, abs=1e-3)
    assert attributes.saturation == pytest.approx(0.0, abs=0.05)
    assert attributes.warmth == pytest.approx(D65_MIRED, abs=1.0)


def test_warm_cast_reads_warmer_and_cool_cast_cooler():
    neutral = np.full((32, 32, 3), 128, np.uint8)
    warm = neutral.copy()
    warm[..., 0], warm[..., 2] = 150, 105
    cool = neutral.copy()
    cool[..., 0], cool[..., 2] = 105, 150
    mired = [compute_attributes(image).warmth for image in (cool, neutral, warm)]
    assert mired[0] < mired[1] - 20 and mired[2] > mired[1] + 20


@pytest.mark.parametrize("value", [0, 255])
def test_black_and_white_images_have_defined_attributes(value):
    attributes = compute_attributes(np.full((16, 16, 3), value, np.uint8))
    assert attributes.exposure == pytest.approx(value / 255 * 100, abs=0.01)
    assert attributes.warmth == pytest.approx(D65_MIRED, abs=0.5)
    assert all(np.isfinite(list(attributes.as_dict().values())))


def test_single_pixel_image_is_measured():
    attributes = compute_attributes(np.array([[[200, 30, 40]]], np.uint8))
    assert attributes.contrast == 0.0
    assert attributes.saturation > 40.0


def test_large_photo_is_downsampled_to_the_configured_resolution():
    photo = data.chelsea()
    upscaled = np.repeat(np.repeat(photo, 3, axis=0), 3, axis=1)
    small, large = compute_attributes(photo), compute_attributes(upscaled)
    for key in ("exposure", "contrast", "saturation", "warmth"):
        assert abs(small[key] - large[key]) < NEGLIGIBLE_CHANGE[key] / 2


def test_float_input_in_unit_range_equals_uint8_input():
    photo = data.coffee()
    from_float = compute_attributes(photo.astype(np.float32) / 255.0).as_dict()
    assert from_float == pytest.approx(compute_attributes(photo).as_dict(), abs=1e-6)


@pytest.mark.parametrize("bad, fragment", [
    (np.full((8, 8, 3), np.nan, np.float32), "NaN"),
    (np.zeros((8, 8), np.uint8), "shape"),
    (np.zeros((8, 8, 4), np.uint8), "shape"),
    (np.zeros((8, 8, 3), np.uint16), "dtype"),
    (np.full((8, 8, 3), 3.0, np.float32), "[0, 1]"),
    (np.zeros((0, 8, 3), np.uint8), "empty"),
])
def test_bad_images_raise_a_clear_error(bad, fragment):
    with pytest.raises(InvalidImageError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        compute_attributes(bad)


def test_attribute_distance_is_in_tolerance_units():
    a = PhotometricAttributes(exposure=50, contrast=20, saturation=10, warmth=200)
    b = PhotometricAttributes(exposure=54, contrast=20, saturation=13, warmth=190)
    assert attribute_distance(a, b) == pytest.approx(4 / 2 + 3 / 1 + 10 / 5)
