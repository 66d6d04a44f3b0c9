"""The capacity plan: a modelled time per stage of one step at real size, and how idle the GPUs are.

Owns the arithmetic ``photocrafter check-config`` prints after the resource plan, so a team can size a cluster
before renting it: FLOPs per critique token and per DiT forward, a roofline time for each (compute-bound at
``compute_efficiency`` of the bf16 peak, or memory-bound at ``bandwidth_efficiency`` of the HBM bandwidth when
decoding), the bytes a weight sync moves over ``weight_sync_gbs``, the step time of the synchronous loop and of
the overlapped one (``trainer.max_staleness`` ≥ 1), and the fraction of GPU time spent waiting in each.

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

from learner.memory import CRITIC_PROMPT_TEXT_TOKENS
from rollout.config import TrainConfig
from rollout.cluster.placement import ResourcePlan

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


def step_seconds(stages: dict[str, float], *, overlapped: bool) -> float:
    """Wall time of one steady-state step from stage times (seconds).

    Synchronous: rollout, prepare, sampling and re-scoring one after another, both updates side by side, then
    both syncs. Overlapped (``max_staleness`` ≥ 1): the artist update of step k runs during step k+1 until that
    step's update stage, so the period is the longer of the critic chain and the artist update, plus the
    artist sync that follows it.
    """
    chain = stages["critic_rollout"] + stages["prepare"] + stages["artist_sample"] + stages["rescore"]
    if not overlapped:
        return (chain + max(stages["critic_update"], stages["artist_update"]) + stages["sync_critic"]
                + stages["sync_artist"])
    return max(chain + stages["critic_update"] + stages["sync_critic"], stages["artist_update"]) + stages["sync_artist"]


def idle_fraction(busy_gpu_seconds: float, total_gpus: float, step_s: float) -> float:
    """Share of the GPUs' time in a step spent not computing."""
    if total_gpus <= 0 or step_s <= 0:
        return 0.0
    return max(0.0, 1.0 - busy_gpu_seconds / (total_gpus * step_s))


# ------------------------------------------------------------------------------------------------ the plan
@dataclass(frozen=True, slots=True)
class StageEstimate:
    name: str
    gpus: float
    """GPUs busy in this stage (0 for transfers)."""
    seconds: float
    detail: str


@dataclass(frozen=True, slots=True)
class TimePlan:
    stages: tuple[StageEstimate, ...]
    total_gpus: float
    sync_step_s: float
    overlapped_step_s: float
    sync_idle: float
    overlapped_idle: float
    max_staleness: int
    notes: tuple[str, ...]

    def stage(self, name: str) -> StageEstimate:
        return next(s for s in self.stages if s.name == name)

    def format(self) -> str:
        lines = ["modelled from architecture shapes and cluster.capacity (not measured; see docs/cluster.md)",
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
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _gpus(plan: ResourcePlan, role: str) -> float:
    found = [r for r in plan.roles if r.role == role]
    return found[0].count * found[0].gpus if found else 0.0


def _giga(x: float) -> str:
    return f"{x / 1e9:.1f} GFLOP" if x < 1e12 else f"{x / 1e12:.1f} TFLOP"


def time_plan(config: TrainConfig, plan: ResourcePlan) -> TimePlan:
    """The modelled step of ``config`` on the GPUs of ``plan``."""
    cap = config.cluster.capacity
    c, a, lc, la, t = config.critic, config.artist, config.learner.critic, config.learner.artist, config.trainer
    critic, dit = critic_shape(c.model), dit_shape(a.model)
    B, G, K = t.batch_size, c.group_size, a.edits_per_critique
    mean_tokens = cap.mean_response_tokens or c.max_new_tokens
    vision_tokens = c.max_pixels / critic.pixels_per_token  # photos are larger than the bound at real sizes
    prompt = CRITIC_PROMPT_TEXT_TOKENS + vision_tokens
    weight_bytes = critic.params * BYTES[c.dtype]
    replica_gpus = max(c.gpus_per_replica, 1e-9)

    rollout = generation_seconds(critic, prompts=math.ceil(B / c.num_replicas),
                                 sequences=math.ceil(B * G / c.num_replicas), prompt_tokens=prompt,
                                 image_pixels=c.max_pixels, new_tokens=c.max_new_tokens,
                                 weight_bytes=weight_bytes, gpus=replica_gpus, capacity=cap)
    edits = B * G * K
    rescore_tokens = c.rescore_max_new_tokens or c.max_new_tokens
    rescore_sequences = math.ceil(edits / c.num_replicas)
    rescore = generation_seconds(critic, prompts=rescore_sequences, sequences=rescore_sequences,
                                 prompt_tokens=prompt, image_pixels=c.max_pixels, new_tokens=rescore_tokens,
                                 weight_bytes=weight_bytes, gpus=replica_gpus, capacity=cap)

    sequence = prompt + mean_tokens
    forward = critic_prefill_flops(critic, sequence, c.max_pixels)
    forwards = 1 + (1 if lc.kl_coef > 0 else 0)  # old log-probs, and reference log-probs when KL is on
    critic_gpus = max(lc.gpus, 1e-9)
    prepare = roofline_seconds(B * G * forwards * forward, 0.0, critic_gpus, cap)
    # Backward: activation gradients ≈ one forward; weight gradients another, only when every weight trains.
    train_factor = 2 if lc.lora.enabled else 3
    critic_update = roofline_seconds(B * G * train_factor * forward, 0.0, critic_gpus, cap)

    image_tokens = 2 * (a.resolution / dit.pixels_per_token) ** 2  # noisy target + condition latents
    text_tokens = prompt + mean_tokens  # H_c: context and reasoning
    dit_forward = dit_forward_flops(dit, image_tokens, text_tokens)
    evaluations = a.num_steps * (2 if a.guidance_scale > 1 else 1)
    sampler_gpus = max(a.gpus_per_sampler, 1e-9)
    sample = math.ceil(edits / a.num_samplers) * evaluations * roofline_seconds(dit_forward, 0.0, sampler_gpus, cap)
    train_timesteps = max(1, min(a.num_steps, int(a.num_steps * la.timestep_fraction)))
    # Per timestep: v_old (forward), v_ref when KL is on (forward), v_θ forward + LoRA backward (≈ 2 forwards).
    per_timestep = 3 + (1 if la.kl_coef > 0 else 0)
    artist_update = roofline_seconds(edits * train_timesteps * per_timestep * dit_forward, 0.0,
                                     max(la.gpus, 1e-9), cap)

    critic_sync_bytes = critic.params * BYTES[c.dtype]
    targets = len(la.lora.target_modules) or 8  # the DiT's 8 joint-attention projections by default
    adapter_params = targets * la.lora.rank * 2 * dit.inner * dit.layers
    sync_critic = critic_sync_bytes / (cap.weight_sync_gbs * 1e9)
    sync_artist = adapter_params * ADAPTER_BYTES / (cap.weight_sync_gbs * 1e9)

    g_roll, g_samp = _gpus(plan, "critic-rollout"), _gpus(plan, "artist-sampler")
    g_cl, g_al = _gpus(plan, "critic-learner"), _gpus(plan, "artist-learner")
    per_token = critic_token_flops(critic, prompt + c.max_new_tokens / 2)
    stages = (
        StageEstimate("critic_rollout", g_roll, rollout,
                      f"{B * G} critiques × {c.max_new_tokens} tokens on {c.num_replicas} replicas; "
                      f"{_giga(per_token)}/token, {weight_bytes / 1e9:.1f} GB of weights read per decode step"),
        StageEstimate("prepare", g_cl, prepare,
                      f"{B * G}×{forwards} forwards of {sequence:.0f} tokens, {_giga(forward)} each"),
        StageEstimate("artist_sample", g_samp, sample,
                      f"{edits} edits × {evaluations} DiT forwards on {a.num_samplers} samplers; "
                      f"{_giga(dit_forward)}/forward at {a.resolution}² ({image_tokens:.0f} image + "
                      f"{text_tokens:.0f} text tokens)"),
        StageEstimate("rescore", g_roll, rescore, f"{edits} greedy re-scores × {rescore_tokens} tokens"),
        StageEstimate("critic_update", g_cl, critic_update,
                      f"GRPO on {B * G} sequences, {'LoRA' if lc.lora.enabled else 'full'} backward"),
        StageEstimate("artist_update", g_al, artist_update,
                      f"DiffusionNFT on {edits} edits × {train_timesteps} timesteps × {per_timestep} forwards"),
        StageEstimate("sync_critic", 0, sync_critic,
                      f"{critic_sync_bytes / 1e9:.1f} GB (critic in {c.dtype}) at {cap.weight_sync_gbs:g} GB/s"),
        StageEstimate("sync_artist", 0, sync_artist,
                      f"{adapter_params * ADAPTER_BYTES / 1e9:.2f} GB (LoRA r{la.lora.rank}, fp32) at "
                      f"{cap.weight_sync_gbs:g} GB/s"),
    )
    seconds = {s.name: s.seconds for s in stages}
    busy = g_roll * (rollout + rescore) + g_samp * sample + g_cl * (prepare + critic_update) + g_al * artist_update
    total = plan.total_gpus
    sync_s, overlapped_s = step_seconds(seconds, overlapped=False), step_seconds(seconds, overlapped=True)
    notes = (f"architectures: {critic.source}; {dit.source}",
             "reward workers (CPU), VAE encode/decode and data loading are not modelled")
    return TimePlan(stages=stages, total_gpus=total, sync_step_s=sync_s, overlapped_step_s=overlapped_s,
                    sync_idle=idle_fraction(busy, total, sync_s),
                    overlapped_idle=idle_fraction(busy, total, overlapped_s),
                    max_staleness=t.max_staleness, notes=notes)
