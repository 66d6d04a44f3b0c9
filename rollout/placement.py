"""The resource plan: which actors a run starts, what each reserves, and whether it fits the cluster.

Owns the mapping from config to roles (critic rollout replicas, artist samplers, reward workers, the two
learners), their placement strategies (learners STRICT_PACK, vLLM replicas PACK so tensor-parallel ranks sit
together, reward workers SPREAD), per-GPU memory estimates from parameter counts, and the fit check that
``photocrafter check-config`` prints and the controller enforces before creating any actor. It creates no
actor itself and never imports Ray, so the plan can be checked on a laptop for a cluster config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from rollout.config import TrainConfig

GIB = 1024**3

# Nominal parameter counts (billions) used when a checkpoint directory is not readable from this machine
# (e.g. checking a cluster config on a laptop). Qwen2.5-VL-7B: 8.29 B including the vision tower;
# Qwen-Image(-Edit) DiT: 20.43 B; its VAE: 0.13 B.
NOMINAL_CRITIC_PARAMS_B = 8.29
NOMINAL_DIT_PARAMS_B = 20.43
NOMINAL_VAE_PARAMS_B = 0.13
TINY_PARAMS_B = 0.01  # the embedded tiny models are a few million parameters
ACTIVATION_HEADROOM = 1.25  # activations, CUDA context and fragmentation on top of the state estimate


@dataclass(slots=True)
class ModelSize:
    params_b: float
    """Parameters in billions."""
    source: str
    """How the figure was obtained: ``checkpoint`` (weights on disk), ``nominal`` or ``embedded``."""


@dataclass(slots=True)
class RolePlan:
    role: str
    """Dashboard name prefix, e.g. ``critic-rollout``."""
    count: int
    gpus: float
    """GPUs per actor."""
    cpus: float
    """CPUs per actor."""
    strategy: str
    """Placement-group strategy for this role's bundles."""
    memory_gib_per_gpu: float
    """Estimated peak memory on each of the actor's GPUs (0 for CPU-only actors)."""
    note: str = ""


@dataclass(slots=True)
class ResourcePlan:
    roles: list[RolePlan]
    gpus_available: int
    gpu_memory_gib: float
    problems: list[str] = field(default_factory=list)

    @property
    def total_gpus(self) -> float:
        return sum(r.count * r.gpus for r in self.roles)

    @property
    def total_cpus(self) -> float:
        return sum(r.count * r.cpus for r in self.roles)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        lines = [f"{'role':<16} {'actors':>6} {'GPU/actor':>9} {'CPU/actor':>9} {'strategy':<12} "
                 f"{'est. GiB/GPU':>12}  note"]
        for r in self.roles:
            mem = f"{r.memory_gib_per_gpu:.1f}" if r.gpus else "-"
            lines.append(f"{r.role:<16} {r.count:>6} {r.gpus:>9g} {r.cpus:>9g} {r.strategy:<12} {mem:>12}  {r.note}")
        lines.append(f"total: {self.total_gpus:g} GPUs of {self.gpus_available} available "
                     f"({self.gpu_memory_gib:g} GiB each), {self.total_cpus:g} CPUs")
        lines += [f"PROBLEM: {p}" for p in self.problems]
        return "\n".join(lines)


def _weights_params_b(directory: Path, bytes_per_param: int) -> float | None:
    """Parameters (billions) from the weight files of a checkpoint directory, or None if unreadable."""
    if not directory.is_dir():
        return None
    total = sum(p.stat().st_size for p in directory.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt"))
    return total / bytes_per_param / 1e9 if total else None


def model_sizes(config: TrainConfig) -> tuple[ModelSize, ModelSize]:
    """(critic, artist DiT+codec) sizes: from checkpoints on disk when readable, nominal otherwise."""

    def size(value: str, sub: str, nominal: float) -> ModelSize:
        if value == "embedded":
            return ModelSize(TINY_PARAMS_B, "embedded")
        # Real checkpoints ship in bf16 (2 bytes per parameter).
        found = _weights_params_b(Path(value).expanduser() / sub, 2)
        return ModelSize(found, "checkpoint") if found else ModelSize(nominal, "nominal")

    critic = size(config.critic.model, "", NOMINAL_CRITIC_PARAMS_B)
    artist = size(config.artist.model, "transformer", NOMINAL_DIT_PARAMS_B + NOMINAL_VAE_PARAMS_B)
    return critic, artist


def _bytes_per_param(dtype: str, gpus: float) -> int:
    if dtype == "float32" or (dtype == "auto" and gpus == 0):
        return 4
    return 2


def plan_resources(config: TrainConfig) -> ResourcePlan:
    """Build the plan and list every reason it cannot run on the configured cluster."""
    critic_size, artist_size = model_sizes(config)
    c, a, lc, la = config.critic, config.artist, config.learner.critic, config.learner.artist
    gpu_mem = config.cluster.gpu_memory_gib
    roles: list[RolePlan] = []
    problems: list[str] = []

    # vLLM claims gpu_memory_utilization of each GPU; weights are split over tensor-parallel ranks.
    tp = max(1, math.ceil(c.gpus_per_replica))
    critic_weights_gib = critic_size.params_b * 1e9 * _bytes_per_param(c.dtype, c.gpus_per_replica) / GIB
    rollout_mem = c.gpu_memory_utilization * gpu_mem if c.gpus_per_replica else 0.0
    roles.append(RolePlan("critic-rollout", c.num_replicas, c.gpus_per_replica, c.cpus_per_replica, "PACK",
                          rollout_mem, f"{c.engine}, tp={tp}, weights {critic_weights_gib / tp:.1f} GiB/GPU"))
    if c.gpus_per_replica and critic_weights_gib / tp > 0.9 * rollout_mem:
        problems.append(
            f"critic-rollout: weights need {critic_weights_gib / tp:.1f} GiB per GPU but vLLM may use only "
            f"{rollout_mem:.1f} GiB (critic.gpu_memory_utilization × cluster.gpu_memory_gib); raise "
            f"critic.gpu_memory_utilization or critic.gpus_per_replica")

    artist_weights_gib = artist_size.params_b * 1e9 * _bytes_per_param(a.dtype, a.gpus_per_sampler) / GIB
    sampler_mem = artist_weights_gib * ACTIVATION_HEADROOM if a.gpus_per_sampler else 0.0
    roles.append(RolePlan("artist-sampler", a.num_samplers, a.gpus_per_sampler, a.cpus_per_sampler, "SPREAD",
                          sampler_mem, f"DiT+codec {artist_weights_gib:.1f} GiB"))

    roles.append(RolePlan("reward", config.rewards.num_workers, config.rewards.gpus_per_worker,
                          config.rewards.cpus_per_worker, "SPREAD", 0.5 if config.rewards.gpus_per_worker else 0,
                          "LPIPS alex"))

    # Critic learner: full fine-tune keeps bf16 weights + grads and fp32 master + Adam m, v (16 B/param),
    # sharded over its GPUs; a frozen reference adds 2 B/param unless LoRA (adapters disabled = reference).
    critic_b = critic_size.params_b * 1e9
    if config.trainer.train_critic:
        if lc.lora.enabled:
            state = critic_b * 2
            mode = f"LoRA r{lc.lora.rank}"
        else:
            state = critic_b * 16 + (critic_b * 2 if lc.kl_coef > 0 else 0)
            mode = "full FT" + (" + ref" if lc.kl_coef > 0 else "")
        shards = max(1.0, lc.gpus)
        mem = state / shards / GIB * ACTIVATION_HEADROOM if lc.gpus else 0.0
        roles.append(RolePlan("critic-learner", 1, lc.gpus, 1, "STRICT_PACK", mem, f"GRPO, {mode}, AdamW"))
    # Artist learner: frozen bf16 DiT (the reference = adapters disabled) + LoRA default/old/EMA + Adam.
    if config.trainer.train_artist:
        dit_b = artist_size.params_b * 1e9
        lora_params = dit_b * 0.01 * la.lora.rank / 32  # r32 LoRA on attention ≈ 1 % of the DiT
        state = dit_b * 2 + lora_params * (4 * 3 + 8)
        mem = state / max(1.0, la.gpus) / GIB * ACTIVATION_HEADROOM if la.gpus else 0.0
        roles.append(RolePlan("artist-learner", 1, la.gpus, 1, "STRICT_PACK", mem,
                              f"DiffusionNFT, LoRA r{la.lora.rank}, AdamW"))

    for role in roles:
        if role.gpus and role.memory_gib_per_gpu > gpu_mem:
            problems.append(f"{role.role}: needs ~{role.memory_gib_per_gpu:.0f} GiB per GPU, GPUs have "
                            f"{gpu_mem:g} GiB; give it more GPUs or use LoRA")
    plan = ResourcePlan(roles, config.cluster.num_gpus, gpu_mem, problems)
    if plan.total_gpus > config.cluster.num_gpus:
        problems.append(f"the roles need {plan.total_gpus:g} GPUs but cluster.num_gpus is "
                        f"{config.cluster.num_gpus}; lower replicas/GPUs per role or add GPUs")
    if critic_size.source == "nominal" or artist_size.source == "nominal":
        plan.roles[0].note += " (model sizes nominal: checkpoint not readable here)"
    return plan
