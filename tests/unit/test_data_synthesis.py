"""Synthetic pairs: the stated ops and degradation labels really describe what was done to the photo."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from rewards.attributes import NEGLIGIBLE_CHANGE, attribute_distance, compute_attributes
from rewards.operators import apply_edit_ops
from rollout.data.degradations import (add_blur, add_haze, add_lowlight, add_noise, degrade, linear_to_srgb,
                                       srgb_decode, srgb_to_linear)
from rollout.data.manifest import read_manifest
from rollout.data.synthesis import (EMBEDDED_EVAL_PHOTOS, EMBEDDED_TRAIN_PHOTOS, build_embedded_dataset,
                                    embedded_photos, make_retouch_pair, random_square_crop)
from rollout.records.images import read_image


@pytest.fixture(scope="module")
def crops() -> list[np.ndarray]:
    """Twelve 64 px crops of four real photos (two of them from the held-out set)."""
    photos = embedded_photos(["astronaut", "coffee", "chelsea", "rocket"])
    return [random_square_crop(photo, 64, np.random.default_rng(seed)) for _, photo in photos for seed in range(3)]


def test_known_ops_point_from_input_to_target_and_fix_it(crops):
    checked = 0
    for index, good in enumerate(crops):
        for seed in range(4):
            made = make_retouch_pair(good, np.random.default_rng([index, seed]))
            assert made is not None, "a normal photo crop always yields a verified retouch pair"
            degraded, known_ops = made
            assert 1 <= len(known_ops) <= 3
            assert len({op.attribute for op in known_ops}) == len(known_ops), "one op per attribute"
            before, target = compute_attributes(degraded), compute_attributes(good)
            for op in known_ops:
                change = target[op.attribute] - before[op.attribute]
                assert op.direction * change > 0.5 * NEGLIGIBLE_CHANGE[op.attribute], (op, change)
            fixed = compute_attributes(apply_edit_ops(degraded, list(known_ops)))
            assert attribute_distance(fixed, target) < attribute_distance(before, target)
            checked += 1
    assert checked == len(crops) * 4


def test_retouch_pairs_are_deterministic_for_a_seed(crops):
    first = make_retouch_pair(crops[0], np.random.default_rng(7))
    again = make_retouch_pair(crops[0], np.random.default_rng(7))
    other = make_retouch_pair(crops[0], np.random.default_rng(8))
    assert np.array_equal(first[0], again[0]) and first[1] == again[1]
    assert not (np.array_equal(first[0], other[0]) and first[1] == other[1])


def _sharpness(image: np.ndarray) -> float:
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return float(cv2.Laplacian(gray, cv2.CV_32F).var())


def test_blur_removes_fine_detail(crops):
    for seed, good in enumerate(crops):
        blurred, params = add_blur(good, np.random.default_rng(seed))
        assert _sharpness(blurred) < 0.5 * _sharpness(good), params
        assert abs(compute_attributes(blurred).exposure - compute_attributes(good).exposure) < 4.0


def test_noise_is_zero_mean_and_visible(crops):
    models = set()
    for seed, good in enumerate(crops):
        noisy, params = add_noise(good, np.random.default_rng(seed))
        residual = noisy.astype(np.float32) - good.astype(np.float32)
        models.add(params["model"])
        assert residual.std() > 3.0, params
        assert abs(residual.mean()) < 3.0, params
    assert models == {"gaussian", "poisson"}, "both noise models are drawn"


def test_haze_follows_the_scattering_model_with_the_stated_parameters(crops):
    rows_checked = 0
    for seed, good in enumerate(crops):
        hazy, params = add_haze(good, np.random.default_rng(seed))
        before, after = compute_attributes(good), compute_attributes(hazy)
        assert after.exposure > before.exposure + 5.0, params
        assert after.contrast < before.contrast, params
        # Invert the scattering model from the stated airlight: the recovered transmission must match the
        # stated far (top row) and near (bottom row) values, i.e. the labelled parameters are the real ones.
        airlight = srgb_decode(np.asarray(params["airlight"], dtype=np.float32))
        scene, observed = srgb_to_linear(good), srgb_to_linear(hazy)
        for row, expected in ((0, params["transmission_far"]), (-1, params["transmission_near"])):
            usable = np.abs(scene[row] - airlight) > 0.3
            if usable.sum() < 8:
                continue
            recovered = (observed[row] - airlight)[usable] / (scene[row] - airlight)[usable]
            assert abs(float(np.median(recovered)) - expected) < 0.05, (row, params)
            rows_checked += 1
    assert rows_checked >= len(crops), "most crops have enough contrast against the airlight to check"


def test_lowlight_is_darker_and_noisier_than_a_clean_exposure_cut(crops):
    for seed, good in enumerate(crops):
        dark, params = add_lowlight(good, np.random.default_rng(seed))
        assert compute_attributes(dark).exposure < compute_attributes(good).exposure - 10.0, params
        clean_cut = linear_to_srgb(srgb_to_linear(good) * 2.0 ** params["ev"])
        assert (dark.astype(np.float32) - clean_cut).std() > 1.0, "low light carries sensor noise"


def test_combined_degradations_are_deterministic_and_labelled(crops):
    one, params = degrade(crops[1], ("blur", "haze"), np.random.default_rng(3))
    two, _ = degrade(crops[1], ("haze", "blur"), np.random.default_rng(3))
    assert np.array_equal(one, two), "application order is fixed, not the order labels are listed in"
    assert set(params) == {"blur", "haze"}
    with pytest.raises(ValueError, match="cannot synthesise degradation"):
        degrade(crops[1], ("rain",), np.random.default_rng(0))


def test_embedded_dataset_splits_counts_determinism_and_cache(tmp_path):
    kwargs = dict(image_size=48, num_train=12, num_eval=8, restoration_fraction=0.25, seed=5)
    train_manifest, eval_manifest = build_embedded_dataset(tmp_path / "a", **kwargs)
    train, held_out = read_manifest(train_manifest), read_manifest(eval_manifest)
    assert not train.rejected and not held_out.rejected
    assert len(train.tasks) == 12 and len(held_out.tasks) == 8
    assert sum(t.kind == "restoration" for t in train.tasks) == 3
    assert sum(t.kind == "restoration" for t in held_out.tasks) == 2
    assert {t.source for t in train.tasks} <= set(EMBEDDED_TRAIN_PHOTOS)
    assert {t.source for t in held_out.tasks} == set(EMBEDDED_EVAL_PHOTOS), "held-out photos only"
    for task in train.tasks + held_out.tasks:
        source, target = read_image(task.input), read_image(task.target)
        assert source.shape == target.shape == (48, 48, 3)
        assert not np.array_equal(source, target)
        if task.kind == "restoration":
            assert task.degradations and not task.known_ops
        else:
            assert task.known_ops and not task.degradations

    # Same recipe elsewhere: byte-identical manifest and images.
    again_train, _ = build_embedded_dataset(tmp_path / "b", **kwargs)
    relative = [json.loads(line) for line in train_manifest.read_text().splitlines()]
    assert train_manifest.read_text() == again_train.read_text()
    for record in relative:
        assert (tmp_path / "a" / "train" / record["input"]).read_bytes() == \
            (tmp_path / "b" / "train" / record["input"]).read_bytes()

    # Cached: a second call with the same recipe rewrites nothing; a new recipe rebuilds.
    stamp = train_manifest.stat().st_mtime_ns
    assert build_embedded_dataset(tmp_path / "a", **kwargs)[0].stat().st_mtime_ns == stamp
    rebuilt, _ = build_embedded_dataset(tmp_path / "a", **{**kwargs, "num_train": 6})
    assert len(read_manifest(rebuilt).tasks) == 6


def test_every_packaged_photo_loads_and_the_splits_share_no_scene():
    from rollout.data.synthesis import EMBEDDED_PHOTO_SOURCES

    photos = dict(embedded_photos(list(EMBEDDED_PHOTO_SOURCES)))
    for name, photo in photos.items():
        assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3, name
        assert min(photo.shape[:2]) >= 256, name
    assert len(set(EMBEDDED_EVAL_PHOTOS)) >= 6, "enough held-out scenes for an interval over scenes"
    assert not set(EMBEDDED_TRAIN_PHOTOS) & set(EMBEDDED_EVAL_PHOTOS)
    with pytest.raises(ValueError, match="unknown embedded photo"):
        embedded_photos(["lena"])


def test_pair_plan_gives_every_photo_both_kinds_and_uses_every_photo_first():
    from collections import Counter

    from rollout.data.synthesis import is_restoration_slot, pair_plan

    plan = pair_plan(48, 8, 0.25)
    assert [restoration for _, restoration in plan] == [is_restoration_slot(i, 0.25) for i in range(48)]
    per_photo = Counter((photo, restoration) for photo, restoration in plan)
    assert all(4 <= per_photo[(photo, False)] <= 5 and 1 <= per_photo[(photo, True)] <= 2 for photo in range(8))
    for pairs, photos in ((8, 8), (5, 5), (12, 5)):
        assert {photo for photo, _ in pair_plan(pairs, photos, 0.25)[:photos]} == set(range(photos))
    assert [photo for photo, _ in pair_plan(3, 8, 0.25)] == [0, 1, 2]
