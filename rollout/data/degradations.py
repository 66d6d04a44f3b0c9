"""Physically motivated restoration degradations with labels: blur, noise, haze and low light.

Owns the restoration half of pair synthesis: each function takes a clean uint8 ``[H, W, 3]`` sRGB photo and
a ``numpy.random.Generator`` and returns the degraded photo plus the parameters it drew, so the same seed
always gives the same pair. Strengths scale with the image's long side, so a 64 px crop and a 1024 px photo
are degraded by the same apparent amount. Tone perturbations (exposure, contrast, saturation, warmth) are
not here: they are the rule-based operators of ``rewards.operators`` (one implementation for data and
rewards). This module must not read or write files.

Models, applied in the physical order scene → optics → exposure → sensor when several are combined:
- haze: atmospheric scattering ``I = J·t + A·(1 − t)``, transmission ``t = exp(−β·d)`` over a synthetic depth
  ramp (far at the top of the frame), airlight ``A`` a bright, slightly tinted grey;
- blur: Gaussian point-spread function (defocus / mild motion approximation);
- lowlight: linear-light exposure cut of 1.5–3 EV, then signal-dependent sensor noise (shot + read noise),
  which is what makes dark photos look dark *and* noisy;
- noise: additive Gaussian read noise or Poisson shot noise, in sRGB code values.
"""

from __future__ import annotations

from typing import Any, Callable

import cv2
import numpy as np

from rollout.records.types import Degradation

RESTORATION_DEGRADATIONS: tuple[Degradation, ...] = ("haze", "blur", "lowlight", "noise")
"""The degradations synthesis can produce, in the order they are applied when combined."""

REFERENCE_LONG_SIDE = 256.0
"""Blur radii are drawn for a photo of this long side and scaled linearly for other sizes."""


def srgb_decode(x: np.ndarray) -> np.ndarray:
    """Float sRGB values in [0, 1] → float32 linear light (IEC 61966-2-1)."""
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def srgb_to_linear(image: np.ndarray) -> np.ndarray:
    """uint8 sRGB → float32 linear light in [0, 1]."""
    return srgb_decode(image.astype(np.float32) / 255.0)


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """float linear light → uint8 sRGB (clipped to [0, 1] first)."""
    x = np.clip(linear, 0.0, 1.0)
    encoded = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055)
    return np.clip(np.rint(encoded * 255.0), 0, 255).astype(np.uint8)


def add_blur(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Gaussian blur with σ drawn from [1.0, 2.5] px at a 256 px long side (scaled with size, ≥ 0.8 px)."""
    scale = max(image.shape[:2]) / REFERENCE_LONG_SIDE
    sigma = max(0.8, float(rng.uniform(1.0, 2.5)) * scale)
    # Blurring in linear light is what a lens does; the difference from sRGB blurring shows at edges.
    blurred = cv2.GaussianBlur(srgb_to_linear(image), ksize=(0, 0), sigmaX=sigma, sigmaY=sigma,
                               borderType=cv2.BORDER_REFLECT_101)
    return linear_to_srgb(blurred), {"sigma_px": round(sigma, 4)}


def add_noise(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Gaussian noise (σ 4–12 code values) or Poisson shot noise (peak 15–60 photons), chosen at random."""
    x = image.astype(np.float32) / 255.0
    if rng.random() < 0.5:
        sigma = float(rng.uniform(4.0, 12.0)) / 255.0
        noisy = x + rng.normal(0.0, sigma, size=x.shape).astype(np.float32)
        params = {"model": "gaussian", "sigma": round(sigma * 255.0, 4)}
    else:
        peak = float(rng.uniform(15.0, 60.0))
        noisy = rng.poisson(x * peak).astype(np.float32) / peak
        params = {"model": "poisson", "peak": round(peak, 4)}
    return np.clip(np.rint(noisy * 255.0), 0, 255).astype(np.uint8), params


def add_haze(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Atmospheric scattering over a depth ramp: transmission 0.35–0.6 at the top, 0.15–0.35 more at the bottom."""
    height, width = image.shape[:2]
    t_far = float(rng.uniform(0.35, 0.6))
    # The near rows keep clearly more of the scene than the far ones, so the depth cue is visible.
    t_near = float(min(0.95, t_far + rng.uniform(0.15, 0.35)))
    airlight_level = float(rng.uniform(0.8, 0.95))
    tint = rng.uniform(-0.03, 0.03, size=3)
    airlight = np.clip(airlight_level + tint, 0.0, 1.0).astype(np.float32)
    # Far (top) to near (bottom): depth falls linearly, so log-transmission rises linearly.
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    transmission = np.exp(np.log(t_far) + rows * (np.log(t_near) - np.log(t_far))).astype(np.float32)
    transmission = np.broadcast_to(transmission, (height, width, 1))
    linear = srgb_to_linear(image)
    hazy = linear * transmission + srgb_decode(airlight) * (1.0 - transmission)
    return linear_to_srgb(hazy), {
        "transmission_far": round(t_far, 4), "transmission_near": round(t_near, 4),
        "airlight": [round(float(v), 4) for v in airlight]}


def add_lowlight(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Exposure cut of 1.5–3 EV in linear light, then shot noise (peak 60–200) plus read noise."""
    ev = float(rng.uniform(1.5, 3.0))
    dark = srgb_to_linear(image) * (2.0 ** -ev)
    peak = float(rng.uniform(60.0, 200.0))
    read_sigma = float(rng.uniform(0.001, 0.004))
    shot = rng.poisson(dark * peak).astype(np.float32) / peak
    noisy = shot + rng.normal(0.0, read_sigma, size=dark.shape).astype(np.float32)
    return linear_to_srgb(noisy), {"ev": round(-ev, 4), "peak": round(peak, 4), "read_sigma": round(read_sigma, 5)}


DEGRADE: dict[str, Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, dict[str, Any]]]] = {
    "haze": add_haze,
    "blur": add_blur,
    "lowlight": add_lowlight,
    "noise": add_noise,
}


def degrade(image: np.ndarray, labels: tuple[Degradation, ...],
            rng: np.random.Generator) -> tuple[np.ndarray, dict[str, dict[str, Any]]]:
    """Apply every degradation in ``labels`` (in the physical order of :data:`RESTORATION_DEGRADATIONS`)."""
    unknown = [label for label in labels if label not in DEGRADE]
    if unknown:
        raise ValueError(f"cannot synthesise degradation(s) {unknown}; known: {', '.join(DEGRADE)}")
    params: dict[str, dict[str, Any]] = {}
    out = image
    for label in RESTORATION_DEGRADATIONS:
        if label in labels:
            out, params[label] = DEGRADE[label](out, rng)
    return out, params


def random_degradation_labels(rng: np.random.Generator) -> tuple[Degradation, ...]:
    """One degradation (70 %) or two compatible ones (30 %), in application order.

    ``lowlight`` already carries sensor noise, so it is never paired with ``noise``; that keeps every label
    an independent, nameable defect the critic can be asked to correct.
    """
    first = RESTORATION_DEGRADATIONS[int(rng.integers(len(RESTORATION_DEGRADATIONS)))]
    chosen = {first}
    if rng.random() < 0.3:
        compatible = [label for label in RESTORATION_DEGRADATIONS
                      if label != first and {label, first} != {"lowlight", "noise"}]
        chosen.add(compatible[int(rng.integers(len(compatible)))])
    return tuple(label for label in RESTORATION_DEGRADATIONS if label in chosen)
