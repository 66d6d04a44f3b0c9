"""The resource plan: which actors a run starts, what each reserves, and whether it fits the cluster.

Owns the mapping from config to roles (critic rollout replicas, artist samplers, reward workers, the two
learners' ranks), their placement strategies (learner ranks packed on as few nodes as possible, vLLM replicas
PACK so tensor-parallel ranks sit together, samplers and reward workers SPREAD), per-GPU memory estimates, and
the fit check that ``photocrafter check-config`` prints and the controller enforces before creating any actor.
The learners' memory comes from :mod:`learner.memory` (the formulas, from the models' own configs); the rollout
and sampler figures from the same parameter counts. It creates no actor itself and never imports Ray, so the
plan can be checked on a laptop for a cluster config.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from learner.memory import (GIB, NOMINAL_VAE_PARAMS, LearnerMemory, ModelShape, artist_learner_memory,
                            artist_shape, artist_tokens, critic_learner_memory, critic_micro_batch, critic_shape,
                            use_gradient_checkpointing)
from rollout.config import TrainConfig

PHOTO_LOADER_CPUS = 0.25
"""CPUs a photo-loading task reserves (rollout.components); the actors must leave that much of a local cluster."""
ACTIVATION_HEADROOM = 1.25  # sampler activations, CUDA context and fragmentation on top of the weights
EMBEDDED_LEARNER_BYTES = 1.0 * GIB
"""A learner rank of the tiny embedded models on a GPU: the CUDA context dominates."""


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


def learner_strategy(num_ranks: int, gpus_per_rank: float, gpus_per_node: Sequence[float]) -> str:
    """STRICT_PACK when all ranks fit on one node (or they need no GPU), else PACK: spread over as few nodes
    as Ray can manage."""
    needed = num_ranks * gpus_per_rank
    if needed == 0 or not gpus_per_node or needed <= max(gpus_per_node):
        return "STRICT_PACK"
    return "PACK"


def model_shapes(config: TrainConfig) -> tuple[ModelShape | None, ModelShape | None]:
    """(critic, artist DiT) shapes from the checkpoints' configs when readable here, the real architectures'
    nominal configs otherwise; None for the embedded tiny models (their memory is negligible)."""
    lc, la = config.learner.critic, config.learner.artist
    critic = None if config.critic.model == "embedded" else critic_shape(
        config.critic.model, lc.lora.rank if lc.lora.enabled else 0, list(lc.lora.target_modules))
    artist = None if config.artist.model == "embedded" else artist_shape(
        config.artist.model, la.lora.rank, list(la.lora.target_modules))
    return critic, artist


def _bytes_per_param(dtype: str, gpus: float) -> int:
    if dtype == "float32" or (dtype == "auto" and gpus == 0):
        return 4
    return 2


def critic_learner_plan(config: TrainConfig, shape: ModelShape | None) -> tuple[RolePlan, LearnerMemory | None]:
    """The critic learner's ranks and the memory each needs on its GPU."""
    lc, c = config.learner.critic, config.critic
    ranks, gpus = max(1, lc.gpus), (1.0 if lc.gpus else 0.0)
    mode = f"LoRA r{lc.lora.rank}" if lc.lora.enabled else "full FT" + (" + ref" if lc.kl_coef > 0 else "")
    note = f"GRPO, {mode}, {ranks} rank(s)" + (" FSDP2" if ranks > 1 else "")
    if not gpus or shape is None:
        return RolePlan("critic-learner", ranks, gpus, 1, "PACK", EMBEDDED_LEARNER_BYTES / GIB if gpus else 0.0,
                        note), None
    batch = critic_micro_batch(max_pixels=c.max_pixels, max_new_tokens=c.max_new_tokens,
                               micro_batch_size=lc.micro_batch_size,
                               max_tokens_per_micro_batch=lc.max_tokens_per_micro_batch)
    checkpointing = use_gradient_checkpointing(lc.gradient_checkpointing, shape.params)
    memory = critic_learner_memory(
        shape, ranks=ranks, lora=lc.lora.enabled, kl_coef=lc.kl_coef, cpu_offload=lc.cpu_offload,
        checkpointing=checkpointing, sequences=batch.sequences, sequence_tokens=batch.sequence_tokens,
        vision_tokens=batch.vision_tokens, response_tokens=batch.response_tokens)
    note += (f", micro-batch {batch.sequences}×{batch.sequence_tokens} tokens"
             f"{', checkpointing' if checkpointing else ''}{', CPU offload' if lc.cpu_offload else ''}"
             f"; GiB: {memory.describe()}")
    return RolePlan("critic-learner", ranks, gpus, 1, "PACK", memory.total / GIB, note), memory


def artist_learner_plan(config: TrainConfig, shape: ModelShape | None) -> tuple[RolePlan, LearnerMemory | None]:
    """The artist learner's ranks and the memory each needs on its GPU."""
    la, a, c = config.learner.artist, config.artist, config.critic
    ranks, gpus = max(1, la.gpus), (1.0 if la.gpus else 0.0)
    note = f"DiffusionNFT, LoRA r{la.lora.rank}, {ranks} rank(s)" + (" FSDP2" if ranks > 1 else "")
    if not gpus or shape is None:
        return RolePlan("artist-learner", ranks, gpus, 1, "PACK", EMBEDDED_LEARNER_BYTES / GIB if gpus else 0.0,
                        note), None
    image_tokens, text_tokens = artist_tokens(
        resolution=a.resolution, downscale=8, critic_max_pixels=c.max_pixels,
        critic_max_new_tokens=c.max_new_tokens, drop_prefix_tokens=a.drop_prefix_tokens)
    checkpointing = use_gradient_checkpointing(la.gradient_checkpointing, shape.params)
    memory = artist_learner_memory(shape, ranks=ranks, cpu_offload=la.cpu_offload, checkpointing=checkpointing,
                                   samples=la.micro_batch_size, image_tokens=image_tokens, text_tokens=text_tokens,
                                   kept_versions=config.trainer.max_staleness + 1)
    note += (f", micro-batch {la.micro_batch_size}×({2 * image_tokens}+{text_tokens}) tokens"
             f"{', checkpointing' if checkpointing else ''}{', CPU offload' if la.cpu_offload else ''}"
             f"; GiB: {memory.describe()}")
    return RolePlan("artist-learner", ranks, gpus, 1, "PACK", memory.total / GIB, note), memory


def plan_resources(config: TrainConfig) -> ResourcePlan:
    """Build the plan and list every reason it cannot run on the configured cluster."""
    critic_size, artist_size = model_shapes(config)
    c, a = config.critic, config.artist
    gpu_mem = config.cluster.gpu_memory_gib
    roles: list[RolePlan] = []
    problems: list[str] = []

    # vLLM claims gpu_memory_utilization of each GPU; weights are split over tensor-parallel ranks.
    tp = max(1, math.ceil(c.gpus_per_replica))
    critic_params = critic_size.params if critic_size else 0
    critic_weights_gib = critic_params * _bytes_per_param(c.dtype, c.gpus_per_replica) / GIB
    rollout_mem = c.gpu_memory_utilization * gpu_mem if c.gpus_per_replica else 0.0
    roles.append(RolePlan("critic-rollout", c.num_replicas, c.gpus_per_replica, c.cpus_per_replica, "PACK",
                          rollout_mem, f"{c.engine}, tp={tp}, weights {critic_weights_gib / tp:.1f} GiB/GPU"))
    if c.gpus_per_replica and critic_weights_gib / tp > 0.9 * rollout_mem:
        problems.append(
            f"critic-rollout: weights need {critic_weights_gib / tp:.1f} GiB per GPU but vLLM may use only "
            f"{rollout_mem:.1f} GiB (critic.gpu_memory_utilization × cluster.gpu_memory_gib); raise "
            f"critic.gpu_memory_utilization or critic.gpus_per_replica")

    artist_params = artist_size.params + NOMINAL_VAE_PARAMS if artist_size else 0
    artist_weights_gib = artist_params * _bytes_per_param(a.dtype, a.gpus_per_sampler) / GIB
    sampler_mem = artist_weights_gib * ACTIVATION_HEADROOM if a.gpus_per_sampler else 0.0
    roles.append(RolePlan("artist-sampler", a.num_samplers, a.gpus_per_sampler, a.cpus_per_sampler, "SPREAD",
                          sampler_mem, f"DiT+codec {artist_weights_gib:.1f} GiB"))
    if a.gpus_per_sampler and sampler_mem > gpu_mem:
        problems.append(f"artist-sampler: needs ~{sampler_mem:.0f} GiB per GPU, GPUs have {gpu_mem:g} GiB")

    roles.append(RolePlan("reward", config.rewards.num_workers, config.rewards.gpus_per_worker,
                          config.rewards.cpus_per_worker, "SPREAD", 0.5 if config.rewards.gpus_per_worker else 0,
                          "LPIPS alex"))

    for wanted, plan_of, shape, learner, knob in (
            (config.trainer.train_critic, critic_learner_plan, critic_size, config.learner.critic, "learner.critic"),
            (config.trainer.train_artist, artist_learner_plan, artist_size, config.learner.artist, "learner.artist")):
        if not wanted:
            continue
        role, memory = plan_of(config, shape)
        roles.append(role)
        if memory is not None and role.memory_gib_per_gpu > gpu_mem:
            # Only the knobs that would still lower the estimate.
            remedies = [f"raise {knob}.gpus (shards the state)"]
            if not use_gradient_checkpointing(learner.gradient_checkpointing, shape.params):
                remedies.append(f"set {knob}.gradient_checkpointing: true")
            budget = f" or {knob}.max_tokens_per_micro_batch" if knob == "learner.critic" else ""
            remedies.append(f"lower {knob}.micro_batch_size{budget}")
            if not learner.cpu_offload:
                remedies.append(f"set {knob}.cpu_offload: true")
            problems.append(
                f"{role.role}: needs ~{role.memory_gib_per_gpu:.0f} GiB per GPU, GPUs have {gpu_mem:g} GiB "
                f"({memory.describe()} GiB before fragmentation); {', '.join(remedies[:-1])}, or {remedies[-1]}")

    plan = ResourcePlan(roles, config.cluster.num_gpus, gpu_mem, problems)
    local_cpus = config.cluster.num_cpus if config.cluster.address == "local" else None
    if local_cpus is not None and plan.total_cpus + PHOTO_LOADER_CPUS > local_cpus:
        # The photo-loading tasks would wait forever for a CPU the actors hold.
        problems.append(f"the actors reserve {plan.total_cpus:g} CPUs and loading photos needs "
                        f"{PHOTO_LOADER_CPUS:g} more, but cluster.num_cpus is {local_cpus}; raise cluster.num_cpus "
                        f"(logical CPUs may exceed the cores) or lower the actors' CPUs")
    if plan.total_gpus > config.cluster.num_gpus:
        problems.append(f"the roles need {plan.total_gpus:g} GPUs but cluster.num_gpus is "
                        f"{config.cluster.num_gpus}; lower replicas/GPUs per role or add GPUs")
    nominal = [name for name, shape in (("critic", critic_size), ("artist", artist_size))
               if shape is not None and shape.source == "nominal"]
    if nominal:
        plan.roles[0].note += f" ({' and '.join(nominal)} sizes nominal: checkpoint config not readable here)"
    return plan
