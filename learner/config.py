"""Configuration section ``learner``: the critic's GRPO learner and the artist's DiffusionNFT learner.

Owns every optimisation knob of both models (ALGORITHMS.md §1.6, §2.4, §7). Defaults follow the reference
implementations named there.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rollout.records.config_base import ConfigModel


class LoraConfig(ConfigModel):
    """A LoRA adapter (peft)."""

    enabled: bool = True
    """Train a LoRA adapter instead of the full weights."""
    rank: int = Field(32, ge=1, le=1024)
    """LoRA rank r."""
    alpha: float = Field(64.0, gt=0.0, le=4096.0)
    """LoRA scaling numerator α (the update is scaled by α / r)."""
    target_modules: list[str] = Field(default_factory=list)
    """Module names to adapt; empty = the role's default (the DiT's 8 attention projections for the artist,
    all linear layers of the language model for the critic)."""


class CriticLearnerConfig(ConfigModel):
    """GRPO for the Image Critic, as verl implements it (ALGORITHMS.md §2)."""

    lr: float = Field(1e-6, gt=0.0, le=1.0)
    """AdamW learning rate (verl's full fine-tune default; ~3e-6 with LoRA)."""
    weight_decay: float = Field(0.01, ge=0.0, le=1.0)
    """AdamW weight decay."""
    grad_clip: float = Field(1.0, gt=0.0, le=1e4)
    """Gradient-norm clip."""
    clip_ratio_low: float = Field(0.2, ge=0.0, le=1.0)
    """PPO ratio clip below 1 (ratio ≥ 1 − clip_ratio_low)."""
    clip_ratio_high: float = Field(0.2, ge=0.0, le=10.0)
    """PPO ratio clip above 1 (0.28 = DAPO clip-higher)."""
    clip_ratio_c: float = Field(3.0, gt=1.0, le=100.0)
    """Dual-clip bound for negative advantages."""
    loss_agg_mode: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                           "seq-mean-token-sum-norm"] = "token-mean"
    """How per-token losses are reduced over the batch."""
    kl_coef: float = Field(0.01, ge=0.0, le=10.0)
    """Coefficient of the k3 (low-variance) KL to the reference policy; 0 disables the reference forward."""
    entropy_coef: float = Field(0.0, ge=0.0, le=1.0)
    """Entropy bonus coefficient."""
    norm_adv_by_std: bool = True
    """Divide group-centred rewards by the group std (False = Dr.GRPO)."""
    filter_zero_variance_groups: bool = False
    """Drop groups whose rewards are all equal (DAPO dynamic sampling, without resampling). Off by default
    although ALGORITHMS.md §7 recommends it: such a group's advantages are all 0, so it adds no policy
    gradient either way; dropping it only shrinks the token-mean denominator and the KL sample, and without
    DAPO's resampling a step whose groups are all flat (e.g. a critic that never writes the grammar) would
    train nothing. docs/results.md reports the flat share measured (``groups/critic/zero_variance_frac``)."""
    overlong_buffer: int = Field(0, ge=0, le=8192)
    """DAPO overlong shaping buffer in tokens (0 = off)."""
    overlong_penalty: float = Field(1.0, ge=0.0, le=10.0)
    """Penalty reached at max_new_tokens when overlong shaping is on."""
    micro_batch_size: int = Field(4, ge=1, le=1024)
    """Most sequences per forward/backward pass (on each rank)."""
    max_tokens_per_micro_batch: int = Field(0, ge=0, le=10_000_000)
    """Token budget of one forward/backward pass on one rank, counted as padded tokens (longest sequence ×
    sequences, prompt with vision tokens included), the way verl's ``ppo_max_token_len_per_gpu`` bounds
    activation memory; sequences are packed longest first. 0 = count sequences only (``micro_batch_size``).
    A sequence longer than the budget gets a pass of its own."""
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    """Recompute each decoder layer's activations in the backward pass instead of keeping them (true/false);
    ``auto`` = on for models of a billion parameters or more (the 7B critic), off for the tiny embedded one."""
    cpu_offload: bool = False
    """Keep this learner's sharded parameters, gradients and AdamW state in host memory (FSDP2 CPU offload; the
    optimizer step runs on the CPU): fits a full fine-tune on fewer GPUs at the cost of step time."""
    lora: LoraConfig = Field(default_factory=lambda: LoraConfig(enabled=False, rank=64, alpha=32.0))
    """LoRA for the critic (off = full fine-tune; reference = a frozen copy, or adapters disabled with LoRA)."""
    gpus: int = Field(0, ge=0, le=4096)
    """GPUs of the critic learner: one rank (a Ray actor) per GPU, sharded with FSDP2 and data parallel over
    them, packed on as few nodes as possible. 0 = one rank on the CPU."""


class ArtistLearnerConfig(ConfigModel):
    """DiffusionNFT for the Photographic Artist, as the official code does it (ALGORITHMS.md §1)."""

    lr: float = Field(3e-4, gt=0.0, le=1.0)
    """AdamW learning rate of the LoRA."""
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0)
    """AdamW weight decay."""
    grad_clip: float = Field(1.0, gt=0.0, le=1e4)
    """Gradient-norm clip."""
    beta: float = Field(1.0, gt=0.0, le=10.0)
    """NFT guidance strength β in v± = (1∓β)·v_old ± β·v_θ (ALGORITHMS.md §1.3)."""
    kl_coef: float = Field(1e-4, ge=0.0, le=10.0)
    """Coefficient of ‖v_θ − v_ref‖²."""
    adv_clip_max: float = Field(5.0, gt=0.0, le=100.0)
    """Advantage clip before mapping to an optimality probability."""
    old_decay_type: Literal[0, 1, 2] = 1
    """Old-policy soft-update schedule: 0 on-policy, 1 min(0.001·step, 0.5), 2 delayed (OCR)."""
    ema_decay: float = Field(0.9, ge=0.0, lt=1.0)
    """Cap of the EMA decay min((1+step)/(10+step), ema_decay) used for eval and checkpoints."""
    timestep_fraction: float = Field(0.99, gt=0.0, le=1.0)
    """Fraction of the sampler's schedule points used as training timesteps per sample."""
    group_by: Literal["auto", "critique", "photo"] = "auto"
    """Reward normalisation group: per (photo, critique), per photo, or ``auto`` — per (photo, critique) when
    ``artist.edits_per_critique`` ≥ 4, else per photo, since a mean over fewer edits makes the advantage
    mostly sampling noise (ALGORITHMS.md §8.13)."""
    mask_std_threshold: float = Field(0.0, ge=0.0, le=1.0)
    """Mask groups whose reward std is ≤ this (0 = off; Edit-R1 uses 0.05). Off by default although
    ALGORITHMS.md §7 recommends 0.05: r_PA here is gated by compliance and its components are small fractions,
    so many groups of K edits differ by less than 0.05 yet still order their edits — the embedded runs of
    docs/results.md measure that share (``groups/artist/low_std_frac``) and why masking it would drop signal."""
    ban_mean_threshold: float = Field(0.9, ge=0.0, le=10.0)
    """Edit-R1's ban: groups whose mean reward is ≥ this are not trained on (already solved; 0 = off). Adopted
    at Edit-R1's 0.9; r_PA's scale is 1·r_photo + perceptual_weight·r_perc, so raise it with a larger
    perceptual weight. docs/results.md measures how many groups it bans (``groups/artist/banned_frac``)."""
    micro_batch_size: int = Field(4, ge=1, le=1024)
    """Edits per forward/backward pass (on each rank)."""
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    """Recompute each DiT block's activations in the backward pass instead of keeping them (true/false);
    ``auto`` = on for models of a billion parameters or more (the 20B DiT), off for the tiny embedded one."""
    cpu_offload: bool = False
    """Keep this learner's sharded parameters, gradients and AdamW state in host memory (FSDP2 CPU offload)."""
    lora: LoraConfig = Field(default_factory=LoraConfig)
    """The artist LoRA (DiffusionNFT default r32 α64 on the 8 attention projections)."""
    gpus: int = Field(0, ge=0, le=4096)
    """GPUs of the artist learner: one rank (a Ray actor) per GPU, the DiT sharded with FSDP2 over them and the
    edits split between them, packed on as few nodes as possible. 0 = one rank on the CPU."""


class LearnerConfig(ConfigModel):
    """Both learners."""

    critic: CriticLearnerConfig = Field(default_factory=CriticLearnerConfig)
    """GRPO learner of the Image Critic."""
    artist: ArtistLearnerConfig = Field(default_factory=ArtistLearnerConfig)
    """DiffusionNFT learner of the Photographic Artist."""
