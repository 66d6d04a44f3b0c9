"""Latent codecs: the embedded pixel-unshuffle codec preserves real photos; the VAE codec path works."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from artist_actor.codec import (
    PixelUnshuffleCodec,
    VaeCodec,
    codec_reconstruction_report,
    images_to_pixels,
    pixels_to_images,
    token_grid,
)
from artist_actor.conditioning import pack_latents, unpack_latents


def photo_crops(size: int = 64) -> list[np.ndarray]:
    """Held-out crops of the colour photographs scikit-image ships (none is used to build any model)."""
    from skimage import data

    crops = []
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        image = getattr(data, name)()
        h, w = image.shape[:2]
        for top, left in ((h // 4, w // 4), (h // 2, w // 3)):
            crops.append(np.ascontiguousarray(image[top: top + size, left: left + size, :3]))
    return crops


def test_pixel_unshuffle_latents_have_vae_layout_and_unit_scale():
    codec = PixelUnshuffleCodec()
    pixels = images_to_pixels(photo_crops(64))
    latents = codec.encode(pixels)
    assert codec.downscale == 2 and latents.shape == (len(pixels), 12, 32, 32)
    assert pack_latents(latents).shape == (len(pixels), 256, 48)
    assert token_grid((64, 64), codec) == (16, 16)
    coarse = PixelUnshuffleCodec(8)
    assert pack_latents(coarse.encode(pixels)).shape == (len(pixels), 16, 768)
    assert token_grid((48, 80), coarse) == (3, 5)
    # x -> 2x - 1: zero-centred-ish, bounded, non-degenerate scale.
    assert latents.abs().max() <= 1.0
    assert 0.2 < latents.std().item() < 1.0


def test_pack_unpack_round_trip():
    latents = torch.randn(2, 16, 6, 10)
    packed = pack_latents(latents)
    assert packed.shape == (2, 15, 64)
    assert torch.equal(unpack_latents(packed, (3, 5)), latents)


def test_embedded_codec_meets_the_photo_bar():
    report = codec_reconstruction_report(PixelUnshuffleCodec(), photo_crops(64))
    assert report["num_images"] == 8
    assert report["psnr_db_min"] >= 30.0


def test_embedded_codec_keeps_lab_attributes_within_negligible_change():
    from rewards.attributes import NEGLIGIBLE_CHANGE, compute_attributes

    report = codec_reconstruction_report(PixelUnshuffleCodec(), photo_crops(64),
                                         attributes=lambda image: compute_attributes(image).as_dict())
    assert set(NEGLIGIBLE_CHANGE) <= set(report["max_abs_attribute_delta"])
    for name, threshold in NEGLIGIBLE_CHANGE.items():
        assert report["max_abs_attribute_delta"][name] < threshold, name


def test_decoded_samples_are_clamped_to_valid_pixels():
    codec = PixelUnshuffleCodec()
    wild = torch.randn(1, 12, 16, 16) * 3
    images = pixels_to_images(codec.decode(wild))
    assert images[0].shape == (32, 32, 3) and images[0].dtype == np.uint8
    assert images[0].min() == 0 and images[0].max() == 255


def test_codec_rejects_sizes_that_cannot_be_packed():
    with pytest.raises(ValueError, match="multiples of 16"):
        PixelUnshuffleCodec().encode(torch.zeros(1, 3, 40, 64))
    with pytest.raises(ValueError, match="downscale must be 1, 2, 4 or 8"):
        PixelUnshuffleCodec(3)


def test_vae_codec_normalises_with_the_config_statistics(tmp_path):
    from diffusers import AutoencoderKLQwenImage

    from artist_actor.model import TINY_ARTIST_RECIPE

    torch.manual_seed(0)
    AutoencoderKLQwenImage(**TINY_ARTIST_RECIPE["vae"]).save_pretrained(tmp_path / "vae")
    vae = AutoencoderKLQwenImage.from_pretrained(tmp_path / "vae").eval()
    codec = VaeCodec(vae)
    pixels = images_to_pixels(photo_crops(32)[:2])
    latents = codec.encode(pixels)
    assert latents.shape == (2, 16, 4, 4)
    with torch.no_grad():
        raw = vae.encode(pixels.unsqueeze(2)).latent_dist.mode()[:, :, 0]
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1)
    torch.testing.assert_close(latents, (raw - mean) / std)
    with torch.no_grad():
        expected = vae.decode(raw.unsqueeze(2)).sample[:, :, 0]
    torch.testing.assert_close(codec.decode(latents), expected, atol=1e-5, rtol=1e-4)
    report = codec_reconstruction_report(codec, photo_crops(32)[:2])
    # A random VAE does not preserve photos; the report must say so rather than pass it off.
    assert report["psnr_db_min"] < 30.0
