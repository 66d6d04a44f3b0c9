"""Configuration section ``rewards``: weights and tolerances of every reward, and the reward-worker pool.

Owns the numbers that define what both models are rewarded for (ALGORITHMS.md §5) and the pool size.
"""

from __future__ import annotations

from pydantic import Field

from rollout.config_base import ConfigModel


class RewardsConfig(ConfigModel):
    """Artist and critic rewards and the RewardPool that computes them."""

    num_workers: int = Field(2, ge=1, le=1024)
    """RewardWorker actors in the pool (CPU)."""
    cpus_per_worker: float = Field(1.0, gt=0.0, le=64.0)
    """CPU cores per reward worker; torch/OpenCV threads are pinned to this count."""
    gpus_per_worker: float = Field(0.0, ge=0.0, le=1.0)
    """GPU fraction per worker for LPIPS (0 = CPU)."""
    photometric_weight: float = Field(1.0, ge=0.0, le=10.0)
    """λ1: weight of r_photo inside r_PA."""
    perceptual_weight: float = Field(0.5, ge=0.0, le=10.0)
    """λ2: weight of r_perc = 1 − LPIPS inside r_PA."""
    lpips_weights: str = ""
    """Path to AlexNet backbone weights (``alexnet-owt-7be5be79.pth``); empty = look in the torch hub cache,
    and fall back to a random backbone with a loud warning when absent."""
    attribute_resolution: int = Field(512, ge=32, le=4096)
    """Long side images are downsampled to before computing Lab attributes."""
    lpips_resolution: int = Field(256, ge=32, le=2048)
    """Long side images are resized to before LPIPS."""
