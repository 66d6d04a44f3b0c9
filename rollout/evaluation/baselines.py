"""The rows of a held-out evaluation that need no model: the identity, a classical auto-retouch and the oracle.

Owns the baselines every model row is read against: ``identity`` (the input unchanged, the row a model must
beat to be worth running), ``auto-retouch`` (grey-pixel white balance, auto contrast and auto exposure on L*:
what a photo app does without learning) and ``oracle`` (the known inverse of each synthetic degradation: the
upper bound of what any edit can score). It must not load models or compute metrics.
"""

from __future__ import annotations

import numpy as np

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
