"""Rule-based tone edit operators: exposure, contrast, saturation and warmth at three magnitude levels.

Owns the numeric size of every magnitude level (ALGORITHMS.md §5.2) and the one implementation of each
operator. The same code synthesises training pairs (a good photo degraded by ops, with the inverse ops
recorded as the known fix) and builds the suggestion reward's pseudo-edit, so "moderately warmer" means
exactly the same thing to the data, the critic's reward and the tests. It must not parse text: the word →
level mapping belongs to the critic's grammar, which hands over :class:`rollout.records.types.EditOp` records.

Operators (direction d = ±1, magnitude m = the level's value for the attribute):

- warmth:     linear R × (1 + d·m), B × (1 − d·m), then each pixel rescaled to keep its luminance Y.
- exposure:   linear RGB × 2^(d·m) (m in EV).
- contrast:   L* ← μ_L + (1 + d·m)(L* − μ_L), a*b* kept (μ_L = the photo's mean L*).
- saturation: (a*, b*) × (1 + d·m), L* kept.

They are applied in the fixed order warmth → exposure → contrast → saturation whatever order the ops are
listed in (ops on the same attribute keep their listed order); results are clipped to the sRGB gamut.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType
from typing import Mapping

import numpy as np

from rewards.images import as_rgb_uint8
from rollout.records.types import EditOp, ToneAttribute

OPERATION_ORDER: tuple[ToneAttribute, ...] = ("warmth", "exposure", "contrast", "saturation")
"""Order in which ops are applied: white balance first (on scene-linear light), tone curve last."""

LEVEL_MAGNITUDES: Mapping[ToneAttribute, tuple[float, float, float]] = MappingProxyType({
    "exposure": (0.25, 0.5, 1.0),      # EV (stops): linear light × 2^(±EV)
    "contrast": (0.15, 0.30, 0.50),    # fractional change of the L* spread around its mean
    "saturation": (0.15, 0.30, 0.50),  # fractional change of a*, b*
    "warmth": (0.04, 0.08, 0.15),      # red/blue gain g in linear light (≈ 190·g mired on mid-key photos)
})
"""Numeric magnitude of levels 1 (slightly), 2 (moderately), 3 (significantly) per attribute."""

_LUMINANCE = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
"""Rec. 709 / sRGB luminance weights of linear R, G, B (the Y row of the sRGB → XYZ matrix)."""


def magnitude(op: EditOp) -> float:
    """The unsigned numeric size of ``op`` (EV for exposure, fraction for contrast/saturation, gain for
    warmth)."""
    return LEVEL_MAGNITUDES[op.attribute][op.level - 1]


def invert_op(op: EditOp) -> EditOp:
    """The op that undoes ``op`` to first order: same attribute and level, opposite direction."""
    return EditOp(attribute=op.attribute, direction=-op.direction, level=op.level)


def _srgb_decode(encoded: np.ndarray) -> np.ndarray:
    return np.where(encoded <= 0.04045, encoded / 12.92, ((encoded + 0.055) / 1.055) ** 2.4).astype(np.float32)


def _srgb_encode(linear: np.ndarray) -> np.ndarray:
    linear = np.clip(linear, 0.0, 1.0)
    return np.where(linear <= 0.0031308, linear * 12.92,
                    1.055 * np.power(linear, 1.0 / 2.4) - 0.055).astype(np.float32)


def _apply_warmth(linear: np.ndarray, signed: float) -> np.ndarray:
    luminance_before = linear @ _LUMINANCE
    gains = np.array([1.0 + signed, 1.0, 1.0 - signed], dtype=np.float32)
    shifted = linear * gains
    luminance_after = shifted @ _LUMINANCE
    # Keep each pixel's luminance so a white-balance shift does not also read as an exposure change.
    scale = np.divide(luminance_before, luminance_after, out=np.ones_like(luminance_before),
                      where=luminance_after > 1e-8)
    return shifted * scale[..., None]


def _apply_contrast(lab: np.ndarray, signed: float) -> np.ndarray:
    lightness = lab[..., 0]
    mean = float(lightness.mean(dtype=np.float64))
    lab[..., 0] = np.clip(mean + (1.0 + signed) * (lightness - mean), 0.0, 100.0)
    return lab


def _apply_saturation(lab: np.ndarray, signed: float) -> np.ndarray:
    lab[..., 1:] *= np.float32(1.0 + signed)
    return lab


def apply_edit_ops(image: np.ndarray, ops: Sequence[EditOp]) -> np.ndarray:
    """Apply rule-based tone ``ops`` to a uint8 ``[H, W, 3]`` sRGB photo; returns a new uint8 array.

    Ops are applied in :data:`OPERATION_ORDER` (warmth → exposure → contrast → saturation) regardless of
    their order in ``ops``. No ops returns an unchanged copy. Raises
    :class:`rewards.images.InvalidImageError` for images that are not 3-channel 8-bit sRGB.
    """
    return _apply_steps(image, [(op.attribute, op.direction * magnitude(op)) for op in ops])


def apply_adjustments(image: np.ndarray, amounts: Mapping[ToneAttribute, float]) -> np.ndarray:
    """Apply continuous signed amounts per attribute (EV for exposure, fractions for contrast/saturation,
    gain for warmth) with the same operators and order as :func:`apply_edit_ops`.

    For calibration and tests that need an edit of an exact size between the discrete levels.
    """
    return _apply_steps(image, [(attribute, float(amount)) for attribute, amount in amounts.items()])


def _apply_steps(image: np.ndarray, steps: Sequence[tuple[ToneAttribute, float]]) -> np.ndarray:
    import cv2

    rgb = as_rgb_uint8(image, "image")
    ordered = sorted(steps, key=lambda step: OPERATION_ORDER.index(step[0]))
    if not ordered:
        return rgb.copy()
    encoded = rgb.astype(np.float32) / np.float32(255.0)
    linear_steps = [step for step in ordered if step[0] in ("warmth", "exposure")]
    lab_steps = [step for step in ordered if step[0] in ("contrast", "saturation")]
    if linear_steps:
        linear = _srgb_decode(encoded)
        for attribute, signed in linear_steps:
            if attribute == "warmth":
                linear = _apply_warmth(linear, signed)
            else:
                linear = linear * np.float32(2.0 ** signed)
        encoded = _srgb_encode(linear)
    if lab_steps:
        lab = cv2.cvtColor(encoded, cv2.COLOR_RGB2Lab)
        for attribute, signed in lab_steps:
            lab = _apply_contrast(lab, signed) if attribute == "contrast" else _apply_saturation(lab, signed)
        encoded = np.clip(cv2.cvtColor(lab, cv2.COLOR_Lab2RGB), 0.0, 1.0)
    return np.rint(encoded * np.float32(255.0)).astype(np.uint8)
