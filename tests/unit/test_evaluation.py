"""Evaluation metrics against hand-computed values, the classical baselines, and one method's per-pair records."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rewards.attributes import compute_attributes
from rewards.operators import apply_edit_ops
from rollout.evaluation import (CritiqueMeasurement, EditMeasurement, PairResult, auto_retouch, mean_edit,
                                measure_critique, measure_edit, oracle_output, psnr, spearman, ssim, summarise)
from rollout.records.types import EditOp, Suggestion


def test_psnr_hand_values():
    zeros = np.zeros((16, 16, 3), np.uint8)
    assert psnr(zeros, zeros + 1) == pytest.approx(10 * math.log10(255 ** 2), abs=1e-9)  # 48.13 dB
    assert psnr(zeros, zeros) == math.inf
    half = zeros.copy()
    half[:8] = 2  # mse = 2 on half the pixels → 2
    assert psnr(zeros, half) == pytest.approx(10 * math.log10(255 ** 2 / 2.0))
    with pytest.raises(ValueError, match="same-sized"):
        psnr(zeros, zeros[:8])


def test_ssim_hand_values():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert ssim(image, image) == pytest.approx(1.0)
    flat_a, flat_b = np.full((16, 16, 3), 100, np.uint8), np.full((16, 16, 3), 110, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert ssim(flat_a, flat_b) == pytest.approx((2 * 100 * 110 + c1) / (100 ** 2 + 110 ** 2 + c1))  # 0.99548
    noisy = [np.clip(image.astype(int) + rng.normal(0, sigma, image.shape), 0, 255).astype(np.uint8)
             for sigma in (10, 40)]
    assert 1.0 > ssim(image, noisy[0]) > ssim(image, noisy[1])


def test_spearman_hand_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))  # 0.9487, average ranks
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def _grey_card_scene(rng: np.random.Generator) -> np.ndarray:
    """A 64 px scene of neutral greys (a card, a wall) with one saturated red and one green patch."""
    scene = np.repeat(rng.integers(70, 190, (64, 64, 1)), 3, axis=2).astype(np.uint8)
    scene[8:24, 8:24] = (190, 40, 40)
    scene[40:56, 36:56] = (40, 150, 60)
    return scene


def test_auto_retouch_cools_a_warm_cast_back_toward_the_scene():
    scene = _grey_card_scene(np.random.default_rng(1))
    warm = apply_edit_ops(scene, [EditOp(attribute="warmth", direction=1, level=3)])
    truth, cast, fixed = (compute_attributes(x).warmth for x in (scene, warm, auto_retouch(warm)))
    assert cast - truth > 20.0, "the cast is real"
    assert fixed < cast - 15.0 and abs(fixed - truth) < 0.4 * abs(cast - truth)
    # The neutral wall ends up neutral: R, G and B of the grey pixels agree within a few code values.
    wall = auto_retouch(warm)[30:36, 4:30].reshape(-1, 3).astype(float).mean(axis=0)
    assert np.ptp(wall) < 6.0 < np.ptp(warm[30:36, 4:30].reshape(-1, 3).astype(float).mean(axis=0))


def test_auto_retouch_keeps_a_red_scene_red():
    """A frame filled by a red cup has no neutral surface: grey-world would turn it cyan, this keeps it."""
    rng = np.random.default_rng(2)
    shade = rng.uniform(0.6, 1.0, (64, 64, 1))
    red = np.clip(np.array([200.0, 45.0, 35.0]) * shade, 0, 255).astype(np.uint8)
    out = auto_retouch(red).reshape(-1, 3).astype(float).mean(axis=0)
    assert out[0] > 2.5 * out[1] and out[0] > 2.5 * out[2], f"red scene lost its red: mean RGB {out}"
    before, after = compute_attributes(red), compute_attributes(auto_retouch(red))
    assert abs(after.warmth - before.warmth) < 10.0 and after.saturation > 0.9 * before.saturation


def test_auto_retouch_lifts_a_dark_flat_photo_and_leaves_a_good_one_alone():
    scene = _grey_card_scene(np.random.default_rng(3))
    dark = apply_edit_ops(scene, [EditOp(attribute="exposure", direction=-1, level=3),
                                  EditOp(attribute="exposure", direction=-1, level=3),
                                  EditOp(attribute="contrast", direction=-1, level=3)])
    before, after = compute_attributes(dark), compute_attributes(auto_retouch(dark))
    assert after.exposure > before.exposure + 5.0 and after.contrast > 1.5 * before.contrast
    good = compute_attributes(scene)
    kept = compute_attributes(auto_retouch(scene))
    assert abs(kept.exposure - good.exposure) < 3.0 and abs(kept.warmth - good.warmth) < 5.0


def test_oracle_is_the_known_inverse():
    scene = _grey_card_scene(np.random.default_rng(4))
    degraded = apply_edit_ops(scene, [EditOp(attribute="exposure", direction=-1, level=2)])
    fix = (EditOp(attribute="exposure", direction=1, level=2),)
    restored = oracle_output(degraded, scene, fix, "retouch")
    assert np.abs(restored.astype(int) - scene.astype(int)).max() <= 2
    assert oracle_output(degraded, scene, (), "restoration") is scene


def test_measure_and_summary_of_a_perfect_and_an_identity_output():
    rng = np.random.default_rng(2)
    target = rng.integers(40, 220, (32, 32, 3), dtype=np.uint8)
    op = EditOp(attribute="exposure", direction=1, level=3)
    source = apply_edit_ops(target, [EditOp(attribute="exposure", direction=-1, level=3)])
    asked = [Suggestion(text="Increase the exposure significantly.", op=op)]
    perfect = measure_edit(source, target, target, lpips_distance=0.0, suggestions=asked)
    unchanged = measure_edit(source, source, target, lpips_distance=0.2, suggestions=asked)
    assert perfect.photometric == pytest.approx(1.0) and perfect.compliance == 1.0
    assert perfect.psnr == 100.0, "an exact output's PSNR is capped, so means stay finite"
    assert all(error == 0 for error in perfect.attribute_error.values())
    assert unchanged.compliance == 0.0 and unchanged.attribute_error["exposure"] > 1.0
    assert unchanged.photometric < perfect.photometric

    def pair(index, edit, score, severity, format_ok=True):
        return PairResult(task_id=f"p{index}", scene=f"s{index % 2}", kind="retouch", severity=severity, edit=edit,
                          critique=CritiqueMeasurement(format_ok=format_ok, score=score, suggestion=float(format_ok)))

    third = EditMeasurement(psnr=30.0, ssim=0.9, lpips=0.1, attribute_error=dict(perfect.attribute_error),
                            photometric=1.0)
    row = summarise("m", [pair(0, perfect, 40, 3), pair(1, unchanged, 60, 1, format_ok=False), pair(2, third, 80, 0)])
    assert (row.pairs, row.scenes, row.draws) == (3, 2, 1)
    assert row.format_rate == pytest.approx(2 / 3) and row.suggestion_rate == pytest.approx(2 / 3)
    assert row.compliance_rate == pytest.approx(0.5)  # the third output was not conditioned on a critique
    assert row.score_severity_spearman == pytest.approx(1.0)  # the scores fall as severity grows
    assert row.psnr == pytest.approx((100.0 + unchanged.psnr + 30.0) / 3)


def test_draws_of_a_pair_are_averaged_into_one_pair():
    a = EditMeasurement(psnr=20.0, ssim=0.5, lpips=0.2, attribute_error={k: 2.0 for k in ("exposure", "contrast",
                        "saturation", "warmth")}, photometric=0.2, compliance=1.0)
    b = EditMeasurement(psnr=30.0, ssim=0.7, lpips=0.0, attribute_error={k: 4.0 for k in a.attribute_error},
                        photometric=0.6, compliance=0.0)
    mean = mean_edit([a, b])
    assert (mean.psnr, mean.ssim, mean.photometric, mean.compliance) == pytest.approx((25.0, 0.6, 0.4, 0.5))
    assert mean.mean_attribute_error == pytest.approx(3.0)
    row = summarise("m", [PairResult(task_id="p", scene="s", kind="retouch", severity=1, edit=mean, draws=2,
                                     spread=0.5)])
    assert row.pairs == 1 and row.draws == 2 and row.draw_spread == 0.5


def test_critique_measurement_scores_the_suggestions_against_the_pair():
    from rollout.records.types import ParsedCritique, PhotoTask

    rng = np.random.default_rng(6)
    target = rng.integers(40, 220, (32, 32, 3), dtype=np.uint8)
    source = apply_edit_ops(target, [EditOp(attribute="exposure", direction=-1, level=3)])
    brighter, darker = (EditOp(attribute="exposure", direction=d, level=3) for d in (1, -1))
    task = PhotoTask(task_id="t", input=source, target=target, known_ops=(brighter,))
    right = ParsedCritique(suggestions=[Suggestion(text="", op=brighter)], score=40, format_ok=True)
    wrong = ParsedCritique(suggestions=[Suggestion(text="", op=darker)], score=40, format_ok=True)
    assert measure_critique(task, source, target, right, "").suggestion == 1.0
    assert measure_critique(task, source, target, wrong, "").suggestion == 0.0
    noisy = PhotoTask(task_id="n", input=source, target=target, kind="restoration", degradations=("noise",))
    denoise = ParsedCritique(suggestions=[Suggestion(text="", restoration="noise")], score=40, format_ok=False)
    measured = measure_critique(noisy, source, target, denoise, "")
    assert measured.suggestion == 1.0 and measured.format_ok is False


def test_every_pair_and_draw_gets_its_own_noise_and_the_spread_between_draws_is_measured():
    import torch

    from artist_actor.sampler import initial_noise
    from rollout.commands.evaluate import noise_seeds
    from rollout.evaluation import draw_spread

    seeds = [seed for pair in range(48) for seed in noise_seeds(0, pair, 48, 4)]
    assert len(seeds) == len(set(seeds)) == 192, "no two (pair, draw) share a noise seed"
    assert noise_seeds(7, 3, 48, 2) == [10, 58], "the stated rule: seed + pair + draw × pairs"
    first, second = (initial_noise(seed, 16, 64) for seed in noise_seeds(0, 0, 48, 2))
    assert not torch.equal(first, second) and torch.equal(first, initial_noise(0, 16, 64))
    image = np.random.default_rng(0).integers(0, 250, (16, 16, 3), dtype=np.uint8)
    assert draw_spread([image]) is None
    assert draw_spread([image, image.copy()]) == 0.0, "draws the artist's noise did not change are reported as such"
    assert draw_spread([image, image + 2, image + 4]) == pytest.approx(3.0)
