"""Evaluation metrics against hand-computed values, the classical baseline and the table."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rollout.evaluation import (SampleMeasurement, auto_enhance, markdown_table, measure, psnr, spearman, ssim,
                                summarise)
from rollout.types import EditOp, Suggestion


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


def test_auto_enhance_removes_a_colour_cast_and_stretches_levels():
    rng = np.random.default_rng(1)
    grey = rng.integers(60, 160, (32, 32, 1)).astype(np.float64)
    cast = np.clip(grey * np.array([1.3, 1.0, 0.7]), 0, 255).astype(np.uint8)
    fixed = auto_enhance(cast)
    means = fixed.reshape(-1, 3).mean(axis=0)
    assert means.max() - means.min() < 3.0 < np.ptp(cast.reshape(-1, 3).mean(axis=0))
    assert fixed.min() <= 2 and fixed.max() >= 253


def test_measure_and_summary_of_a_perfect_and_an_identity_output():
    from rewards.operators import apply_edit_ops

    rng = np.random.default_rng(2)
    target = rng.integers(40, 220, (32, 32, 3), dtype=np.uint8)
    op = EditOp(attribute="exposure", direction=1, level=3)
    source = apply_edit_ops(target, [EditOp(attribute="exposure", direction=-1, level=3)])
    asked = [Suggestion(text="Increase the exposure significantly.", op=op)]
    perfect = measure(source, target, target, lpips_distance=0.0, suggestions=asked, format_ok=True, score=40,
                      severity=3)
    unchanged = measure(source, source, target, lpips_distance=0.2, suggestions=asked, format_ok=False,
                        severity=1)
    assert perfect.photometric == pytest.approx(1.0) and perfect.compliance == 1.0
    assert all(error == 0 for error in perfect.attribute_error.values())
    assert unchanged.compliance == 0.0 and unchanged.attribute_error["exposure"] > 1.0
    assert unchanged.photometric < perfect.photometric
    row = summarise("m", [perfect, unchanged, SampleMeasurement(
        psnr=30.0, ssim=0.9, lpips=0.1, attribute_error=dict(perfect.attribute_error), photometric=1.0,
        format_ok=True, score=80, severity=0)])
    assert row.format_rate == pytest.approx(2 / 3)
    assert row.compliance_rate == pytest.approx(0.5)
    assert row.score_severity_spearman == pytest.approx(1.0)  # the scores fall as severity grows
    assert row.psnr == pytest.approx((100.0 + unchanged.psnr + 30.0) / 3)  # identical pair capped at 100 dB
    table = markdown_table([row])
    assert table.count("\n") == 3 and "| m | 3 |" in table and "0.667" in table
