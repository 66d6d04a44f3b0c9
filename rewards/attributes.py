"""Photometric attributes of an sRGB photo in CIE Lab (D65): exposure, contrast, saturation, warmth.

Owns the attribute definitions of ALGORITHMS.md §5.1, their negligible-change tolerances τ_k, and two
implementations that must agree:

- :func:`compute_attributes` — the fast path used by every reward (OpenCV float32 Lab + a lookup-table
  sRGB decode + a closed-form McCamy CCT), a few milliseconds at 512².
- :func:`reference_attributes` — colour-science's explicit sRGB → XYZ → Lab and ``xy_to_CCT`` (McCamy 1992),
  ~20× slower; used by tests and the benchmark to check the fast path, never by training.

Both first reduce the photo to the same fixed downsample (long side ``resolution``), so the attributes of
a 4000 px photo cost the same as a 512 px one and the two paths see identical pixels. This module must not
know about rewards or edits; it only measures.

Definitions (``a_k``): exposure = mean L*; contrast = std L*; saturation = mean C*ab; warmth = 10⁶ / CCT in
mired (higher = warmer) of the grey-world white, i.e. the mean *linear* RGB of mid-tone pixels
(5 < L* < 95; all pixels when there are none) → XYZ → xy → McCamy (1992) CCT clamped to [1667, 25000] K.
A black image has no chromaticity; its warmth is defined as the D65 white's (≈ 153.7 mired).
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Mapping

import numpy as np

from rewards.images import as_rgb_uint8, resize_long_side
from rollout.records.types import TONE_ATTRIBUTES, ToneAttribute

NEGLIGIBLE_CHANGE: Mapping[ToneAttribute, float] = MappingProxyType({
    "exposure": 2.0,    # L*
    "contrast": 1.0,    # L* (std)
    "saturation": 1.0,  # C*ab
    "warmth": 5.0,      # mired
})
"""τ_k: a change of attribute k smaller than this is treated as no change (ALGORITHMS.md §5.1)."""

SRGB_TO_XYZ = np.array([[0.4124, 0.3576, 0.1805],
                        [0.2126, 0.7152, 0.0722],
                        [0.0193, 0.1192, 0.9505]], dtype=np.float64)
"""IEC 61966-2-1 linear sRGB → CIE XYZ (D65), the matrix colour-science uses for ``sRGB``."""

CCT_RANGE_K = (1667.0, 25000.0)
"""CCTs outside this range are clamped (McCamy's cubic is not monotone beyond it)."""

MIDTONE_L_RANGE = (5.0, 95.0)
"""Only pixels with L* strictly inside this range vote for the grey-world white (clipped pixels carry
no colour information)."""


def _mccamy_cct(n: np.ndarray | float) -> np.ndarray | float:
    return 449.0 * n ** 3 + 3525.0 * n ** 2 + 6823.3 * n + 5520.33


def _solve_mccamy_n(cct: float) -> float:
    # Bisection on the increasing branch of the cubic (n > -1.28, where its derivative is positive).
    low, high = -1.27, 3.0
    for _ in range(80):
        mid = 0.5 * (low + high)
        if _mccamy_cct(mid) < cct:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


_MCCAMY_N_RANGE = (_solve_mccamy_n(CCT_RANGE_K[0]), _solve_mccamy_n(CCT_RANGE_K[1]))
D65_MIRED = 1e6 / float(_mccamy_cct((0.31270 - 0.3320) / (0.1858 - 0.32900)))
"""Warmth of the D65 white under McCamy (≈ 153.7 mired), used where an image has no chromaticity."""

_SRGB_DECODE_LUT = np.where(
    (np.arange(256) / 255.0) <= 0.04045,
    (np.arange(256) / 255.0) / 12.92,
    (((np.arange(256) / 255.0) + 0.055) / 1.055) ** 2.4,
).astype(np.float32)
"""uint8 sRGB code value → linear light (IEC 61966-2-1 decoding), exact for 8-bit input."""

_SRGB_ENCODED_LUT = (np.arange(256) / 255.0).astype(np.float32)
"""uint8 sRGB code value → encoded sRGB in [0, 1] (what OpenCV's float Lab conversion expects)."""

# cv2.inRange bounds are inclusive; the grey-world range is exclusive, so step one float32 ulp inwards.
_MIDTONE_LOW = float(np.nextafter(np.float32(MIDTONE_L_RANGE[0]), np.float32(100.0)))
_MIDTONE_HIGH = float(np.nextafter(np.float32(MIDTONE_L_RANGE[1]), np.float32(0.0)))


@dataclass(frozen=True, slots=True)
class PhotometricAttributes:
    """The four tone attributes of one photo (units: L*, L*, C*ab, mired)."""

    exposure: float
    """Mean L* (0–100)."""
    contrast: float
    """Standard deviation of L* (RMS contrast)."""
    saturation: float
    """Mean chroma C*ab = √(a*² + b*²)."""
    warmth: float
    """10⁶ / CCT of the grey-world white, in mired; higher is warmer."""

    def __getitem__(self, attribute: ToneAttribute) -> float:
        return getattr(self, attribute)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def mccamy_mired(xy: np.ndarray) -> float:
    """Warmth in mired of a chromaticity ``xy`` via McCamy (1992), CCT clamped to :data:`CCT_RANGE_K`.

    ``n`` is clamped to the cubic's increasing branch first, so warmth stays monotone for any input.
    """
    x, y = float(xy[0]), float(xy[1])
    denominator = 0.1858 - y
    if not np.isfinite(x) or not np.isfinite(y) or abs(denominator) < 1e-12:
        return D65_MIRED
    n = float(np.clip((x - 0.3320) / denominator, *_MCCAMY_N_RANGE))
    cct = float(np.clip(_mccamy_cct(n), *CCT_RANGE_K))
    return 1e6 / cct


def _grey_world_xy(mean_linear_rgb: np.ndarray) -> np.ndarray | None:
    xyz = SRGB_TO_XYZ @ mean_linear_rgb.astype(np.float64)
    total = float(xyz.sum())
    if total <= 1e-9:
        return None
    return xyz[:2] / total


def downsample_for_attributes(image: np.ndarray, resolution: int = 512) -> np.ndarray:
    """Validate ``image`` and shrink it so its long side is at most ``resolution`` (area filter)."""
    return resize_long_side(as_rgb_uint8(image), resolution)


class _Workspace(threading.local):
    """Per-thread scratch buffers for :func:`compute_attributes`, reused while the image shape repeats.

    Fresh multi-megabyte temporaries are page-faulted in on every call (glibc hands large blocks back to
    the OS); reusing them makes the fast path ~2.5x cheaper at 512².
    """

    shape: tuple[int, int] | None = None

    def buffers(self, height: int, width: int) -> tuple[np.ndarray, ...]:
        if self.shape != (height, width):
            self.encoded = np.empty((height, width, 3), np.float32)
            self.lab = np.empty((height, width, 3), np.float32)
            self.channels = tuple(np.empty((height, width), np.float32) for _ in range(3))
            self.chroma = np.empty((height, width), np.float32)
            self.midtones = np.empty((height, width), np.uint8)
            self.shape = (height, width)
        return self.encoded, self.lab, *self.channels, self.chroma, self.midtones


_workspace = _Workspace()


def compute_attributes(image: np.ndarray, resolution: int = 512) -> PhotometricAttributes:
    """Fast attributes of a uint8 ``[H, W, 3]`` sRGB photo (see the module docstring for definitions).

    Raises :class:`rewards.images.InvalidImageError` for images that are not 3-channel 8-bit (or finite
    float in [0, 1]).
    """
    import cv2

    rgb = downsample_for_attributes(image, resolution)
    encoded, lab, lightness, a_star, b_star, chroma, midtones = _workspace.buffers(*rgb.shape[:2])
    # float32 input makes OpenCV use the exact sRGB curve and D65 white; its uint8 Lab path is off by ~2.4.
    # Every reduction below is an OpenCV call: numpy's boolean indexing and float64 means cost ~10x more.
    cv2.LUT(rgb, _SRGB_ENCODED_LUT, dst=encoded)
    cv2.cvtColor(encoded, cv2.COLOR_RGB2Lab, dst=lab)
    for channel, plane in enumerate((lightness, a_star, b_star)):
        cv2.extractChannel(lab, channel, dst=plane)
    mean_l, std_l = (float(v[0, 0]) for v in cv2.meanStdDev(lightness))
    saturation = float(cv2.mean(cv2.magnitude(a_star, b_star, magnitude=chroma))[0])
    cv2.inRange(lightness, _MIDTONE_LOW, _MIDTONE_HIGH, dst=midtones)
    voters = midtones if cv2.countNonZero(midtones) > 0 else None
    # Grey world from per-channel histograms of the 8-bit codes: Σ_v count(v)·linear(v) is the exact sum of
    # linear values without a float copy of the image.
    counts = [cv2.calcHist([rgb], [c], voters, [256], [0, 256]).ravel().astype(np.float64) for c in range(3)]
    total = counts[0].sum()
    mean_linear = np.array([c @ _SRGB_DECODE_LUT for c in counts]) / max(total, 1.0)
    xy = _grey_world_xy(mean_linear)
    return PhotometricAttributes(
        exposure=mean_l,
        contrast=std_l,
        saturation=saturation,
        warmth=D65_MIRED if xy is None else mccamy_mired(xy),
    )


def reference_attributes(image: np.ndarray, resolution: int = 512) -> PhotometricAttributes:
    """The same attributes through colour-science's explicit conversions (slow; tests and bench only)."""
    import colour

    rgb = downsample_for_attributes(image, resolution)
    linear = colour.cctf_decoding(rgb.astype(np.float64) / 255.0, function="sRGB")
    xyz = colour.RGB_to_XYZ(linear, colour.RGB_COLOURSPACES["sRGB"])
    lab = colour.XYZ_to_Lab(xyz)  # default reference white: CIE 1931 2° D65
    lightness = lab[..., 0]
    chroma = np.hypot(lab[..., 1], lab[..., 2])
    midtones = (lightness > MIDTONE_L_RANGE[0]) & (lightness < MIDTONE_L_RANGE[1])
    voters = xyz[midtones] if midtones.any() else xyz.reshape(-1, 3)
    mean_xyz = voters.mean(axis=0)
    if float(mean_xyz.sum()) <= 1e-9:
        warmth = D65_MIRED
    else:
        cct = float(colour.xy_to_CCT(colour.XYZ_to_xy(mean_xyz), method="McCamy 1992"))
        warmth = 1e6 / float(np.clip(cct, *CCT_RANGE_K))
    return PhotometricAttributes(
        exposure=float(lightness.mean()),
        contrast=float(lightness.std()),
        saturation=float(chroma.mean()),
        warmth=warmth,
    )


def attribute_distance(attributes: PhotometricAttributes, target: PhotometricAttributes) -> float:
    """D = Σ_k |a_k − a_k(target)| / τ_k: distance in units of "just noticeable" changes (§5.4)."""
    return float(sum(abs(attributes[k] - target[k]) / NEGLIGIBLE_CHANGE[k] for k in TONE_ATTRIBUTES))
