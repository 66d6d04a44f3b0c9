"""Bad and unusual image files: each is converted as documented or refused with a reason naming the problem."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rollout.records.images import ImageLimits, ImageRejected, read_image, read_pair, to_rgb8, write_png

LIMITS = ImageLimits(min_side=16, max_pixels=4096 * 4096)


def _photo(height: int = 24, width: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_rgb_png_round_trips_exactly(tmp_path):
    photo = _photo()
    write_png(tmp_path / "a.png", photo)
    assert np.array_equal(read_image(tmp_path / "a.png", LIMITS), photo)


def test_grayscale_is_replicated_to_rgb(tmp_path):
    gray = _photo()[..., 0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    rgb = read_image(tmp_path / "g.png", LIMITS)
    assert rgb.shape == (24, 32, 3) and rgb.dtype == np.uint8
    for channel in range(3):
        assert np.array_equal(rgb[..., channel], gray)


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[..., 0] = 200                     # red where opaque
    rgba[:10, :, 3] = 255                  # top half opaque
    rgba[10:, :, 3] = 0                    # bottom half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    rgb = read_image(tmp_path / "a.png", LIMITS)
    assert rgb.shape == (20, 20, 3)
    assert (rgb[:10] == [200, 0, 0]).all()
    assert (rgb[10:] == 255).all()


def test_16bit_grayscale_and_rgb_are_scaled_to_8bit(tmp_path):
    import cv2

    values16 = np.linspace(0, 65535, 32 * 20).reshape(20, 32).astype(np.uint16)
    Image.fromarray(values16).save(tmp_path / "g16.png")
    gray = read_image(tmp_path / "g16.png", LIMITS)
    assert gray.dtype == np.uint8 and gray.shape == (20, 32, 3)
    assert np.array_equal(gray[..., 1], (values16 >> 8).astype(np.uint8))

    rgb16 = np.stack([values16, values16[::-1], np.full_like(values16, 65535)], axis=-1)
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16[..., ::-1])  # OpenCV writes BGR
    rgb = read_image(tmp_path / "rgb16.png", LIMITS)
    assert np.array_equal(rgb, (rgb16 >> 8).astype(np.uint8))


@pytest.mark.parametrize("size", [(1, 1), (15, 200)])
def test_tiny_images_are_refused(tmp_path, size):
    Image.fromarray(np.zeros((*size, 3), dtype=np.uint8)).save(tmp_path / "t.png")
    with pytest.raises(ImageRejected, match="short side is below 16"):
        read_image(tmp_path / "t.png", LIMITS)


def test_huge_image_is_refused_from_its_header_before_decoding(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((300, 400, 3), dtype=np.uint8)).save(tmp_path / "big.png")

    def fail_decode(self, *args, **kwargs):
        raise AssertionError("pixels were decoded for an image that the header already rules out")

    monkeypatch.setattr(Image.Image, "load", fail_decode)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", fail_decode)
    with pytest.raises(ImageRejected, match=r"400x300 = 120000 pixels, above the limit of 100000"):
        read_image(tmp_path / "big.png", ImageLimits(min_side=16, max_pixels=100_000))


def test_truncated_file_is_refused_with_the_decoders_reason(tmp_path):
    Image.fromarray(_photo(64, 64)).save(tmp_path / "ok.jpg", quality=90)
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageRejected, match="truncated"):
        read_image(tmp_path / "cut.jpg", LIMITS)


def test_unreadable_and_missing_files_are_refused(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"this is not an image")
    with pytest.raises(ImageRejected, match="unreadable"):
        read_image(tmp_path / "junk.png", LIMITS)
    with pytest.raises(ImageRejected, match="no such file"):
        read_image(tmp_path / "absent.png", LIMITS)


def test_mismatched_pair_is_refused(tmp_path):
    write_png(tmp_path / "in.png", _photo(24, 32))
    write_png(tmp_path / "gt.png", _photo(32, 24))
    with pytest.raises(ImageRejected, match="input is 32x24 but target is 24x32"):
        read_pair(tmp_path / "in.png", tmp_path / "gt.png", LIMITS)


def test_float_arrays_are_refused_not_guessed():
    with pytest.raises(ImageRejected, match="sample type float32"):
        to_rgb8(np.zeros((20, 20, 3), dtype=np.float32))


def _png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header claims ``width × height`` RGB pixels but carries no pixel data."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [9_000, 20_000])
def test_header_claiming_a_gigantic_image_is_refused_without_allocating_it(tmp_path, side):
    _png_header_only(tmp_path / "bomb.png", side, side)
    # 81 Mpx passes Pillow's own guard and is refused by ours; 400 Mpx is refused by Pillow's guard first.
    with pytest.raises(ImageRejected, match="above the limit of 64000000|decompression bomb"):
        read_image(tmp_path / "bomb.png", ImageLimits())


def test_exif_orientation_is_applied_so_phone_photos_are_upright(tmp_path):
    photo = _photo(20, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(photo).save(tmp_path / "phone.png", exif=exif)
    upright = read_image(tmp_path / "phone.png", LIMITS)
    assert upright.shape == (40, 20, 3)
    assert np.array_equal(upright, np.rot90(photo, k=-1))
