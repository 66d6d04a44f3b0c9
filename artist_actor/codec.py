"""Latent codecs of the Photographic Artist: photos ⇄ the latent grid the DiT denoises.

Owns the codec interface and its two implementations, plus the reconstruction report ``init-models`` prints.
Every codec maps a batch of photos, float ``[B, 3, H, W]`` in [-1, 1] (H, W multiples of 16), to latents
``[B, C, H/d, W/d]`` (d = the codec's ``downscale``) and back, so packing (2×2 → ``4·C`` features per token at
1/(2d)) and everything after it is identical whichever codec is used:

- :class:`VaeCodec` wraps a real ``AutoencoderKLQwenImage`` (d = 8, z_dim 16 → 64 features per token),
  normalising latents with the VAE config's per-channel ``latents_mean`` / ``latents_std`` exactly as the
  Qwen-Image-Edit pipeline does.
- :class:`PixelUnshuffleCodec` is the embedded default's lossless space-to-depth codec: each d×d×3 pixel block
  becomes 3·d² latent channels. Its values are the pixels already mapped by x → 2x − 1, so latents are
  zero-centred with roughly unit scale, like normalised VAE latents. A tiny random VAE would decode noise and
  make every photometric reward meaningless; this codec keeps photos intact. The embedded artist uses d = 2
  (48 features per 4×4-pixel token): its token must not be wider than the tiny DiT's inner width, or the
  velocity of every token is squeezed through a bottleneck and flow matching cannot fit (measured: d = 8,
  768 features per token through a 64-wide DiT, plateaus at velocity MSE ≈ 1.0).

This module must not import ``rewards``: the Lab-attribute part of the report takes the attribute function as
an argument, supplied by the caller (the ``init-models`` command or a test).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np
import torch

VAE_DOWNSCALE = 8
"""Pixels per latent cell along each side of the Qwen-Image VAE."""


class LatentCodec(Protocol):
    """Maps photos to the DiT's latent grid and back. Both directions are deterministic."""

    name: str
    """``vae`` or ``pixel_unshuffle``; recorded in the artist directory and in logs."""
    latent_channels: int
    """C of the ``[B, C, H/d, W/d]`` latents (16 for the Qwen-Image VAE, 3·d² for pixel-unshuffle)."""
    downscale: int
    """d: pixels per latent cell along each side (8 for the Qwen-Image VAE)."""

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """float ``[B, 3, H, W]`` in [-1, 1] → normalised latents ``[B, C, H/d, W/d]``."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[B, C, H/d, W/d]`` → float ``[B, 3, H, W]`` in [-1, 1]."""
        ...


def token_grid(size: tuple[int, int], codec: LatentCodec) -> tuple[int, int]:
    """Packed token grid (rows, cols) of a photo of ``size`` (H, W) pixels: 2×2 latent cells per token."""
    cell = 2 * codec.downscale
    return size[0] // cell, size[1] // cell


class PixelUnshuffleCodec:
    """Lossless space-to-depth codec: d×d×3 pixel blocks ⇄ 3·d² latent channels, values 2x − 1."""

    name = "pixel_unshuffle"

    def __init__(self, downscale: int = 2):
        if downscale not in (1, 2, 4, 8):
            raise ValueError(f"pixel-unshuffle downscale must be 1, 2, 4 or 8 (photos are multiples of 16); "
                             f"got {downscale}")
        self.downscale = int(downscale)
        self.latent_channels = 3 * self.downscale * self.downscale

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        _check_pixels(pixels)
        return torch.nn.functional.pixel_unshuffle(pixels, self.downscale)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        # Sampled latents can leave [-1, 1]; clamp like the VAE decoder does so both codecs agree on range.
        return torch.nn.functional.pixel_shuffle(latents, self.downscale).clamp(-1.0, 1.0)

    def __repr__(self) -> str:
        d = self.downscale
        return f"PixelUnshuffleCodec({d}x{d}x3 -> {self.latent_channels} channels, lossless)"


class VaeCodec:
    """The model's own ``AutoencoderKLQwenImage`` (a video VAE used with one frame), mode of the posterior."""

    name = "vae"
    downscale = VAE_DOWNSCALE

    def __init__(self, vae: torch.nn.Module):
        self.vae = vae
        config = vae.config
        self.latent_channels = int(config.z_dim)
        shape = (1, self.latent_channels, 1, 1, 1)
        self._mean = torch.tensor(config.latents_mean, dtype=torch.float32).view(shape)
        self._std = torch.tensor(config.latents_std, dtype=torch.float32).view(shape)

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._mean.to(like.device, like.dtype), self._std.to(like.device, like.dtype)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        _check_pixels(pixels)
        param = next(self.vae.parameters())
        video = pixels.to(param.device, param.dtype).unsqueeze(2)  # [B, 3, 1, H, W]: one frame
        latents = self.vae.encode(video).latent_dist.mode()
        mean, std = self._stats(latents)
        return ((latents - mean) / std)[:, :, 0]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        param = next(self.vae.parameters())
        video = latents.to(param.device, param.dtype).unsqueeze(2)
        mean, std = self._stats(video)
        return self.vae.decode(video * std + mean).sample[:, :, 0]

    def __repr__(self) -> str:
        return f"VaeCodec(z_dim={self.latent_channels})"


def _check_pixels(pixels: torch.Tensor) -> None:
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"codec input must be [B, 3, H, W] pixels in [-1, 1]; got shape {tuple(pixels.shape)}")
    height, width = pixels.shape[-2:]
    if height % 16 or width % 16:
        raise ValueError(f"codec input height and width must be multiples of 16 (up to 8× codec, 2×2 packing); "
                         f"got {height}×{width}")


def images_to_pixels(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` photos of one size → float32 ``[B, 3, H, W]`` in [-1, 1]."""
    stack = np.stack([np.asarray(image) for image in images])
    if stack.dtype != np.uint8 or stack.ndim != 4 or stack.shape[-1] != 3:
        raise ValueError(f"expected same-size uint8 [H, W, 3] images; got {stack.dtype} {stack.shape}")
    return torch.from_numpy(stack).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def pixels_to_images(pixels: torch.Tensor) -> list[np.ndarray]:
    """float ``[B, 3, H, W]`` in [-1, 1] → list of uint8 ``[H, W, 3]`` (rounded, clipped)."""
    scaled = ((pixels.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return [np.ascontiguousarray(image) for image in scaled.permute(0, 2, 3, 1).numpy()]


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two same-sized uint8 images (``inf`` when identical)."""
    if reference.shape != test.shape:
        raise ValueError(f"PSNR needs same-sized images; got {reference.shape} and {test.shape}")
    mse = float(np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(255.0 ** 2 / mse)


def codec_reconstruction_report(
    codec: LatentCodec,
    images: Sequence[np.ndarray],
    attributes: Callable[[np.ndarray], Mapping[str, float]] | None = None,
) -> dict:
    """How well ``codec`` preserves photos: encode → decode each image and compare with the original.

    ``images`` are uint8 ``[H, W, 3]`` photos with sides that are multiples of 16 (any mix of sizes).
    ``attributes`` maps a photo to named photometric attributes (e.g. ``rewards.attributes`` Lab exposure,
    contrast, saturation, warmth); when given, the report carries the largest absolute change of each.

    Returns ``{"codec", "num_images", "psnr_db_min", "psnr_db_mean", "max_abs_attribute_delta": {name: Δ}}``;
    PSNR values are ``inf`` for a lossless codec.
    """
    if not images:
        raise ValueError("codec_reconstruction_report needs at least one image")
    psnrs: list[float] = []
    deltas: dict[str, float] = {}
    for image in images:
        with torch.no_grad():
            restored = pixels_to_images(codec.decode(codec.encode(images_to_pixels([image]))))[0]
        psnrs.append(psnr(image, restored))
        if attributes is not None:
            before, after = attributes(image), attributes(restored)
            for name, value in before.items():
                deltas[name] = max(deltas.get(name, 0.0), abs(float(after[name]) - float(value)))
    finite = [value for value in psnrs if math.isfinite(value)]
    return {
        "codec": codec.name,
        "num_images": len(images),
        "psnr_db_min": min(psnrs),
        "psnr_db_mean": (sum(finite) / len(finite)) if len(finite) == len(psnrs) else math.inf,
        "max_abs_attribute_delta": deltas,
    }
