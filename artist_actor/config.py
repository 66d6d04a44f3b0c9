"""Configuration section ``artist``: which artist model to load and how its sampler actors edit photos.

Owns the Photographic Artist's sampling side (model, latent codec, conditioning, ODE sampler, replicas).
Its training knobs live in ``learner.config`` (section ``learner.artist``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rollout.records.config_base import ConfigModel


class ArtistConfig(ConfigModel):
    """The Photographic Artist (a Qwen-Image-Edit-class flow-matching DiT) and its sampler actors."""

    model: str = "embedded"
    """``embedded`` for the tiny artist built by ``photocrafter init-models``, or a local Qwen-Image-Edit
    directory in the diffusers layout (``transformer/``, ``vae/``, ``scheduler/``)."""
    codec: Literal["auto", "vae", "pixel_unshuffle"] = "auto"
    """Latent codec: the model's VAE, or the lossless pixel-unshuffle codec. ``auto`` = pixel_unshuffle for the
    embedded artist (a tiny random VAE cannot preserve photos), the VAE for real checkpoints."""
    num_samplers: int = Field(1, ge=1, le=1024)
    """Number of ArtistSamplerActor replicas."""
    gpus_per_sampler: float = Field(0.0, ge=0.0, le=8.0)
    """GPUs per sampler replica; 0 runs on CPU."""
    cpus_per_sampler: float = Field(1.0, gt=0.0, le=64.0)
    """CPU cores reserved per sampler replica."""
    edits_per_critique: int = Field(4, ge=1, le=64)
    """K: edits sampled per (photo, critique) with different seeds (the artist's group)."""
    num_steps: int = Field(6, ge=1, le=200)
    """ODE steps per edit during training rollouts."""
    solver: Literal["euler", "dpm2"] = "dpm2"
    """Deterministic ODE solver: flow-matching Euler or DPM-Solver-2 (DiffusionNFT's rollout default)."""
    resolution: int = Field(512, ge=32, le=2048, multiple_of=16)
    """Long side, in pixels, that inputs are resized to for the artist (multiple of 16)."""
    guidance_scale: float = Field(1.0, ge=1.0, le=20.0)
    """Classifier-free guidance; 1.0 disables it (DiffusionNFT samples CFG-free)."""
    drop_prefix_tokens: int = Field(0, ge=0, le=4096)
    """Leading H_c positions dropped before conditioning (0 as in the released SmartPhotoCrafter model; the
    stock Qwen-Image-Edit pipeline drops 64, its system header). Warm-start SFT (``photocrafter sft``), the RL
    samplers and learner, ``evaluate`` and ``enhance`` all drop the same positions: keep it equal to the value
    the artist was trained with."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """``auto`` = bfloat16 on GPU, float32 on CPU."""
    max_batch_size: int = Field(16, ge=1, le=1024)
    """Edits per DiT micro-batch inside a sampler (same-resolution edits are batched up to this many)."""
    exploration: float = Field(0.0, ge=0.0, le=4.0)
    """Exploration of training rollouts in the space the reward measures: each edit gets a seeded random global
    change of exposure, warmth, contrast and saturation with a standard deviation of this many level-1
    ("slightly") tone ops (``artist_actor.exploration``), and the changed edit is what is recorded and rewarded.
    0 (the default) samples the plain ODE edit. The embedded config turns it on: its tiny DiT barely depends on
    its initial noise, so without it the K edits of a critique score alike and DiffusionNFT has nothing to
    compare. Only training rollouts explore; evaluation, ``enhance`` and the exported artist never do."""
    seed: int = Field(0, ge=0)
    """Base seed of edit noise; each edit's seed is derived from it, the step and its indices."""
