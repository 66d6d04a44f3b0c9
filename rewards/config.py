"""Configuration section ``rewards``: weights and tolerances of every reward, and the reward-worker pool.

Owns the numbers that define what both models are rewarded for (ALGORITHMS.md §5) and the pool size.
"""

from __future__ import annotations

from pydantic import Field

from rollout.records.config_base import ConfigModel


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
    require_real_lpips: bool = False
    """Refuse to start when no real AlexNet weights are found (instead of running LPIPS on a random
    backbone with a loud warning and an MLflow tag)."""
    compliance_margin: float = Field(0.5, ge=0.0, le=10.0)
    """A tone suggestion counts as followed when the edit moved the attribute in the asked direction by
    more than this fraction of its negligible-change tolerance τ_k."""
    format_weight: float = Field(1.0, ge=0.0, le=10.0)
    """Critic reward: weight of the format term; r_C = r_fmt · (w_fmt + w_rank·r_rank + w_sugg·r_sugg)."""
    rank_weight: float = Field(1.0, ge=0.0, le=10.0)
    """Critic reward: weight of r_rank (the critic scores its edit above the input)."""
    suggestion_weight: float = Field(1.0, ge=0.0, le=10.0)
    """Critic reward: weight of r_sugg (the rule-based pseudo-edit moves toward the target)."""
    batch_size: int = Field(8, ge=1, le=4096)
    """Records per call to one reward worker (LPIPS runs them as one batch)."""
    max_inflight_per_worker: int = Field(2, ge=1, le=64)
    """Batches queued on each worker at once (2 keeps a worker busy while its last result travels)."""
