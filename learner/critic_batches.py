"""Teacher-forced batches of critiques for the critic learner: token layout, vision inputs, micro-batches.

Owns turning :class:`~rollout.records.types.Critique` records into model inputs — the right-padded prompt +
response ids, attention mask, M-RoPE token types and the image processor's pixels — and packing critiques into
micro-batches by a token budget. It computes nothing with the model (:mod:`learner.critic_learner` does).

Token layout of one sequence (``L_p`` prompt tokens, ``N`` response tokens): position ``p`` predicts token
``p + 1``, so the response log-probs come from positions ``L_p − 1 … L_p + N − 2`` and H_c is positions
``0 … L_p + N − 2``. Batches are right-padded. Image placeholder tokens get ``mm_token_type_ids = 1`` and every
other token, generated ones included, 0 — without it transformers falls back to 1-D positions and the
log-probs silently drift from the engine's (the M-RoPE trap in ENVIRONMENT.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rollout.records.types import Critique

CritiqueKey = tuple[str, int]
"""(task_id, critique index): how a critique is found across prepare and update."""


@dataclass(slots=True)
class CritiqueBatch:
    """Model inputs for a right-padded batch of prompt + response sequences."""

    keys: list[CritiqueKey]
    model_inputs: dict[str, torch.Tensor]
    prompt_lengths: list[int]
    response_tokens: torch.Tensor
    """long ``[B, T]`` response tokens, right-padded with 0."""
    response_mask: torch.Tensor
    """float ``[B, T]``: 1 on real response tokens."""


def build_critique_batch(critiques: Sequence[Critique], processor, *, image_token_id: int, spatial_merge_size: int,
                         device: torch.device) -> CritiqueBatch:
    """The right-padded prompt + response batch of ``critiques`` with their vision inputs, on ``device``.

    Raises ``ValueError`` naming the critique when its record cannot be trained on: an empty completion, log-probs
    that do not match it, a sampled image placeholder, or an image that gives another number of vision tokens at
    the processor's pixel bounds than its prompt holds."""
    sequences, prompt_lengths, response_lengths, images = [], [], [], []
    for critique in critiques:
        prompt = list(critique.prompt_token_ids)
        completion = list(critique.completion_token_ids)
        where = f"critique ({critique.task_id!r}, {critique.index})"
        if not completion:
            raise ValueError(f"{where} has an empty completion; nothing to train on")
        if len(critique.rollout_logprobs) != len(completion):
            raise ValueError(f"{where}: {len(critique.rollout_logprobs)} rollout log-probs for "
                             f"{len(completion)} completion tokens")
        if image_token_id in completion:
            raise ValueError(f"{where}: the response contains the image placeholder token; rollouts must "
                             f"suppress vision special tokens (critic_actor.model.vision_special_token_ids)")
        sequences.append(prompt + completion)
        prompt_lengths.append(len(prompt))
        response_lengths.append(len(completion))
        images.append(resolve_image(critique.image, where))
    vision = processor.image_processor(images=images, return_tensors="pt")
    grids = vision["image_grid_thw"]
    for critique, prompt_length, grid in zip(critiques, prompt_lengths, grids):
        expected = int(grid.prod()) // spatial_merge_size ** 2
        found = sum(1 for t in critique.prompt_token_ids if t == image_token_id)
        if expected != found:
            raise ValueError(
                f"critique ({critique.task_id!r}, {critique.index}): its prompt has {found} image tokens but "
                f"its image gives {expected} at the learner's pixel bounds; give the learner the rollout "
                f"actors' critic.min_pixels/max_pixels and keep Critique.image as the engine saw it")
    width = max(len(s) for s in sequences)
    pad_id = 0
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, :len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        attention[row, :len(sequence)] = 1
    # 1 on image placeholders of the prompt, 0 on text and on every generated token (M-RoPE positions).
    mm_token_type_ids = ((input_ids == image_token_id) & (attention == 1)).to(torch.int)
    response_width = max(response_lengths)
    response_tokens = torch.zeros((len(sequences), response_width), dtype=torch.long)
    response_mask = torch.zeros((len(sequences), response_width), dtype=torch.float32)
    for row, (critique, n) in enumerate(zip(critiques, response_lengths)):
        response_tokens[row, :n] = torch.tensor(list(critique.completion_token_ids), dtype=torch.long)
        response_mask[row, :n] = 1.0
    model_inputs = {
        "input_ids": input_ids, "attention_mask": attention, "mm_token_type_ids": mm_token_type_ids,
        "pixel_values": vision["pixel_values"], "image_grid_thw": grids,
    }
    return CritiqueBatch(
        keys=[(c.task_id, c.index) for c in critiques],
        model_inputs={k: v.to(device) for k, v in model_inputs.items()},
        prompt_lengths=prompt_lengths,
        response_tokens=response_tokens.to(device),
        response_mask=response_mask.to(device),
    )


def token_budget_micro_batches(lengths: Sequence[int], *, max_tokens: int, max_sequences: int) -> list[list[int]]:
    """Indices of sequences packed into micro-batches, longest first, so that no micro-batch exceeds
    ``max_sequences`` sequences nor ``max_tokens`` padded tokens (longest × count; 0 = no token budget).

    A sequence longer than the budget on its own gets a micro-batch of its own (it cannot be split).
    """
    if max_sequences < 1:
        raise ValueError(f"max_sequences must be ≥ 1, got {max_sequences}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for index in order:
        if batches:
            current = batches[-1]
            # Sorted longest first: the micro-batch's first sequence is its longest.
            padded = lengths[current[0]] * (len(current) + 1)
            if len(current) < max_sequences and (max_tokens <= 0 or padded <= max_tokens):
                current.append(index)
                continue
        batches.append([index])
    return batches


def pad_rows(arrays: Sequence[np.ndarray], width: int, device: torch.device) -> torch.Tensor:
    """float32 ``[len(arrays), width]`` with each array in its row, right-padded with zeros."""
    out = torch.zeros((len(arrays), width), dtype=torch.float32)
    for row, values in enumerate(arrays):
        out[row, :len(values)] = torch.as_tensor(np.asarray(values, dtype=np.float32))
    return out.to(device)


def resolve_image(handle: Any, where: str) -> np.ndarray:
    """The uint8 ``[H, W, 3]`` image behind a handle: an array, a path, or a Ray object reference."""
    if handle is None:
        raise ValueError(f"{where} carries no image; the rollout actor must set Critique.image to the image it "
                         f"fed the engine")
    if isinstance(handle, np.ndarray):
        image = handle
    elif isinstance(handle, (str, Path)):
        from PIL import Image

        with Image.open(handle) as opened:
            image = np.asarray(opened.convert("RGB"))
    else:
        import ray

        if not isinstance(handle, ray.ObjectRef):
            raise TypeError(f"{where}: image handle of type {type(handle).__name__} is not an array, path or "
                            f"ray.ObjectRef")
        image = np.asarray(ray.get(handle))
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{where}: image must be uint8 [H, W, 3], got {image.dtype} {tuple(image.shape)}")
    return image
