"""Image validation and resizing shared by every reward.

Owns the single definition of what a scorable image is (uint8 ``[H, W, 3]`` sRGB, or finite float in
[0, 1] that is converted to it) and the one resizing rule used before measuring attributes or LPIPS.
It must not decide rewards: a bad image becomes an :class:`InvalidImageError` whose message names the image
and what was wrong, and the caller turns it into an error result for that one record.
"""

from __future__ import annotations

import numpy as np


class InvalidImageError(ValueError):
    """An image that cannot be scored; the message names which image and why."""


def as_rgb_uint8(image: object, name: str = "image") -> np.ndarray:
    """Return ``image`` as a C-contiguous uint8 ``[H, W, 3]`` array, or raise :class:`InvalidImageError`.

    Accepted: uint8 ``[H, W, 3]`` (returned as is), and float ``[H, W, 3]`` with every value finite and in
    [0, 1] (rounded to uint8). Everything else — NaN/inf pixels, other dtypes, grayscale, RGBA, empty
    arrays — is refused with a sentence saying what to fix.
    """
    if not isinstance(image, np.ndarray):
        raise InvalidImageError(f"{name} is a {type(image).__name__}, expected a numpy array [H, W, 3]")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidImageError(
            f"{name} has shape {tuple(image.shape)}; expected [H, W, 3] RGB (convert grayscale/RGBA first)")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InvalidImageError(f"{name} is empty (shape {tuple(image.shape)})")
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if np.issubdtype(image.dtype, np.floating):
        finite = np.isfinite(image)
        if not finite.all():
            bad = int(image.size - np.count_nonzero(finite))
            raise InvalidImageError(f"{name} has {bad} NaN/inf values; rewards need finite pixels")
        low, high = float(image.min()), float(image.max())
        if low < 0.0 or high > 1.0:
            raise InvalidImageError(
                f"{name} is float with values in [{low:.3g}, {high:.3g}]; expected [0, 1] or uint8")
        return np.ascontiguousarray(np.rint(image * 255.0).astype(np.uint8))
    raise InvalidImageError(f"{name} has dtype {image.dtype}; expected uint8 (8-bit sRGB) or float in [0, 1]")


def resize_long_side(image: np.ndarray, long_side: int, *, min_short_side: int = 1,
                     upscale: bool = False) -> np.ndarray:
    """Resize so the long side is ``long_side`` px, keeping the aspect ratio (area filter when shrinking).

    Images already smaller are left alone unless ``upscale``. The short side never drops below
    ``min_short_side`` (very elongated images are then stretched slightly, which is preferable to a
    zero-sized axis).
    """
    import cv2

    height, width = image.shape[:2]
    scale = long_side / max(height, width)
    if scale >= 1.0 and not upscale:
        scale = 1.0
    new_h = max(min_short_side, int(round(height * scale)))
    new_w = max(min_short_side, int(round(width * scale)))
    if (new_h, new_w) == (height, width):
        return image
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    return cv2.resize(image, (new_w, new_h), interpolation=interpolation)
