"""Safe reading, validation and writing of photos: every image enters the project through this module.

Owns the one set of rules that turns an arbitrary file or array into the project's image convention
(``np.ndarray`` uint8 ``[H, W, 3]``, sRGB, RGB order) or refuses it with a sentence a user can act on.
It must not resize, crop or otherwise change content beyond the documented conversions, and it never lets
a bad file crash the caller with a decoder traceback: every refusal is an :class:`ImageRejected`.

Conversions (documented in docs/data.md):
- grayscale (``L``, ``1``, 16-bit ``I;16``) → the single channel replicated to R, G and B;
- alpha (``RGBA``, ``LA``, palette with transparency) → composited over white, alpha dropped;
- 16-bit samples → 8-bit by keeping the most significant byte (``v >> 8``), which is what Pillow already does
  for 16-bit RGB files, so every 16-bit source gets the same rule;
- palette and CMYK → RGB; an EXIF orientation tag is applied so the pixels are upright.
Refusals: unreadable or truncated files (with the decoder's reason), floating-point or other sample types
with no agreed range, an image whose short side is below ``min_side`` (1×1 included), and an image whose
pixel count exceeds ``max_pixels`` — checked from the header before any pixel is decoded.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
"""File suffixes (lower case) treated as photos when scanning folders."""


class ImageRejected(ValueError):
    """An image that cannot be used; ``reason`` is a sentence naming what was wrong and, where known, the fix."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """Size bounds every accepted image must satisfy (``data.min_image_side`` / ``data.max_image_pixels``)."""

    min_side: int = 16
    """Images whose shorter side is below this many pixels are refused."""
    max_pixels: int = 64_000_000
    """Images with more pixels than this are refused before decoding (decompression-bomb guard)."""

    def check_size(self, width: int, height: int) -> None:
        """Raise :class:`ImageRejected` when ``width × height`` violates the limits."""
        if width * height > self.max_pixels:
            raise ImageRejected(
                f"image is {width}x{height} = {width * height} pixels, above the limit of {self.max_pixels} "
                f"(data.max_image_pixels); downscale it first")
        if min(width, height) < self.min_side:
            raise ImageRejected(
                f"image is {width}x{height}, its short side is below {self.min_side} pixels "
                f"(data.min_image_side)")


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` has one of :data:`IMAGE_SUFFIXES` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _composite_on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Blend ``rgb`` (uint8 [H, W, 3]) over a white background with ``alpha`` (uint8 [H, W])."""
    a = alpha.astype(np.float32)[..., None] / 255.0
    blended = rgb.astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def to_rgb8(array: np.ndarray) -> np.ndarray:
    """Apply the documented conversions to an in-memory image and return uint8 ``[H, W, 3]``.

    Accepts ``[H, W]``, ``[H, W, 1]``, ``[H, W, 2]`` (gray + alpha), ``[H, W, 3]`` and ``[H, W, 4]`` arrays of
    dtype uint8 or uint16. Anything else raises :class:`ImageRejected`.
    """
    array = np.asarray(array)
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        raise ImageRejected(
            f"image has sample type {array.dtype}; only 8-bit and 16-bit integer images are accepted "
            f"(convert it to 8-bit sRGB)")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ImageRejected(f"image has shape {tuple(array.shape)}; expected [H, W], [H, W, 3] or [H, W, 4]")
    channels = array.shape[2]
    if channels in (2, 4):
        color = np.repeat(array[..., :1], 3, axis=2) if channels == 2 else array[..., :3]
        return _composite_on_white(color, array[..., -1])
    if channels == 1:
        return np.ascontiguousarray(np.repeat(array, 3, axis=2))
    return np.ascontiguousarray(array)


def check_array(array: np.ndarray, limits: ImageLimits) -> np.ndarray:
    """Convert an in-memory image with :func:`to_rgb8` and enforce ``limits``; returns uint8 ``[H, W, 3]``."""
    rgb = to_rgb8(array)
    limits.check_size(width=rgb.shape[1], height=rgb.shape[0])
    return rgb


def read_image(path: str | os.PathLike[str], limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Decode the image at ``path`` into uint8 ``[H, W, 3]`` sRGB or raise :class:`ImageRejected`.

    The size limits are checked from the header (Pillow reads the size lazily) before any pixel data is
    decoded, so an oversized file costs no memory.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageRejected(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            # Pillow warns above ~89 Mpx; our own limit decides, so the warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                limits.check_size(*image.size)
                image.load()
                image = ImageOps.exif_transpose(image)
                return _pil_to_rgb8(image)
    except ImageRejected as exc:
        raise ImageRejected(f"{path}: {exc.reason}") from None
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"{path}: refused by the decoder as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise ImageRejected(f"{path}: unreadable, not an image format the decoder recognises") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Truncated or corrupt data: Pillow raises OSError ("image file is truncated ..."), SyntaxError
        # (broken PNG chunks) or ValueError; the decoder's own words are the most useful reason.
        raise ImageRejected(f"{path}: cannot be decoded ({type(exc).__name__}: {exc})") from None


def _pil_to_rgb8(image) -> np.ndarray:
    """Pillow image of any mode → uint8 ``[H, W, 3]`` through :func:`to_rgb8`'s rules."""
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    elif mode == "1":
        image = image.convert("L")
    elif mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # 16-bit grayscale arrives as I;16 or, for some formats, as 32-bit I holding 0..65535.
        values = np.asarray(image)
        if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
            raise ImageRejected("image has 32-bit integer samples outside 0..65535; convert it to 8-bit sRGB")
        return to_rgb8(values.astype(np.uint16))
    elif mode == "F":
        raise ImageRejected("image has floating-point samples with no agreed range; convert it to 8-bit sRGB")
    return to_rgb8(np.asarray(image))


def read_pair(input_path: str | os.PathLike[str], target_path: str | os.PathLike[str],
              limits: ImageLimits = ImageLimits()) -> tuple[np.ndarray, np.ndarray]:
    """Read an input/target pair; both must pass :func:`read_image` and have the same size."""
    source = read_image(input_path, limits)
    target = read_image(target_path, limits)
    check_same_size(source, target)
    return source, target


def check_same_size(source: np.ndarray, target: np.ndarray) -> None:
    """Raise :class:`ImageRejected` when input and target differ in size (rewards compare them pixel-wise)."""
    if source.shape[:2] != target.shape[:2]:
        raise ImageRejected(
            f"input is {source.shape[1]}x{source.shape[0]} but target is {target.shape[1]}x{target.shape[0]}; "
            f"a pair must have the same size")


def write_png(path: str | os.PathLike[str], image: np.ndarray) -> None:
    """Write a uint8 ``[H, W, 3]`` image as PNG, atomically (a reader never sees half a file)."""
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"write_png expects uint8 [H, W, 3], got {image.dtype} {tuple(image.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    # zlib level 1: synthetic data is written once per pair and noisy images barely compress further, while
    # the default level 6 made PNG encoding the dominant cost of synthesis (≈ 5× slower at 256²).
    Image.fromarray(image).save(partial, format="PNG", compress_level=1)
    os.replace(partial, path)
