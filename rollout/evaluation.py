"""Held-out evaluation: image metrics, critic metrics, classical baselines and the markdown table.

Owns the numbers ``photocrafter evaluate`` reports for each method on a held-out set: PSNR, SSIM, LPIPS,
mean |Δ attribute| to the target per attribute, r_photo, compliance rate (edits that followed every tone
suggestion of their critique), critic format rate and the Spearman correlation between the critic's score and
the known degradation severity. Rows without a model are computed here too: the identity, a classical
auto-retouch (grey-pixel white balance, auto contrast and auto exposure on L*) and the oracle (the known
inverse of each synthetic degradation, the upper bound). Paired per-photo comparisons between methods
(bootstrap confidence intervals over photos) are here as well. Attributes and rewards come from ``rewards`` so evaluation and training measure alike.
It must not train or load models itself: model rows come from ``rollout.pipeline`` through the command.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from artist_actor.codec import psnr  # the codec report and evaluation measure PSNR alike
from rollout.records.types import TONE_ATTRIBUTES, Suggestion


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


NEUTRAL_CHROMA = 8.0
"""C*ab below which a mid-tone pixel counts as near-neutral for white balance. 8 keeps an orange cat orange
(its fur does not vote) while greys under a level-3 warmth cast still do."""
MIN_NEUTRAL_FRACTION = 0.03
"""White balance is estimated only when at least this share of mid-tone pixels is near-neutral; a scene with
no neutral surface (a red cup filling the frame) keeps its colours."""
MAX_WHITE_BALANCE_GAIN = 1.6
"""Largest per-channel gain the white balance may apply (and 1/this the smallest)."""
EXPOSURE_BAND = (40.0, 60.0)
"""Median L* band auto exposure leaves alone; a median outside it is moved to the nearer edge."""
LEVELS_CLIP_PERCENT = 0.5
"""Auto contrast stretches the L* range between these percentiles (from each end) to 0–100."""
MAX_LEVELS_STRETCH = 1.6
"""Largest factor auto contrast may stretch the L* range by."""
LINEAR_RGB_LUMINANCE = np.array([0.2126, 0.7152, 0.0722])
"""Y of linear sRGB (the white balance keeps the white's luminance)."""


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(rgb.astype(np.float32), cv2.COLOR_RGB2Lab)


def _lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    import cv2

    return np.clip(cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_Lab2RGB), 0.0, 1.0)


def neutral_white_balance_gains(image: np.ndarray) -> np.ndarray | None:
    """Per-channel linear-RGB gains that make the photo's near-neutral surfaces grey, or ``None``.

    Grey-pixel white balance: only mid-tone pixels whose chroma is below :data:`NEUTRAL_CHROMA` vote, and the
    illuminant is the mean linear RGB of those pixels. Unlike grey-world, it assumes nothing about the scene's
    average colour: with fewer than :data:`MIN_NEUTRAL_FRACTION` of such pixels there is no estimate and the
    colours are kept. The gains keep the white's luminance and are bounded by :data:`MAX_WHITE_BALANCE_GAIN`.
    """
    from rollout.data.degradations import srgb_decode

    rgb = image.astype(np.float32) / 255.0
    lab = _srgb_to_lab(rgb)
    lightness, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    midtones = (lightness > 15.0) & (lightness < 95.0)
    neutral = midtones & (np.hypot(a, b) < NEUTRAL_CHROMA)
    if midtones.sum() < 16 or neutral.sum() < MIN_NEUTRAL_FRACTION * midtones.sum():
        return None
    white = srgb_decode(rgb)[neutral].mean(axis=0).astype(np.float64)
    if white.min() <= 1e-6:
        return None
    luminance = float(white @ LINEAR_RGB_LUMINANCE)
    return np.clip(luminance / white, 1.0 / MAX_WHITE_BALANCE_GAIN, MAX_WHITE_BALANCE_GAIN)


def auto_retouch(image: np.ndarray) -> np.ndarray:
    """Classical baseline: grey-pixel white balance, then auto contrast and auto exposure on L*.

    1. White balance (:func:`neutral_white_balance_gains`): a von Kries gain per channel in linear light, the
       model of the warmth operator's cast; skipped when the photo has no near-neutral surface.
    2. Auto contrast: the L* range between the :data:`LEVELS_CLIP_PERCENT` percentiles is stretched toward
       0–100 (by at most :data:`MAX_LEVELS_STRETCH`, never compressed), about the range's centre.
    3. Auto exposure: a gamma on L* moves the median L* into :data:`EXPOSURE_BAND` (nearer edge); photos
       already inside it are left alone.
    a*, b* are kept through steps 2–3, so tone changes do not shift hue or chroma.
    """
    from rollout.data.degradations import linear_to_srgb, srgb_decode

    rgb = image.astype(np.float32) / 255.0
    gains = neutral_white_balance_gains(image)
    if gains is not None:
        rgb = linear_to_srgb(srgb_decode(rgb) * gains.astype(np.float32)).astype(np.float32) / 255.0
    lab = _srgb_to_lab(rgb)
    lightness = lab[..., 0].astype(np.float64)
    low, high = np.percentile(lightness, [LEVELS_CLIP_PERCENT, 100.0 - LEVELS_CLIP_PERCENT])
    if high - low > 1.0:
        stretch = float(np.clip(100.0 / (high - low), 1.0, MAX_LEVELS_STRETCH))
        centre = 0.5 * (low + high)
        lightness = np.clip(centre + stretch * (lightness - centre), 0.0, 100.0)
    median = float(np.median(lightness))
    goal = float(np.clip(median, *EXPOSURE_BAND))
    if 0.0 < median < 100.0 and goal != median:
        gamma = np.log(goal / 100.0) / np.log(median / 100.0)
        lightness = 100.0 * (lightness / 100.0) ** gamma
    lab[..., 0] = lightness
    return np.clip(np.rint(_lab_to_srgb(lab) * 255.0), 0, 255).astype(np.uint8)


def oracle_output(source: np.ndarray, target: np.ndarray, known_ops, kind: str) -> np.ndarray:
    """The upper-bound row: the known inverse of the synthetic degradation.

    Retouch pairs get their known ops (the inverse of the perturbation) applied to the input with the same
    operators that made the pair; restoration pairs have no exact inverse (noise and blur destroy
    information), so their oracle is the clean target itself.
    """
    from rewards.operators import apply_edit_ops

    if kind == "retouch" and known_ops:
        return apply_edit_ops(source, list(known_ops))
    return target


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


def paired_bootstrap(values: Sequence[float], reference: Sequence[float], *, resamples: int = 10_000,
                     confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(mean difference, low, high): percentile bootstrap interval of mean(values − reference) over pairs.

    ``values[i]`` and ``reference[i]`` are two methods' numbers on the same photo i; photos are resampled with
    replacement, so the interval reflects how much the difference depends on which photos were held out.
    """
    a, b = np.asarray(values, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise ValueError(f"a paired comparison needs two equal-length 1-D series of ≥ 2 photos; got {a.shape} "
                         f"and {b.shape}")
    differences = a - b
    rng = np.random.default_rng(seed)
    means = differences[rng.integers(0, differences.size, (resamples, differences.size))].mean(axis=1)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(differences.mean()), float(low), float(high)


def per_photo(samples: Sequence[SampleMeasurement], num_photos: int) -> dict[str, list[float]]:
    """Per-photo means of r_photo and mean |Δattr| for samples listed sample-major (sample j of photo i at
    index j·num_photos + i), the order ``evaluate`` measures them in."""
    if num_photos < 1 or len(samples) % num_photos:
        raise ValueError(f"{len(samples)} samples are not a whole number of passes over {num_photos} photos")
    photometric = np.array([s.photometric for s in samples]).reshape(-1, num_photos).mean(axis=0)
    attribute = np.array([np.mean(list(s.attribute_error.values())) for s in samples])
    return {"photometric": photometric.tolist(),
            "mean_attribute_error": attribute.reshape(-1, num_photos).mean(axis=0).tolist()}


def compare_to_reference(rows: Sequence[MethodSummary], photo_values: dict[str, dict[str, list[float]]],
                         group_prefix: str, reference: str, seed: int = 0) -> str:
    """Markdown: rows whose name starts with ``group_prefix`` (e.g. one per RL seed) as mean ± std, and the
    paired per-photo bootstrap of (their per-photo mean − ``reference``) for r_photo and mean |Δattr|."""
    members = [row for row in rows if row.method.startswith(group_prefix) and row.method != reference]
    by_name = {row.method: row for row in rows}
    if not members or reference not in by_name:
        raise ValueError(f"--compare {group_prefix}={reference}: need rows starting with {group_prefix!r} and a row "
                         f"named {reference!r}; have {', '.join(by_name)}")
    lines = [f"{group_prefix}* ({len(members)} rows: {', '.join(m.method for m in members)}) against {reference}",
             "", "| metric | " + " | ".join(m.method for m in members) + " | mean ± std | " + reference
             + " | paired Δ (95 % CI) |", "|" + "---|" * (len(members) + 4)]
    for name, key, digits in (("r_photo↑", "photometric", 3), ("mean |Δattr|↓", "mean_attribute_error", 2)):
        values = [getattr(m, key) for m in members]
        group = np.mean([photo_values[m.method][key] for m in members], axis=0)
        difference, low, high = paired_bootstrap(group, photo_values[reference][key], seed=seed)
        spread = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        lines.append(f"| {name} | " + " | ".join(f"{v:.{digits}f}" for v in values)
                     + f" | {np.mean(values):.{digits}f} ± {spread:.{digits}f} | {getattr(by_name[reference], key):.{digits}f}"
                     + f" | {difference:+.{digits + 1}f} [{low:+.{digits + 1}f}, {high:+.{digits + 1}f}] |")
    return "\n".join(lines) + "\n"
