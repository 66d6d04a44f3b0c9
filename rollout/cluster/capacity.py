"""The capacity plan: a modelled time per stage of one step at real size, and how idle the GPUs are.

Owns the arithmetic ``photocrafter check-config`` prints after the resource plan, so a team can size a cluster
before renting it: FLOPs per critique token and per DiT forward, a roofline time for each (compute-bound at
``compute_efficiency`` of the bf16 peak, or memory-bound at ``bandwidth_efficiency`` of the HBM bandwidth when
decoding), each weight sync by the model of its data plane (:mod:`rollout.sync.cost`: a copy in place on a
colocated GPU), the
step time of the synchronous loop and of the overlapped one (``trainer.max_staleness`` ≥ 1) for the run's split
of GPUs and placement (a colocated model's stages share its GPUs and pay its changes of turn), and the fraction
of GPU time spent waiting in each. Training counts every forward a learner runs: the recomputation of gradient
checkpointing, the reference forward only with a KL term, both guidance branches only when the guided velocity
is trained, and the trained fraction of timesteps. The step's work (:class:`StepWork`) is computed once and
divided over a :class:`Split`, so the placement planner (:mod:`rollout.cluster.planner`) can weigh thousands of
splits.

Every figure is a model from the architectures' shapes and the ``cluster.capacity`` inputs, never a
measurement; docs/cluster.md lists the formulas and their sources. Architectures are read from the checkpoints'
``config.json`` when readable here, else the published Qwen2.5-VL-7B and Qwen-Image shapes are used. Reward
workers run on CPUs and VAE encode/decode is small next to the DiT: neither is modelled. Imports no Ray or torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from learner.memory import CRITIC_PROMPT_TEXT_TOKENS, use_gradient_checkpointing
from rollout.cluster.placement import ResourcePlan
from rollout.config import TrainConfig
from rollout.sync.cost import sync_plane, sync_seconds

BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "auto": 2}
"""Bytes per weight in each serving dtype (``auto`` is bfloat16 on a GPU)."""
ADAPTER_BYTES = 4
"""peft keeps LoRA weights in float32 beside a bf16 base, so an adapter sync moves 4 bytes per parameter."""
SECONDS_FORMAT_WIDTH = 9


@dataclass(frozen=True, slots=True)
class CriticShape:
    """What the critic's FLOP and byte counts need (a Qwen2.5-VL)."""

    params: float
    """Every weight: what a replica reads from memory for each decoded token."""
    lm_matmul_params: float
    """Weights a text token is multiplied with: the decoder layers and the LM head (not the input embedding)."""
    layers: int
    hidden: int
    kv_width: int
    """Key/value heads × head size: the K and V cache width per layer."""
    vision_params: float
    pixels_per_token: int
    """Image pixels per vision token after patch merging: (patch × merge)² = 28² for Qwen2.5-VL."""
    source: str


@dataclass(frozen=True, slots=True)
class DitShape:
    """What the DiT's FLOP count needs (a Qwen-Image MMDiT: separate image and text weights in every block)."""

    layers: int
    inner: int
    """Attention heads × head size (3072 for Qwen-Image)."""
    text_in: int
    """Width of the conditioning hidden states projected into the text stream (the critic's hidden size)."""
    pixels_per_token: int
    """Image pixels per latent token: VAE downsampling × patch size = 16."""
    source: str

    @property
    def params(self) -> float:
        """The blocks' weights: each stream's attention projections and MLP (2 × 12·d² per block), and the text
        input projection (what decides whether ``gradient_checkpointing: auto`` is on)."""
        return 24 * self.inner * self.inner * self.layers + self.text_in * self.inner


QWEN25_VL_7B = CriticShape(params=8.29e9, lm_matmul_params=7.07e9, layers=28, hidden=3584, kv_width=4 * 128,
                           vision_params=0.675e9, pixels_per_token=28 * 28, source="nominal Qwen2.5-VL-7B")
QWEN_IMAGE_DIT = DitShape(layers=60, inner=24 * 128, text_in=3584, pixels_per_token=16,
                          source="nominal Qwen-Image DiT")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def critic_shape(model: str) -> CriticShape:
    """From ``<model>/config.json`` (transformers layout) when readable, else the nominal 7B."""
    config = _read_json(Path(model).expanduser() / "config.json") if model != "embedded" else None
    if not config:
        return QWEN25_VL_7B
    text = config.get("text_config", config)
    vision = config.get("vision_config", {})
    h, layers, inter = text["hidden_size"], text["num_hidden_layers"], text["intermediate_size"]
    heads = text["num_attention_heads"]
    kv = text.get("num_key_value_heads", heads) * (h // heads)
    vocab = text["vocab_size"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * inter  # q, o; k, v; gate, up, down
    lm_matmul = layers * per_layer + vocab * h
    embeddings = vocab * h * (1 if text.get("tie_word_embeddings", config.get("tie_word_embeddings")) else 2)
    vh, depth = vision.get("hidden_size", 1280), vision.get("depth", 32)
    vision_params = depth * (4 * vh * vh + 3 * vh * vision.get("intermediate_size", 3420))
    patch = vision.get("patch_size", 14) * vision.get("spatial_merge_size", 2)
    return CriticShape(params=layers * per_layer + embeddings + vision_params, lm_matmul_params=lm_matmul,
                       layers=layers, hidden=h, kv_width=kv, vision_params=vision_params,
                       pixels_per_token=patch * patch, source=f"{model}/config.json")


def dit_shape(model: str) -> DitShape:
    """From ``<model>/transformer/config.json`` (diffusers layout) when readable, else the nominal Qwen-Image."""
    config = _read_json(Path(model).expanduser() / "transformer" / "config.json") if model != "embedded" else None
    if not config:
        return QWEN_IMAGE_DIT
    return DitShape(layers=config["num_layers"], inner=config["num_attention_heads"] * config["attention_head_dim"],
                    text_in=config["joint_attention_dim"], pixels_per_token=8 * config.get("patch_size", 2),
                    source=f"{model}/transformer/config.json")


# ----------------------------------------------------------------------------------------------- formulas
def critic_token_flops(shape: CriticShape, context: float) -> float:
    """FLOPs to run one text token through the critic with ``context`` tokens before it: 2 per matmul weight,
    plus attention over the context (QKᵀ and AV: 4 × layers × hidden × context)."""
    return 2 * shape.lm_matmul_params + 4 * shape.layers * shape.hidden * context


def critic_prefill_flops(shape: CriticShape, prompt_tokens: float, image_pixels: float) -> float:
    """FLOPs of one prompt's prefill: every prompt token (causal attention: half the square) and the vision
    encoder over the image's patches (4 per merged token; its windowed attention is not counted)."""
    patches = 4 * image_pixels / shape.pixels_per_token
    return (2 * shape.lm_matmul_params * prompt_tokens + 2 * shape.layers * shape.hidden * prompt_tokens ** 2
            + 2 * shape.vision_params * patches)


def dit_forward_flops(shape: DitShape, image_tokens: float, text_tokens: float) -> float:
    """FLOPs of one DiT forward over ``image_tokens`` (target + condition latents) and ``text_tokens`` (H_c).

    Each token is multiplied by its own stream's attention projections (4·d²) and MLP (8·d²) in every block;
    text tokens first pass the input projection (text_in·d); joint attention costs 4 × layers × d × T² for the
    T tokens together. Per-sample modulation weights are applied once per forward and left out.
    """
    tokens = image_tokens + text_tokens
    d = shape.inner
    linear = 2 * 12 * d * d * shape.layers * tokens + 2 * shape.text_in * d * text_tokens
    return linear + 4 * shape.layers * d * tokens * tokens


def roofline_seconds(flops: float, nbytes: float, gpus: float, capacity) -> float:
    """The slower of computing ``flops`` and reading ``nbytes`` on ``gpus`` GPUs at the achieved fractions."""
    gpus = max(gpus, 1e-9)
    compute = flops / (gpus * capacity.gpu_bf16_tflops * 1e12 * capacity.compute_efficiency)
    memory = nbytes / (gpus * capacity.gpu_memory_bandwidth_gbs * 1e9 * capacity.bandwidth_efficiency)
    return max(compute, memory)


def generation_seconds(shape: CriticShape, *, prompts: int, sequences: int, prompt_tokens: float,
                       image_pixels: float, new_tokens: int, weight_bytes: float, gpus: float, capacity) -> float:
    """One replica generating ``sequences`` responses from ``prompts`` prompts (sampling n from one prompt
    shares its prefill): the prefill, then ``new_tokens`` decode steps that each read every weight once and
    every sequence's KV cache (2 bytes per value), or compute, whichever is slower."""
    prefill = roofline_seconds(prompts * critic_prefill_flops(shape, prompt_tokens, image_pixels), 0.0, gpus,
                               capacity)
    context = prompt_tokens + new_tokens / 2
    kv_bytes = sequences * 2 * shape.layers * shape.kv_width * 2 * context
    step = roofline_seconds(sequences * critic_token_flops(shape, context), weight_bytes + kv_bytes, gpus, capacity)
    return prefill + new_tokens * step


def step_seconds(stages: dict[str, float], *, overlapped: bool, artist_colocated: bool = False) -> float:
    """Wall time of one steady-state step from stage times (seconds), in the order the controller runs them.

    ``switch_critic`` / ``switch_artist`` (0 when absent) are a colocated model's changes of turn in one step:
    the critic's GPUs change four times (to prepare, back to re-score, to the update, back with the in-place
    sync), the artist's twice (to the update, back with the in-place sync); both learners take their turn before
    the updates start.

    Synchronous: rollout, prepare, sampling and re-scoring one after another, both updates side by side, then
    both syncs. Overlapped (``max_staleness`` ≥ 1): the artist update of step k runs during step k+1 — until
    that step's update stage when the samplers have GPUs of their own (the period is the longer of the critic
    chain and the artist update, plus the artist sync), or until its sampling when they share the learner's
    GPUs (the update overlaps the critic's update, sync, rollout and prepare; sampling then starts from the new
    adapter, synced in place).
    """
    tc, ta = stages.get("switch_critic", 0.0) / 4, stages.get("switch_artist", 0.0) / 2
    rollout, prepare, sample, rescore = (stages[k] for k in ("critic_rollout", "prepare", "artist_sample", "rescore"))
    critic_update, artist_update = stages["critic_update"], stages["artist_update"]
    sync_critic, sync_artist = stages["sync_critic"] + tc, stages["sync_artist"] + ta
    if not overlapped:
        chain = rollout + tc + prepare + sample + tc + rescore
        return chain + ta + tc + max(critic_update, artist_update) + sync_critic + sync_artist
    if artist_colocated:
        before_sampling = critic_update + sync_critic + rollout + tc + prepare
        return ta + tc + max(before_sampling, artist_update) + sync_artist + sample + tc + rescore
    chain = critic_update + sync_critic + rollout + tc + prepare + sample + tc + rescore
    return tc + max(chain, artist_update) + sync_artist


def idle_fraction(busy_gpu_seconds: float, total_gpus: float, step_s: float) -> float:
    """Share of the GPUs' time in a step spent not computing."""
    if total_gpus <= 0 or step_s <= 0:
        return 0.0
    return max(0.0, 1.0 - busy_gpu_seconds / (total_gpus * step_s))


# ------------------------------------------------------------------------------------------- the split
@dataclass(frozen=True, slots=True)
class Split:
    """How a run's GPUs are split between roles, and which models are colocated (``placement``).

    A colocated model's replicas and learner ranks are the same GPUs: ``replicas × gpus_per_replica`` equals its
    learner's GPUs and they count once.
    """

    critic_colocated: bool
    artist_colocated: bool
    replicas: int
    """Critic rollout replicas (``critic.num_replicas``)."""
    gpus_per_replica: float
    critic_learner: int
    """GPUs of the critic learner (``learner.critic.gpus``)."""
    samplers: int
    gpus_per_sampler: float
    artist_learner: int
    """GPUs of the artist learner (``learner.artist.gpus``)."""

    @classmethod
    def from_config(cls, config: TrainConfig) -> Split:
        c, a, learner = config.critic, config.artist, config.learner
        return cls(critic_colocated=config.placement.critic == "colocated",
                   artist_colocated=config.placement.artist == "colocated", replicas=c.num_replicas,
                   gpus_per_replica=c.gpus_per_replica, critic_learner=learner.critic.gpus,
                   samplers=a.num_samplers, gpus_per_sampler=a.gpus_per_sampler, artist_learner=learner.artist.gpus)

    @property
    def rollout_gpus(self) -> float:
        return self.replicas * self.gpus_per_replica

    @property
    def sampler_gpus(self) -> float:
        return self.samplers * self.gpus_per_sampler

    @property
    def critic_gpus(self) -> float:
        """GPUs the critic holds: rollout and learner, or one shared set."""
        if self.critic_colocated:
            return float(self.critic_learner)
        return self.rollout_gpus + self.critic_learner

    @property
    def artist_gpus(self) -> float:
        if self.artist_colocated:
            return float(self.artist_learner)
        return self.sampler_gpus + self.artist_learner

    @property
    def total_gpus(self) -> float:
        return self.critic_gpus + self.artist_gpus

    def describe(self) -> str:
        if self.critic_colocated:
            critic = f"critic colocated on {_count(self.critic_learner, 'GPU')} (a replica and a learner rank on each)"
        else:
            critic = (f"critic disaggregated: {_count(self.replicas, 'replica')} × {self.gpus_per_replica:g} GPU, "
                      f"learner on {_count(self.critic_learner, 'GPU')}")
        if self.artist_colocated:
            artist = f"artist colocated on {_count(self.artist_learner, 'GPU')} (a sampler and a learner rank on each)"
        else:
            artist = (f"artist disaggregated: {_count(self.samplers, 'sampler')} × {self.gpus_per_sampler:g} GPU, "
                      f"learner on {_count(self.artist_learner, 'GPU')}")
        return f"{critic}; {artist}"


def _count(n: float, noun: str) -> str:
    return f"{n:g} {noun}{'' if n == 1 else 's'}"


# ------------------------------------------------------------------------------------------------ the plan
@dataclass(frozen=True, slots=True)
class StageEstimate:
    name: str
    gpus: float
    """GPUs busy in this stage (0 for transfers and changes of turn)."""
    seconds: float
    detail: str


@dataclass(frozen=True, slots=True)
class TimePlan:
    stages: tuple[StageEstimate, ...]
    split: Split
    edits: int
    """Edits one step makes (B·G·K)."""
    busy_gpu_seconds: float
    sync_step_s: float
    overlapped_step_s: float
    max_staleness: int
    notes: tuple[str, ...]

    @property
    def total_gpus(self) -> float:
        return self.split.total_gpus

    @property
    def sync_idle(self) -> float:
        return idle_fraction(self.busy_gpu_seconds, self.total_gpus, self.sync_step_s)

    @property
    def overlapped_idle(self) -> float:
        return idle_fraction(self.busy_gpu_seconds, self.total_gpus, self.overlapped_step_s)

    @property
    def step_s(self) -> float:
        """The step of the configured loop (``trainer.max_staleness``)."""
        return self.overlapped_step_s if self.max_staleness else self.sync_step_s

    @property
    def idle(self) -> float:
        return self.overlapped_idle if self.max_staleness else self.sync_idle

    @property
    def edits_per_gpu_second(self) -> float:
        """Throughput of the configured loop over every GPU of the split."""
        return self.edits / (self.step_s * self.total_gpus) if self.step_s and self.total_gpus else 0.0

    def stage(self, name: str) -> StageEstimate:
        return next(s for s in self.stages if s.name == name)

    def format(self) -> str:
        lines = ["modelled from architecture shapes and cluster.capacity (not measured; see docs/cluster.md)",
                 f"placement: {self.split.describe()}",
                 f"{'stage':<15} {'GPUs':>5} {'seconds':>{SECONDS_FORMAT_WIDTH}}  work"]
        for s in self.stages:
            gpus = f"{s.gpus:g}" if s.gpus else "-"
            seconds = f"{s.seconds:.1f}" if s.seconds >= 1 else f"{s.seconds:.2f}"
            lines.append(f"{s.name:<15} {gpus:>5} {seconds:>{SECONDS_FORMAT_WIDTH}}  {s.detail}")
        chosen = "overlapped" if self.max_staleness else "synchronous"
        for name, step, idle in (("synchronous", self.sync_step_s, self.sync_idle),
                                 ("overlapped", self.overlapped_step_s, self.overlapped_idle)):
            mark = "  <- trainer.max_staleness" if name == chosen else ""
            label = "max_staleness 0" if name == "synchronous" else "max_staleness ≥ 1"
            lines.append(f"step, {name} ({label}): {step:.1f} s, GPUs idle {100 * idle:.0f} % of the "
                         f"{self.total_gpus:g} GPUs' time{mark}")
        lines.append(f"throughput: {self.edits_per_gpu_second:.3f} edits per GPU-second ({self.edits} edits per "
                     f"{chosen} step)")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _giga(x: float) -> str:
    return f"{x / 1e9:.1f} GFLOP" if x < 1e12 else f"{x / 1e12:.1f} TFLOP"


@dataclass(frozen=True, slots=True)
class StepWork:
    """The work of one step, independent of how the GPUs are split: what :func:`stage_estimates` divides."""

    critic: CriticShape
    dit: DitShape
    prompts: int
    """B photos."""
    critiques: int
    """B·G."""
    edits: int
    """B·G·K."""
    prompt_tokens: float
    image_pixels: int
    new_tokens: int
    rescore_tokens: int
    critic_weight_bytes: float
    """The critic in its serving dtype (what a replica reads per decode step, and a full sync moves)."""
    critic_forward: float
    """FLOPs of one teacher-forced forward of a prompt and its response."""
    prepare_forwards: int
    """Forwards per critique in prepare: old log-probs, and reference log-probs when the KL term is on."""
    critic_train_forwards: int
    """Forward-equivalents per critique in the update: forward, backward (1 with LoRA, 2 for a full fine-tune),
    and the recomputed forward of gradient checkpointing."""
    critic_checkpointing: bool
    critic_lora: bool
    dit_forward: float
    image_tokens: float
    text_tokens: float
    sample_evaluations: int
    """DiT forwards per edit while sampling: ODE steps, twice with classifier-free guidance."""
    train_timesteps: int
    update_forwards: int
    """DiT forward-equivalents per trained timestep: v_old, v_ref (KL on), v_θ with its LoRA backward (2) and the
    recompute of checkpointing (1), all twice when the guided velocity is trained."""
    update_terms: str
    adapter_bytes: float
    lora_rank: int
    sync_backend: str
    """``sync.backend``: which data plane each sync takes (:func:`rollout.sync.cost.sync_plane`)."""
    notes: tuple[str, ...]

    @classmethod
    def from_config(cls, config: TrainConfig) -> StepWork:
        cap = config.cluster.capacity
        c, a, lc, la, t = config.critic, config.artist, config.learner.critic, config.learner.artist, config.trainer
        critic, dit = critic_shape(c.model), dit_shape(a.model)
        B, G, K = t.batch_size, c.group_size, a.edits_per_critique
        mean_tokens = cap.mean_response_tokens or c.max_new_tokens
        vision_tokens = c.max_pixels / critic.pixels_per_token  # photos are larger than the bound at real sizes
        prompt = CRITIC_PROMPT_TEXT_TOKENS + vision_tokens
        critic_ckpt = use_gradient_checkpointing(lc.gradient_checkpointing, critic.params)
        # Backward: activation gradients ≈ one forward; weight gradients another, only when every weight trains.
        critic_train = (2 if lc.lora.enabled else 3) + (1 if critic_ckpt else 0)
        guided = a.guidance_scale > 1
        train_cfg = guided if la.train_cfg == "auto" else bool(la.train_cfg)
        dit_ckpt = use_gradient_checkpointing(la.gradient_checkpointing, dit.params)
        # Per timestep: v_old, v_ref when KL is on, v_θ forward + LoRA backward (≈ 2 forwards), + recompute.
        per_timestep = 3 + (1 if la.kl_coef > 0 else 0) + (1 if dit_ckpt else 0)
        terms = ["v_old", *(["v_ref"] if la.kl_coef > 0 else []), "v_θ with its LoRA backward (2)",
                 *(["checkpointing recompute"] if dit_ckpt else [])]
        if train_cfg:
            per_timestep *= 2
        targets = len(la.lora.target_modules) or 8  # the DiT's 8 joint-attention projections by default
        return cls(
            critic=critic, dit=dit, prompts=B, critiques=B * G, edits=B * G * K, prompt_tokens=prompt,
            image_pixels=c.max_pixels, new_tokens=c.max_new_tokens,
            rescore_tokens=c.rescore_max_new_tokens or c.max_new_tokens,
            critic_weight_bytes=critic.params * BYTES[c.dtype],
            critic_forward=critic_prefill_flops(critic, prompt + mean_tokens, c.max_pixels),
            prepare_forwards=1 + (1 if lc.kl_coef > 0 else 0), critic_train_forwards=critic_train,
            critic_checkpointing=critic_ckpt, critic_lora=lc.lora.enabled,
            dit_forward=dit_forward_flops(dit, 2 * (a.resolution / dit.pixels_per_token) ** 2, prompt + mean_tokens),
            image_tokens=2 * (a.resolution / dit.pixels_per_token) ** 2,  # noisy target + condition latents
            text_tokens=prompt + mean_tokens,  # H_c: context and reasoning
            sample_evaluations=a.num_steps * (2 if guided else 1),
            train_timesteps=max(1, min(a.num_steps, int(a.num_steps * la.timestep_fraction))),
            update_forwards=per_timestep,
            update_terms=", ".join(terms) + ("; ×2 for the guided velocity" if train_cfg else ""),
            adapter_bytes=targets * la.lora.rank * 2 * dit.inner * dit.layers * ADAPTER_BYTES,
            lora_rank=la.lora.rank, sync_backend=config.sync.backend,
            notes=(f"architectures: {critic.source}; {dit.source}",
                   "reward workers (CPU), VAE encode/decode and data loading are not modelled"))


def stage_estimates(work: StepWork, split: Split, cap, switch_seconds: dict[str, float] | None = None
                    ) -> tuple[StageEstimate, ...]:
    """Each stage's modelled time on ``split``'s GPUs; ``switch_seconds`` (model → one change of turn) adds a
    colocated model's changes of turn."""
    w, switch = work, switch_seconds or {}
    replicas, replica_gpus = max(split.replicas, 1), max(split.gpus_per_replica, 1e-9)
    rollout = generation_seconds(w.critic, prompts=math.ceil(w.prompts / replicas),
                                 sequences=math.ceil(w.critiques / replicas), prompt_tokens=w.prompt_tokens,
                                 image_pixels=w.image_pixels, new_tokens=w.new_tokens,
                                 weight_bytes=w.critic_weight_bytes, gpus=replica_gpus, capacity=cap)
    rescore_sequences = math.ceil(w.edits / replicas)
    rescore = generation_seconds(w.critic, prompts=rescore_sequences, sequences=rescore_sequences,
                                 prompt_tokens=w.prompt_tokens, image_pixels=w.image_pixels,
                                 new_tokens=w.rescore_tokens, weight_bytes=w.critic_weight_bytes, gpus=replica_gpus,
                                 capacity=cap)
    critic_gpus = max(split.critic_learner, 1e-9)
    prepare = roofline_seconds(w.critiques * w.prepare_forwards * w.critic_forward, 0.0, critic_gpus, cap)
    critic_update = roofline_seconds(w.critiques * w.critic_train_forwards * w.critic_forward, 0.0, critic_gpus, cap)
    sample = (math.ceil(w.edits / max(split.samplers, 1)) * w.sample_evaluations
              * roofline_seconds(w.dit_forward, 0.0, max(split.gpus_per_sampler, 1e-9), cap))
    artist_update = roofline_seconds(w.edits * w.train_timesteps * w.update_forwards * w.dit_forward, 0.0,
                                     max(split.artist_learner, 1e-9), cap)
    critic_plane = sync_plane(w.sync_backend, learner_gpus=split.critic_learner, replica_gpus=split.gpus_per_replica,
                              colocated=split.critic_colocated)
    artist_plane = sync_plane(w.sync_backend, learner_gpus=split.artist_learner, replica_gpus=split.gpus_per_sampler,
                              colocated=split.artist_colocated)
    # Every tensor-parallel worker of a replica receives the whole model (its weight loaders keep their slice).
    critic_sync = sync_seconds(w.critic_weight_bytes, critic_plane, senders=max(1, split.critic_learner),
                               receivers=replicas * max(1, math.ceil(split.gpus_per_replica)),
                               total_gpus=split.total_gpus, capacity=cap)
    artist_sync = sync_seconds(w.adapter_bytes, artist_plane, senders=max(1, split.artist_learner),
                               receivers=max(split.samplers, 1), total_gpus=split.total_gpus, capacity=cap)
    per_token = critic_token_flops(w.critic, w.prompt_tokens + w.new_tokens / 2)
    backward = "LoRA" if w.critic_lora else "full"
    stages = [
        StageEstimate("critic_rollout", split.rollout_gpus, rollout,
                      f"{w.critiques} critiques × {w.new_tokens} tokens on {_count(split.replicas, 'replica')}; "
                      f"{_giga(per_token)}/token, {w.critic_weight_bytes / 1e9:.1f} GB of weights read per decode step"),
        StageEstimate("prepare", split.critic_learner, prepare,
                      f"{w.critiques}×{w.prepare_forwards} forwards of {w.prompt_tokens + w.new_tokens:.0f} tokens, "
                      f"{_giga(w.critic_forward)} each"),
        StageEstimate("artist_sample", split.sampler_gpus, sample,
                      f"{w.edits} edits × {w.sample_evaluations} DiT forwards on {_count(split.samplers, 'sampler')}; "
                      f"{_giga(w.dit_forward)}/forward at {int(w.image_tokens)} image + {w.text_tokens:.0f} text "
                      f"tokens"),
        StageEstimate("rescore", split.rollout_gpus, rescore, f"{w.edits} greedy re-scores × {w.rescore_tokens} tokens"),
        StageEstimate("critic_update", split.critic_learner, critic_update,
                      f"GRPO on {w.critiques} sequences, {backward} backward"
                      f"{' + checkpointing recompute' if w.critic_checkpointing else ''} "
                      f"({w.critic_train_forwards} forwards each)"),
        StageEstimate("artist_update", split.artist_learner, artist_update,
                      f"DiffusionNFT on {w.edits} edits × {w.train_timesteps} timesteps × {w.update_forwards} "
                      f"forwards ({w.update_terms})"),
        StageEstimate("sync_critic", 0, critic_sync.seconds,
                      f"critic in its serving dtype: {critic_sync.detail}"),
        StageEstimate("sync_artist", 0, artist_sync.seconds, f"LoRA r{w.lora_rank} in fp32: {artist_sync.detail}"),
    ]
    for model, changes, colocated in (("critic", 4, split.critic_colocated), ("artist", 2, split.artist_colocated)):
        if colocated:
            one = switch.get(model, 0.0)
            stages.append(StageEstimate(f"switch_{model}", 0, changes * one,
                                        f"{changes} changes of turn on the shared GPUs × {one:.2f} s (host link)"))
    return tuple(stages)


def busy_gpu_seconds(stages: tuple[StageEstimate, ...]) -> float:
    """GPU-seconds of computation in one step: each stage's GPUs × its time (transfers and switches excluded)."""
    return sum(s.gpus * s.seconds for s in stages)


def time_plan(config: TrainConfig, plan: ResourcePlan | None = None) -> TimePlan:
    """The modelled step of ``config`` on its GPUs; ``plan`` (the resource plan) gives a colocated model's
    changes of turn."""
    work = StepWork.from_config(config)
    split = Split.from_config(config)
    return plan_for(work, split, config.cluster.capacity, config.trainer.max_staleness,
                    switch_seconds_of(plan, config.cluster.capacity) if plan is not None else None)


def switch_seconds_of(plan: ResourcePlan, cap) -> dict[str, float]:
    """Seconds of one change of turn per colocated model: the bytes it moves over the host link."""
    return {model: turns.bytes_per_switch / (cap.host_link_gbs * 1e9) for model, turns in plan.turns.items()}


def plan_for(work: StepWork, split: Split, cap, max_staleness: int,
             switch_seconds: dict[str, float] | None = None) -> TimePlan:
    """The time plan of ``work`` on ``split`` (what the placement planner evaluates for every candidate)."""
    stages = stage_estimates(work, split, cap, switch_seconds)
    seconds = {s.name: s.seconds for s in stages}
    return TimePlan(stages=stages, split=split, edits=work.edits, busy_gpu_seconds=busy_gpu_seconds(stages),
                    sync_step_s=step_seconds(seconds, overlapped=False, artist_colocated=split.artist_colocated),
                    overlapped_step_s=step_seconds(seconds, overlapped=True, artist_colocated=split.artist_colocated),
                    max_staleness=max_staleness, notes=work.notes)
