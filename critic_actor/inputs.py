"""What the critic sees: resolved, pixel-bounded images and the exact model inputs built from them.

Owns image resolution (an ``ImageHandle`` — ObjectRef, path or array — to a validated uint8 ``[H, W, 3]``
array), the resize into the configured pixel bounds (done here, once, so the array stored on the
``Critique`` record is exactly what the engine saw), the prompt text, and :func:`build_critic_inputs`, which
gives the learner the same ``input_ids`` / ``pixel_values`` / ``image_grid_thw`` / ``mm_token_type_ids`` the
rollout engine used. It must not import vLLM.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from critic_actor.grammar import CRITIC_INSTRUCTION, build_critic_messages

PATCH_FACTOR = 28
"""Qwen2.5-VL image sides are multiples of patch size × spatial merge (14 × 2)."""


def resolve_image(handle: Any, what: str = "image") -> np.ndarray:
    """A uint8 ``[H, W, 3]`` array from an ObjectRef, a path or an array; ``ValueError`` naming the problem."""
    if type(handle).__name__ == "ObjectRef":
        import ray

        handle = ray.get(handle)
    if isinstance(handle, (str, Path)):
        from PIL import Image

        path = Path(str(handle).removeprefix("file://"))
        if not path.is_file():
            raise ValueError(f"{what}: no file at {str(path)!r}")
        try:
            with Image.open(path) as opened:
                if opened.mode not in ("RGB", "L", "RGBA", "P"):
                    raise ValueError(f"{what}: {path.name} has mode {opened.mode}; give an 8-bit sRGB photo")
                handle = np.asarray(opened.convert("RGB"))
        except (OSError, SyntaxError, EOFError) as exc:  # not an image, truncated or corrupt: the decoder's words
            raise ValueError(f"{what}: {path} cannot be decoded ({type(exc).__name__}: {exc})") from None
    if not isinstance(handle, np.ndarray):
        raise ValueError(f"{what}: expected an image array, path or ObjectRef, got {type(handle).__name__}")
    if handle.dtype != np.uint8:
        raise ValueError(f"{what}: dtype is {handle.dtype}; give uint8 sRGB (0-255)")
    if handle.ndim != 3 or handle.shape[2] != 3:
        raise ValueError(f"{what}: shape is {handle.shape}; give [H, W, 3] RGB")
    if min(handle.shape[:2]) < 2:
        raise ValueError(f"{what}: {handle.shape[1]}x{handle.shape[0]} pixels is too small to critique")
    return np.ascontiguousarray(handle)


def pixel_bounded_size(height: int, width: int, min_pixels: int, max_pixels: int,
                       factor: int = PATCH_FACTOR) -> tuple[int, int]:
    """(height, width) rounded to multiples of ``factor`` with an area inside [min_pixels, max_pixels].

    Same rule as the Qwen2-VL processor's ``smart_resize`` (aspect ratio kept as well as rounding allows), plus
    a trim of the long side of very elongated images so the area bound always holds; the processor leaves an
    image of this size untouched.
    """
    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels ({min_pixels}) exceeds max_pixels ({max_pixels})")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio of a {width}x{height} image exceeds 200")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    # Very elongated images: the short side cannot go below one patch, so trim the long side instead.
    if h * w > max_pixels:
        if h >= w:
            h = max(factor, (max_pixels // w) // factor * factor)
        else:
            w = max(factor, (max_pixels // h) // factor * factor)
    return h, w


def fit_to_pixel_bounds(image: np.ndarray, min_pixels: int, max_pixels: int) -> np.ndarray:
    """The image resized (bicubic) to :func:`pixel_bounded_size`; returned unchanged when already there."""
    height, width = image.shape[:2]
    h, w = pixel_bounded_size(height, width, min_pixels, max_pixels)
    if (h, w) == (height, width):
        return image
    from PIL import Image

    return np.array(Image.fromarray(image).resize((w, h), Image.Resampling.BICUBIC))


def critic_prompt_text(processor, instruction: str = CRITIC_INSTRUCTION) -> str:
    """The chat-formatted prompt (one ``<|image_pad|>`` placeholder, generation prompt appended)."""
    return processor.apply_chat_template(build_critic_messages(instruction), tokenize=False,
                                         add_generation_prompt=True)


def build_critic_inputs(processor, image: np.ndarray, instruction: str = CRITIC_INSTRUCTION,
                        return_tensors: str = "pt") -> dict[str, Any]:
    """Model inputs for one (already pixel-bounded) image: ``input_ids`` ``[1, L]`` with the vision
    placeholders expanded, ``attention_mask``, ``mm_token_type_ids`` (needed for Qwen's 3-D M-RoPE positions),
    ``pixel_values`` and ``image_grid_thw``. The ``input_ids`` equal the rollout engine's prompt token ids."""
    from PIL import Image

    text = critic_prompt_text(processor, instruction)
    return dict(processor(text=[text], images=[Image.fromarray(image)], return_tensors=return_tensors,
                          return_mm_token_type_ids=True))
