"""Held-out evaluation: image metrics, critic metrics, classical baselines and the markdown table.

Owns the numbers ``photocrafter evaluate`` reports for each method on a held-out set: PSNR, SSIM, LPIPS,
mean |Δ attribute| to the target per attribute, r_photo, compliance rate (edits that followed every tone
suggestion of their critique), critic format rate and the Spearman correlation between the critic's score and
the known degradation severity. Baselines without a model (identity, grey-world white balance + auto levels)
are computed here too. Attributes and rewards come from ``rewards`` so evaluation and training measure alike.
It must not train or load models itself: model rows come from ``rollout.pipeline`` through the command.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from artist_actor.codec import psnr  # the codec report and evaluation measure PSNR alike
from rollout.types import TONE_ATTRIBUTES, Suggestion


def _gaussian_filter(channel: np.ndarray, sigma: float = 1.5, radius: int = 5) -> np.ndarray:
    """'Valid' separable Gaussian filtering (the 11-tap window of Wang et al. 2004)."""
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(offsets ** 2) / (2 * sigma ** 2))
    kernel /= kernel.sum()
    rows = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="valid"), 1, channel)
    return np.apply_along_axis(lambda c: np.convolve(c, kernel, mode="valid"), 0, rows)


def ssim(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean structural similarity (Gaussian σ = 1.5, 11×11, K1 = 0.01, K2 = 0.03) averaged over RGB channels."""
    if reference.shape != test.shape:
        raise ValueError(f"SSIM needs same-sized images; got {reference.shape} and {test.shape}")
    if min(reference.shape[:2]) < 11:
        raise ValueError(f"SSIM needs images of at least 11×11 pixels; got {reference.shape[:2]}")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for channel in range(reference.shape[2]):
        x = reference[..., channel].astype(np.float64)
        y = test[..., channel].astype(np.float64)
        mu_x, mu_y = _gaussian_filter(x), _gaussian_filter(y)
        var_x = _gaussian_filter(x * x) - mu_x ** 2
        var_y = _gaussian_filter(y * y) - mu_y ** 2
        cov = _gaussian_filter(x * y) - mu_x * mu_y
        index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
        values.append(float(index.mean()))
    return float(np.mean(values))


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation with average ranks for ties; NaN when either side is constant or n < 2."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"spearman needs equal lengths; got {x.shape} and {y.shape}")
    if x.size < 2:
        return math.nan
    rank_x, rank_y = _average_ranks(x), _average_ranks(y)
    if rank_x.std() == 0 or rank_y.std() == 0:
        return math.nan
    return float(np.corrcoef(rank_x, rank_y)[0, 1])


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.arange(1, values.size + 1)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def auto_enhance(image: np.ndarray, clip_percent: float = 0.5) -> np.ndarray:
    """Classical baseline: grey-world white balance, then per-image auto levels (clip ``clip_percent`` % at
    each end of the luminance histogram and stretch to 0–255)."""
    pixels = image.astype(np.float64)
    means = pixels.reshape(-1, 3).mean(axis=0)
    balanced = pixels * (means.mean() / np.maximum(means, 1e-6))
    luminance = balanced @ np.array([0.299, 0.587, 0.114])
    low, high = np.percentile(luminance, [clip_percent, 100.0 - clip_percent])
    if high - low < 1e-6:
        return np.clip(balanced, 0, 255).round().astype(np.uint8)
    stretched = (balanced - low) * (255.0 / (high - low))
    return np.clip(stretched, 0, 255).round().astype(np.uint8)


@dataclass(slots=True)
class SampleMeasurement:
    """Every per-photo number of one method on one held-out task."""

    psnr: float
    ssim: float
    lpips: float
    attribute_error: dict[str, float]
    """|a_k(output) − a_k(target)| per tone attribute."""
    photometric: float
    """r_photo of the output."""
    compliance: float | None = None
    """1 when the output followed every tone suggestion of the method's critique (None: no critique)."""
    format_ok: bool | None = None
    score: float | None = None
    severity: float = 0.0


def measure(source: np.ndarray, output: np.ndarray, target: np.ndarray, *, lpips_distance: float,
            suggestions: Sequence[Suggestion] | None = None, format_ok: bool | None = None,
            score: float | None = None, severity: float = 0.0, attribute_resolution: int = 512,
            compliance_margin: float = 0.5) -> SampleMeasurement:
    """The metrics of one output against its target (and its input, for r_photo and compliance)."""
    from rewards.artist import compliance_reward, photometric_reward
    from rewards.attributes import compute_attributes

    before = compute_attributes(source, attribute_resolution)
    after = compute_attributes(output, attribute_resolution)
    goal = compute_attributes(target, attribute_resolution)
    compliance = None
    if suggestions is not None:
        compliance = float(compliance_reward(suggestions, before, after, compliance_margin) == 1.0)
    return SampleMeasurement(
        psnr=psnr(target, output), ssim=ssim(target, output), lpips=float(lpips_distance),
        attribute_error={k: abs(after[k] - goal[k]) for k in TONE_ATTRIBUTES},
        photometric=photometric_reward(before, after, goal), compliance=compliance, format_ok=format_ok,
        score=score, severity=severity)


@dataclass(slots=True)
class MethodSummary:
    """One row of the evaluation table."""

    method: str
    count: int
    psnr: float
    ssim: float
    lpips: float
    attribute_error: dict[str, float]
    mean_attribute_error: float
    photometric: float
    compliance_rate: float | None
    format_rate: float | None
    score_severity_spearman: float | None
    extras: dict[str, float] = field(default_factory=dict)


def summarise(method: str, samples: Sequence[SampleMeasurement]) -> MethodSummary:
    """Means over a method's held-out samples (PSNR of identical pairs is capped at 100 dB for the mean).

    The score/severity correlation is negated so that +1 means "the score falls as degradation grows".
    """
    if not samples:
        raise ValueError(f"method {method!r} has no measured samples")
    errors = {k: float(np.mean([s.attribute_error[k] for s in samples])) for k in TONE_ATTRIBUTES}
    compliance = [s.compliance for s in samples if s.compliance is not None]
    formats = [s.format_ok for s in samples if s.format_ok is not None]
    scored = [(s.score, s.severity) for s in samples if s.score is not None]
    correlation = None
    if formats:
        correlation = -spearman([a for a, _ in scored], [b for _, b in scored]) if len(scored) >= 2 else math.nan
    return MethodSummary(
        method=method, count=len(samples),
        psnr=float(np.mean([min(s.psnr, 100.0) for s in samples])),
        ssim=float(np.mean([s.ssim for s in samples])),
        lpips=float(np.mean([s.lpips for s in samples])),
        attribute_error=errors, mean_attribute_error=float(np.mean(list(errors.values()))),
        photometric=float(np.mean([s.photometric for s in samples])),
        compliance_rate=float(np.mean(compliance)) if compliance else None,
        format_rate=float(np.mean(formats)) if formats else None,
        score_severity_spearman=correlation)


def _cell(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}"


def markdown_table(rows: Sequence[MethodSummary]) -> str:
    """The evaluation table in markdown (one row per method; — where a metric does not apply)."""
    header = ["method", "n", "PSNR↑", "SSIM↑", "LPIPS↓", *(f"|Δ{k}|↓" for k in TONE_ATTRIBUTES),
              "mean |Δattr|↓", "r_photo↑", "compliance↑", "format rate↑", "−ρ(score, severity)↑"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.method, str(row.count), _cell(row.psnr, 2), _cell(row.ssim), _cell(row.lpips),
                 *(_cell(row.attribute_error[k], 2) for k in TONE_ATTRIBUTES), _cell(row.mean_attribute_error, 2),
                 _cell(row.photometric), _cell(row.compliance_rate), _cell(row.format_rate),
                 _cell(row.score_severity_spearman)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
