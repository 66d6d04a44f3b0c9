"""Exploration in the space the artist's reward measures: a seeded, random global tone change of an edit.

Owns the optional perturbation a sampler applies to each edit it produced, before the edit is recorded. The
artist's reward (r_photo, compliance) measures four global attributes — exposure, contrast, saturation and
warmth — and an artist whose DiT largely ignores its initial noise makes K edits of one critique that agree on
all four, so DiffusionNFT's in-group advantages carry no signal. Per-pixel noise (Flow-GRPO-style SDE steps)
does not help: it averages out of global attributes. This module draws, from each edit's own seed, one small
change along each of the four attribute directions and applies it to the decoded edit:

- exposure: linear light × 2^e (``e`` in EV),
- warmth: linear R × (1 + w), B × (1 − w), rescaled to keep the luminance (``w`` as the warmth operator's gain),
- contrast: the encoded values stretched by (1 + c) about the photo's mean luma,
- saturation: each pixel's distance from its own luma scaled by (1 + s).

Each amount is normal with a standard deviation of ``scale`` × the amount of a level-1 ("slightly") tone op
(:data:`LEVEL_ONE_AMOUNTS`, the levels of ALGORITHMS.md §5.2), clipped to ±3 standard deviations. DiffusionNFT
is likelihood-free: it only needs the clean sample the reward scored, so the sampler re-encodes the perturbed
photo and records that latent as the edit's x0 (ALGORITHMS.md §3). The draw is a pure function of the edit's
seed, so a re-run reproduces it. It must not know about models, rewards or Ray; it works on decoded photos as
float ``[B, 3, H, W]`` in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

LEVEL_ONE_AMOUNTS: dict[str, float] = {"exposure": 0.25, "warmth": 0.04, "contrast": 0.15, "saturation": 0.15}
"""The amount of a level-1 tone op of each kind (EV; warmth gain; contrast and saturation factors): one unit of
the exploration scale along each attribute."""

CLIP_STDS = 3.0
"""Drawn amounts are clipped to this many standard deviations: no edit is moved by an outlier draw."""

_SEED_STREAM = 0x70C0DE
"""Second entry of each draw's seed sequence, so the tone change never shares a stream with the edit's noise."""

_LUMA = (0.2126, 0.7152, 0.0722)
"""Rec. 709 / sRGB luminance weights (of linear light for the warmth rescale, of encoded values for luma)."""


@dataclass(frozen=True, slots=True)
class ToneChange:
    """The four amounts applied to one edit."""

    exposure: float
    """EV: linear light × 2^exposure."""
    warmth: float
    """Gain w: linear R × (1 + w), B × (1 − w), then rescaled to the original luminance."""
    contrast: float
    """Factor c: encoded values about the mean luma × (1 + c)."""
    saturation: float
    """Factor s: each pixel's distance from its luma × (1 + s)."""

    @property
    def is_identity(self) -> bool:
        return not any((self.exposure, self.warmth, self.contrast, self.saturation))


def draw_tone_change(seed: int, scale: float) -> ToneChange:
    """The tone change of the edit with noise seed ``seed`` at exploration ``scale`` (0 = no change)."""
    if scale < 0:
        raise ValueError(f"exploration scale must be ≥ 0; got {scale}")
    if scale == 0:
        return ToneChange(0.0, 0.0, 0.0, 0.0)
    rng = np.random.default_rng([int(seed), _SEED_STREAM])
    draws = np.clip(rng.standard_normal(4), -CLIP_STDS, CLIP_STDS) * scale
    amounts = [float(d * LEVEL_ONE_AMOUNTS[name]) for d, name in zip(draws, ("exposure", "warmth", "contrast",
                                                                              "saturation"))]
    return ToneChange(*amounts)


def _decode_srgb(encoded: torch.Tensor) -> torch.Tensor:
    return torch.where(encoded <= 0.04045, encoded / 12.92, ((encoded + 0.055) / 1.055) ** 2.4)


def _encode_srgb(linear: torch.Tensor) -> torch.Tensor:
    linear = linear.clamp(0.0, 1.0)
    return torch.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear.clamp_min(1e-12) ** (1 / 2.4) - 0.055)


def apply_tone_changes(pixels: torch.Tensor, changes: Sequence[ToneChange]) -> torch.Tensor:
    """``pixels`` float ``[B, 3, H, W]`` in [-1, 1] with ``changes[b]`` applied to item b; same shape and range.

    Items whose change is the identity are returned bit for bit.
    """
    if pixels.ndim != 4 or pixels.shape[1] != 3 or pixels.shape[0] != len(changes):
        raise ValueError(f"need pixels [B, 3, H, W] and one tone change per item; got {tuple(pixels.shape)} and "
                         f"{len(changes)} changes")
    out = pixels.clone()
    luma = torch.tensor(_LUMA, dtype=torch.float64, device=pixels.device).view(3, 1, 1)
    for index, change in enumerate(changes):
        if change.is_identity:
            continue
        encoded = (pixels[index].double() + 1.0) / 2.0
        linear = _decode_srgb(encoded.clamp(0.0, 1.0))
        linear = linear * 2.0 ** change.exposure
        if change.warmth:
            luminance = (linear * luma).sum(dim=0, keepdim=True)
            gains = torch.tensor([1.0 + change.warmth, 1.0, 1.0 - change.warmth], dtype=torch.float64,
                                 device=pixels.device).view(3, 1, 1)
            warmed = linear * gains
            linear = warmed * luminance / (warmed * luma).sum(dim=0, keepdim=True).clamp_min(1e-12)
        encoded = _encode_srgb(linear)
        pixel_luma = (encoded * luma).sum(dim=0, keepdim=True)
        encoded = pixel_luma + (1.0 + change.saturation) * (encoded - pixel_luma)
        mean_luma = pixel_luma.mean()
        encoded = mean_luma + (1.0 + change.contrast) * (encoded - mean_luma)
        out[index] = (encoded.clamp(0.0, 1.0) * 2.0 - 1.0).to(pixels.dtype)
    return out
