"""What the artist's DiT is conditioned on, and the one function that calls the DiT.

Owns, for the sampler actors and the DiffusionNFT learner alike (they must call the transformer identically):

- H_c batching: the critic's last-layer states ``[T_i, D]`` per critique, an optional leading-prefix drop,
  right-padded to ``[B, T, D]`` with a bool mask (left padding shifts the text RoPE positions and changes the
  DiT's output; right padding with the mask leaves every valid token where it was).
- The text RoPE limit: QwenEmbedRope has 4096 positions and starts text at ``max(h, w) // 2`` of the packed
  grid, so ``T ≤ 4096 − max(h, w) // 2``; longer H_c is rejected with :class:`ConditioningError`, never cut.
- Latent packing (``[B, C, h, w] → [B, (h/2)(w/2), 4C]``, 2×2 patches) and unpacking, condition-image latents
  concatenated after the noisy target latents along the sequence, and ``img_shapes`` for RoPE.
- The Qwen-Image dynamic-shift flow-matching schedule (ALGORITHMS.md §4.3), computed in float64.
- :func:`predict_velocity`: v(x_t, σ | c) with the flow convention x_t = (1 − σ)·x0 + σ·ε, v = ε − x0, from
  either of the two meanings a DiT's output can have (:data:`EDIT_PREDICTIONS`): the velocity itself (every
  Qwen-Image-Edit checkpoint), or the correction to the condition photo's latents (``input_residual``: the
  embedded tiny artist). Both go through this one function, so samplers, the DiffusionNFT learner and SFT see
  the same velocity whichever the network predicts.

It must not load models, own weights, sample noise or know about Ray.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

ROPE_TABLE_POSITIONS = 4096
"""Rows of QwenEmbedRope's position table (diffusers ``transformer_qwenimage.py``)."""


EditPrediction = Literal["velocity", "input_residual"]
EDIT_PREDICTIONS: tuple[str, ...] = ("velocity", "input_residual")
"""What a DiT's output can mean: ``velocity`` (v ≈ ε − x0, the Qwen-Image-Edit convention) or
``input_residual`` (x̂0 = condition latents + output: an all-zero output is the identity edit at every σ)."""

PREDICTION_ATTRIBUTE = "edit_prediction"
"""Attribute ``artist_actor.model.load_artist`` sets on the loaded transformer to one of :data:`EDIT_PREDICTIONS`
(absent = ``velocity``); :func:`predict_velocity` reads it, so no caller can pair a network with the wrong
meaning of its output."""


class ConditioningError(ValueError):
    """A critique's conditioning cannot be used by the DiT (too long, wrong width, empty)."""


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` (h, w even) → ``[B, (h/2)(w/2), 4C]``: 2×2 patches, channel-major within a patch."""
    batch, channels, height, width = latents.shape
    patches = latents.view(batch, channels, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(batch, (height // 2) * (width // 2), channels * 4)


def unpack_latents(packed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`pack_latents`; ``grid`` = (h/2, w/2), the packed token grid."""
    batch, tokens, features = packed.shape
    rows, cols = grid
    if rows * cols != tokens:
        raise ValueError(f"packed latents have {tokens} tokens, not {rows}×{cols}")
    channels = features // 4
    patches = packed.view(batch, rows, cols, channels, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(batch, channels, rows * 2, cols * 2)


def max_text_tokens(grid: tuple[int, int]) -> int:
    """Most H_c tokens the DiT's text RoPE can place beside an image whose packed grid is ``grid``."""
    return ROPE_TABLE_POSITIONS - max(grid) // 2


def flow_match_sigmas(num_steps: int, image_seq_len: int, scheduler_config: dict[str, Any]) -> np.ndarray:
    """float64 ``[N + 1]`` noise levels from 1.0 to 0.0: the Qwen-Image dynamic-shift schedule.

    ``image_seq_len`` = target tokens only (the packed grid's rows × cols). μ is linear in it between
    (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift); σ₀ = linspace(1, 1/N, N) is shifted by
    e^μ / (e^μ + 1/σ₀ − 1) (exponential type) or e^μ / (e^μ + (1/σ₀ − 1)) with μ as a plain factor (linear
    type), then stretched so the last non-zero σ equals ``shift_terminal``.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be ≥ 1; got {num_steps}")
    cfg = scheduler_config
    sigmas = np.linspace(1.0, 1.0 / num_steps, num_steps, dtype=np.float64)
    if cfg.get("use_dynamic_shifting", False):
        slope = (cfg["max_shift"] - cfg["base_shift"]) / (cfg["max_image_seq_len"] - cfg["base_image_seq_len"])
        mu = image_seq_len * slope + (cfg["base_shift"] - slope * cfg["base_image_seq_len"])
        shift = math.exp(mu) if cfg.get("time_shift_type", "exponential") == "exponential" else mu
    else:
        shift = float(cfg.get("shift", 1.0))
    sigmas = shift / (shift + (1.0 / sigmas - 1.0))
    terminal = cfg.get("shift_terminal")
    if terminal:
        one_minus = 1.0 - sigmas
        sigmas = 1.0 - one_minus / (one_minus[-1] / (1.0 - terminal))
    return np.concatenate([sigmas, [0.0]])


@dataclass(slots=True)
class ArtistConditioning:
    """One micro-batch's conditioning, on the DiT's device and dtype. All items share one resolution."""

    hidden: torch.Tensor
    """``[B, T, D]`` critic states, right-padded."""
    mask: torch.Tensor
    """bool ``[B, T]``, True on real tokens."""
    image_latents: torch.Tensor
    """``[B, L, F]`` packed condition-image latents (F = 4·C)."""
    grid: tuple[int, int]
    """Packed token grid (rows, cols) of both the target and the condition image."""

    @property
    def img_shapes(self) -> list[list[tuple[int, int, int]]]:
        """Per item: (frames, rows, cols) of the target, then of the condition image (for RoPE)."""
        return [[(1, *self.grid), (1, *self.grid)]] * self.hidden.shape[0]

    @property
    def num_image_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def select(self, index: torch.Tensor | Sequence[int] | slice) -> ArtistConditioning:
        """The items at ``index`` (e.g. one micro-batch of a larger batch)."""
        return ArtistConditioning(hidden=self.hidden[index], mask=self.mask[index],
                                  image_latents=self.image_latents[index], grid=self.grid)


def pad_hidden_states(
    hidden_states: Sequence[np.ndarray | torch.Tensor],
    hidden_size: int,
    grid: tuple[int, int],
    drop_prefix_tokens: int = 0,
    masks: Sequence[np.ndarray | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad per-critique H_c ``[T_i, D]`` into ``([B, T, D] float32, bool [B, T])``.

    ``drop_prefix_tokens`` leading positions are removed first (the stock Qwen-Image-Edit pipeline drops its
    64-token system header; the released SmartPhotoCrafter model drops none). Positions whose ``masks`` entry is
    False are dropped too, so a record that arrives padded is re-packed without holes. Raises
    :class:`ConditioningError` naming the item when it is not ``[T, hidden_size]``, nothing is left, or it is
    longer than the text RoPE limit for ``grid``.
    """
    limit = max_text_tokens(grid)
    rows: list[torch.Tensor] = []
    for item, states in enumerate(hidden_states):
        # torch.tensor copies: H_c arrives from Ray's object store as a read-only buffer, which a tensor must not alias.
        tensor = torch.tensor(np.asarray(states), dtype=torch.float32) if not torch.is_tensor(states) else states
        if tensor.ndim != 2 or tensor.shape[1] != hidden_size:
            raise ConditioningError(f"H_c item {item} has shape {tuple(tensor.shape)}; the artist expects "
                                    f"[T, {hidden_size}] (its joint_attention_dim = the critic hidden size)")
        if masks is not None and masks[item] is not None:
            keep = torch.tensor(np.asarray(masks[item]), dtype=torch.bool)
            if keep.shape[0] != tensor.shape[0]:
                raise ConditioningError(f"H_c item {item}: mask has {keep.shape[0]} entries for "
                                        f"{tensor.shape[0]} tokens")
            tensor = tensor[keep]
        tensor = tensor[drop_prefix_tokens:]
        if tensor.shape[0] == 0:
            raise ConditioningError(f"H_c item {item} has no tokens left after dropping {drop_prefix_tokens} "
                                    f"prefix tokens")
        if tensor.shape[0] > limit:
            raise ConditioningError(
                f"H_c item {item} has {tensor.shape[0]} tokens; beside a {grid[0]}×{grid[1]} token image the DiT's "
                f"text RoPE holds at most {limit} (4096 − max(h, w)/2 packed cells). Lower critic.max_new_tokens "
                f"or critic.max_pixels, or raise artist.drop_prefix_tokens")
        rows.append(tensor.float())
    if not rows:
        raise ConditioningError("no H_c items to condition on")
    longest = max(row.shape[0] for row in rows)
    hidden = torch.zeros(len(rows), longest, hidden_size, dtype=torch.float32)
    mask = torch.zeros(len(rows), longest, dtype=torch.bool)
    for item, row in enumerate(rows):
        hidden[item, : row.shape[0]] = row
        mask[item, : row.shape[0]] = True
    return hidden, mask


def build_conditioning(
    hidden_states: Sequence[np.ndarray | torch.Tensor],
    condition_latents: torch.Tensor,
    *,
    hidden_size: int,
    drop_prefix_tokens: int = 0,
    masks: Sequence[np.ndarray | None] | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> ArtistConditioning:
    """Assemble a micro-batch's conditioning from H_c arrays and codec latents ``[B, C, h, w]``."""
    if condition_latents.ndim != 4 or condition_latents.shape[0] != len(hidden_states):
        raise ConditioningError(f"need one condition latent [C, h, w] per H_c item; got latents "
                                f"{tuple(condition_latents.shape)} for {len(hidden_states)} items")
    grid = (condition_latents.shape[2] // 2, condition_latents.shape[3] // 2)
    hidden, mask = pad_hidden_states(hidden_states, hidden_size, grid, drop_prefix_tokens, masks)
    return ArtistConditioning(
        hidden=hidden.to(device=device, dtype=dtype),
        mask=mask.to(device=device),
        image_latents=pack_latents(condition_latents).to(device=device, dtype=dtype),
        grid=grid,
    )


def predict_velocity(
    transformer: torch.nn.Module,
    latents: torch.Tensor,
    sigma: torch.Tensor | float,
    cond: ArtistConditioning,
) -> torch.Tensor:
    """The DiT's velocity v ≈ ε − x0 at noise level σ for packed noisy target latents ``[B, L, F]``.

    Exactly the Qwen-Image-Edit call: target tokens then condition-image tokens in one sequence, timestep σ
    (= scheduler timestep / 1000), joint text mask, and only the target part of the output kept. ``sigma`` is a
    scalar or a ``[B]`` tensor. Gradients flow when enabled (the learner trains through this function).

    A transformer whose :data:`PREDICTION_ATTRIBUTE` is ``input_residual`` outputs a correction o to the
    condition photo: x̂0 = c + o, and v = (x_t − x̂0)/σ is the velocity that denoises onto x̂0 (so x_t − σ·v = x̂0
    exactly, which is what the samplers and the NFT loss use). σ must then be positive; every schedule point a
    sampler or the learner evaluates is (the terminal 0 is never a model input).
    """
    batch = latents.shape[0]
    if latents.shape[1] != cond.num_image_tokens:
        raise ValueError(f"latents have {latents.shape[1]} tokens; the conditioning grid {cond.grid} has "
                         f"{cond.num_image_tokens}")
    dtype = cond.image_latents.dtype
    timestep = torch.as_tensor(sigma, dtype=dtype, device=latents.device).reshape(-1).expand(batch)
    sequence = torch.cat([latents.to(dtype), cond.image_latents], dim=1)
    output = transformer(
        hidden_states=sequence,
        encoder_hidden_states=cond.hidden,
        encoder_hidden_states_mask=cond.mask,
        timestep=timestep,
        img_shapes=cond.img_shapes,
        return_dict=False,
    )[0]
    output = output[:, : latents.shape[1]]
    if getattr(transformer, PREDICTION_ATTRIBUTE, "velocity") == "input_residual":
        if torch.any(timestep <= 0):
            raise ValueError("an input_residual artist needs σ > 0: its velocity is (x_t − x̂0)/σ")
        x0_prediction = cond.image_latents + output
        return (latents.to(dtype) - x0_prediction) / timestep.view(-1, *([1] * (output.ndim - 1)))
    return output


def guided_velocity(transformer: torch.nn.Module, latents: torch.Tensor, sigma: torch.Tensor | float,
                    cond: ArtistConditioning, scale: float) -> torch.Tensor:
    """Classifier-free guidance as the Qwen-Image-Edit pipeline applies it: the unconditional branch sees a single
    all-zero H_c token (same condition image), v = v_u + scale·(v_c − v_u), renormalised per token to the
    conditional velocity's norm. Two DiT forwards; at ``scale`` ≤ 1 only the conditional one. Gradients flow
    when enabled (a learner that trains the guided velocity goes through here)."""
    conditional = predict_velocity(transformer, latents, sigma, cond)
    if scale <= 1.0:
        return conditional
    batch = cond.hidden.shape[0]
    null = ArtistConditioning(hidden=cond.hidden.new_zeros(batch, 1, cond.hidden.shape[2]),
                              mask=cond.mask.new_ones(batch, 1), image_latents=cond.image_latents, grid=cond.grid)
    conditional = conditional.float()
    unconditional = predict_velocity(transformer, latents, sigma, null).float()
    combined = unconditional + scale * (conditional - unconditional)
    norm_ratio = conditional.norm(dim=-1, keepdim=True) / combined.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return combined * norm_ratio
