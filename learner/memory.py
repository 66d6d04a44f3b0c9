"""How much GPU memory one rank of each learner needs: the one place the formulas live.

Owns the per-GPU memory model ``photocrafter check-config`` prints and enforces for the critic learner (GRPO) and
the artist learner (DiffusionNFT). It is built from the quantities the learners themselves use:

- parameter counts, LoRA sizes and the size of the largest FSDP unit, counted from the model's own config on
  the meta device (:func:`critic_shape`, :func:`artist_shape`; nominal Qwen2.5-VL-7B and Qwen-Image configs when
  the checkpoint is not readable from the machine checking the plan);
- the storage dtypes the learners use on GPU: frozen weights in bf16 (2 B/param), trained weights as fp32
  masters with fp32 gradients and AdamW moments (4 + 4 + 8 B/param), all sharded over the ranks by FSDP2, or
  kept in host memory with ``cpu_offload``;
- FSDP2's transient full copies of one unit (and the next, prefetched) in bf16, and of the root unit (embedding,
  LM head) for the whole pass;
- activations: bytes autograd keeps per token of one block (measured by ``bench/learner_memory.py``), times
  the blocks without gradient checkpointing, or each block's bf16 input plus one block being recomputed with it
  (whether ``gradient_checkpointing: auto`` turns it on is decided here too, for the learners and the plan alike:
  :func:`use_gradient_checkpointing`);
- the critic's logits at the response positions of one micro-batch (fp32, for log-probs and entropy);
- tokens per micro-batch from the token budget (``max_tokens_per_micro_batch``) or the micro-batch size.

Figures are estimates of peak allocated memory; the CUDA context and allocator fragmentation are a fixed
allowance and a factor. Nothing here allocates or touches a GPU.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

GIB = 1024**3

NOMINAL_CRITIC_CONFIG: dict[str, Any] = {
    "text_config": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                    "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                    "max_position_embeddings": 128000, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
                    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}},
    "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                      "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
                      "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31]},
    "vocab_size": 152064,
    "tie_word_embeddings": False,
}
"""Qwen2.5-VL-7B-Instruct's architecture (its ``config.json``): 8.29 B parameters."""

NOMINAL_DIT_CONFIG: dict[str, Any] = {
    "patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 60, "attention_head_dim": 128,
    "num_attention_heads": 24, "joint_attention_dim": 3584, "axes_dims_rope": (16, 56, 56),
}
"""The Qwen-Image(-Edit) DiT's architecture (``transformer/config.json``): 20.43 B parameters."""

NOMINAL_VAE_PARAMS = 127_000_000
"""Qwen-Image's VAE (``AutoencoderKLQwenImage``), kept unsharded in fp32 by the artist learner to encode photos."""

# Bytes autograd keeps per token of one block, per unit of the block's width (bf16 activations). Measured on the
# CPU at the real widths by bench/learner_memory.py (the part linear in the token count: GPU flash attention
# keeps no attention matrix, and the CPU's attention kept none either); the figures it printed are recorded in
# docs/design/learner-scaling.md.
LLM_LAYER_BYTES_PER_TOKEN_PER_WIDTH = {"full": 69.0, "lora": 59.3}
"""A Qwen2.5-VL decoder layer: full fine-tune, and LoRA r64 on every linear layer (frozen base)."""
VISION_BLOCK_BYTES_PER_TOKEN_PER_WIDTH = 54.2
"""A Qwen2.5-VL vision block, per patch (a vision token after the merger stands for 4 patches)."""
DIT_BLOCK_BYTES_PER_TOKEN_PER_WIDTH = 34.3
"""A Qwen-Image DiT block with LoRA r32 on its 8 attention projections, per image or text token."""
LOGITS_BYTES_PER_TOKEN_PER_VOCAB = 12.0
"""The critic's logits tail per response token and vocabulary entry: 4 B autograd keeps (the fp32 logits scaled
by the temperature; measured 4.13), plus 8 B of transient fp32 tensors at the peak (the entropy's softmax and
its product with the logits in the forward pass, or the logits' gradient and its bf16 cast in the backward)."""

CUDA_CONTEXT_BYTES = 1.0 * GIB
"""CUDA context, cuBLAS/NCCL workspaces."""
FRAGMENTATION = 1.10
"""Allocator fragmentation and caching on top of the peak of live tensors."""

CRITIC_PROMPT_TEXT_TOKENS = 260
"""Text tokens of the critic prompt besides the image (system turn, instruction, chat frame): the instruction's 820
characters at ~4 characters per Qwen token, plus the template, rounded up. The memory plan and the time plan
(:mod:`rollout.cluster.capacity`) both count prompts with it."""

_CRITIC_LORA_DEFAULT = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
_DIT_LORA_DEFAULT = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
                     "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")


@dataclass(frozen=True, slots=True)
class ModelShape:
    """What the formulas need to know about a model, counted from its config."""

    params: int
    """All parameters."""
    lora_params: int
    """Parameters of one LoRA adapter at the configured rank and targets (0 when LoRA is off)."""
    root_params: int
    """Parameters outside the repeated blocks (embeddings, LM head, norms, in/out projections): FSDP's root unit,
    held whole for the duration of a pass."""
    largest_block_params: int
    """The largest repeated block (one FSDP unit)."""
    blocks: int
    """Repeated blocks a pass goes through (decoder layers; DiT blocks)."""
    width: int
    """Residual width of those blocks."""
    vision_blocks: int = 0
    vision_width: int = 0
    vocab: int = 0
    source: str = "config"
    """``checkpoint`` (the config of the model directory) or ``nominal`` (the real architecture's config)."""


CHECKPOINTING_AUTO_PARAMS = 1e9
"""``gradient_checkpointing: auto`` turns checkpointing on for models of this many parameters or more (where
activations dominate a learner's memory)."""


def use_gradient_checkpointing(setting: bool | str, params: float) -> bool:
    """The config's true/false, or for ``auto`` whether a model of ``params`` parameters is large enough."""
    if setting == "auto":
        return params >= CHECKPOINTING_AUTO_PARAMS
    return bool(setting)


@dataclass(frozen=True, slots=True)
class LearnerMemory:
    """Estimated peak bytes on one GPU of a learner rank, by what holds them."""

    weights: float
    """Model weights this rank stores on the GPU (its shards)."""
    trainable_state: float
    """fp32 masters (LoRA), gradients and AdamW moments of the trained tensors (its shards); EMA and sampling
    adapters for the artist."""
    reference: float
    """A separate frozen reference model (full fine-tune with a KL term)."""
    gather_buffers: float
    """FSDP's transient full copies: one unit and the prefetched next one, the root unit, one unit's gradients."""
    activations: float
    """What autograd keeps for the backward pass of one micro-batch."""
    logits: float
    """The critic's response-position logits of one micro-batch."""
    fixed: float
    """CUDA context and workspaces."""

    @property
    def total(self) -> float:
        """Peak estimate in bytes: the parts, plus fragmentation, plus the fixed allowance."""
        variable = sum(getattr(self, f.name) for f in fields(self) if f.name != "fixed")
        return variable * FRAGMENTATION + self.fixed

    def describe(self) -> str:
        parts = [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) > 0]
        return ", ".join(f"{name.replace('_', ' ')} {value / GIB:.1f}" for name, value in parts)


# ------------------------------------------------------------------------------------------------- shapes
def _count(model, lora_rank: int, is_target) -> tuple[int, int]:
    """(parameters, LoRA parameters at ``lora_rank`` on the linear layers ``is_target`` accepts)."""
    from torch import nn

    params = sum(p.numel() for p in model.parameters())
    lora = sum(lora_rank * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and is_target(name)) if lora_rank else 0
    return params, lora


def critic_shape(model_dir: str | Path | None, lora_rank: int = 0, lora_targets: list[str] | None = None) -> ModelShape:
    """The critic's shape from its checkpoint's ``config.json`` (or the nominal 7B config), on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, Qwen2_5_VLConfig

    config_path = Path(model_dir).expanduser() / "config.json" if model_dir else None
    if config_path is not None and config_path.is_file():
        config, source = AutoConfig.from_pretrained(config_path.parent), "checkpoint"
    else:
        config, source = Qwen2_5_VLConfig(**NOMINAL_CRITIC_CONFIG), "nominal"
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    targets = lora_targets or []

    def is_target(name: str) -> bool:
        if not targets:
            return re.fullmatch(_CRITIC_LORA_DEFAULT, name) is not None
        return any(name == t or name.endswith(f".{t}") for t in targets)

    params, lora = _count(model, lora_rank, is_target)
    layers = model.model.language_model.layers
    vision = model.model.visual.blocks
    block_params = [sum(p.numel() for p in block.parameters()) for block in [*layers, *vision]]
    text = config.text_config if hasattr(config, "text_config") else config
    return ModelShape(params=params, lora_params=lora, root_params=params - sum(block_params),
                      largest_block_params=max(block_params), blocks=len(layers), width=int(text.hidden_size),
                      vision_blocks=len(vision), vision_width=int(config.vision_config.hidden_size),
                      vocab=int(text.vocab_size), source=source)


def artist_shape(model_dir: str | Path | None, lora_rank: int, lora_targets: list[str] | None = None) -> ModelShape:
    """The DiT's shape from ``transformer/config.json`` (or the nominal Qwen-Image config), on the meta device."""
    import json

    import torch
    from diffusers import QwenImageTransformer2DModel

    config_path = Path(model_dir).expanduser() / "transformer" / "config.json" if model_dir else None
    if config_path is not None and config_path.is_file():
        config = {k: v for k, v in json.loads(config_path.read_text()).items() if not k.startswith("_")}
        source = "checkpoint"
    else:
        config, source = dict(NOMINAL_DIT_CONFIG), "nominal"
    with torch.device("meta"):
        model = QwenImageTransformer2DModel(**config)
    targets = lora_targets or list(_DIT_LORA_DEFAULT)
    params, lora = _count(model, lora_rank, lambda name: any(name.endswith(t) for t in targets))
    block_params = [sum(p.numel() for p in block.parameters()) for block in model.transformer_blocks]
    width = int(model.config.num_attention_heads * model.config.attention_head_dim)
    return ModelShape(params=params, lora_params=lora, root_params=params - sum(block_params),
                      largest_block_params=max(block_params), blocks=len(block_params), width=width, source=source)


# ------------------------------------------------------------------------------------------------ formulas
def block_activations(blocks: int, tokens: float, width: int, bytes_per_token_per_width: float,
                      checkpointing: bool) -> float:
    """Bytes kept for the backward pass by ``blocks`` blocks on ``tokens`` tokens.

    Without checkpointing every block keeps its activations; with it each block keeps only its bf16 input, and
    one block at a time recomputes its activations during the backward pass.
    """
    per_block = tokens * width * bytes_per_token_per_width
    if not checkpointing:
        return blocks * per_block
    return blocks * tokens * width * 2 + per_block


def sharded_state(shape: ModelShape, *, ranks: int, lora: bool, frozen_reference: bool,
                  cpu_offload: bool) -> tuple[float, float, float]:
    """(weights, trained state, reference) bytes per rank: frozen weights bf16, trained tensors fp32 master +
    fp32 gradient + AdamW m and v, everything divided over ``ranks`` by FSDP2; with ``cpu_offload`` the sharded
    state stays in host memory and only the transient full units reach the GPU."""
    if cpu_offload:
        return 0.0, 0.0, 0.0
    if lora:
        weights = 2.0 * shape.params / ranks
        trained = 16.0 * shape.lora_params / ranks
    else:
        weights = 4.0 * shape.params / ranks
        trained = 12.0 * shape.params / ranks
    reference = 2.0 * shape.params / ranks if frozen_reference else 0.0
    return weights, trained, reference


def gather_buffers(shape: ModelShape, *, ranks: int, lora: bool) -> float:
    """FSDP2's transient full copies in bf16: the running and the prefetched unit, and the root unit (held for
    the whole pass); a full fine-tune also holds one unit's full fp32 gradients before they are reduce-scattered.
    A single rank whose weights are already bf16 (LoRA) needs no copies."""
    if ranks == 1 and lora:
        return 0.0
    copies = 2.0 * (2 * shape.largest_block_params + shape.root_params)
    gradients = 0.0 if lora else 4.0 * max(shape.largest_block_params, shape.root_params)
    return copies + gradients


def critic_learner_memory(shape: ModelShape, *, ranks: int, lora: bool, kl_coef: float, cpu_offload: bool,
                          checkpointing: bool, sequences: int, sequence_tokens: int, vision_tokens: int,
                          response_tokens: int) -> LearnerMemory:
    """Peak bytes on one GPU of a critic learner rank for one micro-batch of ``sequences`` sequences of
    ``sequence_tokens`` tokens (padded; ``vision_tokens`` of them image tokens, ``response_tokens`` generated).

    The vision tower keeps activations only in a full fine-tune (with LoRA on the language model it is frozen
    and its inputs need no gradient); each vision token stands for 4 patches (the 2×2 merger).
    """
    weights, trained, reference = sharded_state(shape, ranks=ranks, lora=lora,
                                                frozen_reference=not lora and kl_coef > 0, cpu_offload=cpu_offload)
    mode = "lora" if lora else "full"
    tokens = sequences * sequence_tokens
    activations = block_activations(shape.blocks, tokens, shape.width, LLM_LAYER_BYTES_PER_TOKEN_PER_WIDTH[mode],
                                    checkpointing)
    if not lora:
        activations += block_activations(shape.vision_blocks, 4 * sequences * vision_tokens, shape.vision_width,
                                         VISION_BLOCK_BYTES_PER_TOKEN_PER_WIDTH, checkpointing)
    logits = sequences * response_tokens * shape.vocab * LOGITS_BYTES_PER_TOKEN_PER_VOCAB
    return LearnerMemory(weights=weights, trainable_state=trained, reference=reference,
                         gather_buffers=gather_buffers(shape, ranks=ranks, lora=lora), activations=activations,
                         logits=logits, fixed=CUDA_CONTEXT_BYTES)


def artist_learner_memory(shape: ModelShape, *, ranks: int, cpu_offload: bool, checkpointing: bool, samples: int,
                          image_tokens: int, text_tokens: int, kept_versions: int,
                          vae_params: int = NOMINAL_VAE_PARAMS) -> LearnerMemory:
    """Peak bytes on one GPU of an artist learner rank for one micro-batch of ``samples`` edits, each
    ``image_tokens`` target tokens, as many condition-image tokens, and ``text_tokens`` of H_c.

    Trained state: the LoRA's fp32 master, gradient and AdamW moments, plus the sampling adapter, the EMA and
    ``kept_versions`` published sampling adapters (4 B/param each), sharded; the VAE stays whole in fp32.
    Only the trained forward keeps activations: the v_old and v_ref forwards run without gradient.
    """
    weights, trained, _ = sharded_state(shape, ranks=ranks, lora=True, frozen_reference=False,
                                        cpu_offload=cpu_offload)
    if not cpu_offload:
        trained += 4.0 * shape.lora_params * (2 + kept_versions) / ranks
    weights += 4.0 * vae_params
    tokens = samples * (2 * image_tokens + text_tokens)
    activations = block_activations(shape.blocks, tokens, shape.width, DIT_BLOCK_BYTES_PER_TOKEN_PER_WIDTH,
                                    checkpointing)
    return LearnerMemory(weights=weights, trainable_state=trained, reference=0.0,
                         gather_buffers=gather_buffers(shape, ranks=ranks, lora=True), activations=activations,
                         logits=0.0, fixed=CUDA_CONTEXT_BYTES)


# ------------------------------------------------------------------------------------- micro-batch sizes
@dataclass(frozen=True, slots=True)
class CriticMicroBatch:
    """The largest micro-batch the critic learner forms under its settings."""

    sequences: int
    sequence_tokens: int
    """Prompt (text + vision tokens) + response, the longest a rollout can make."""
    vision_tokens: int
    response_tokens: int


def critic_micro_batch(*, max_pixels: int, max_new_tokens: int, micro_batch_size: int,
                       max_tokens_per_micro_batch: int) -> CriticMicroBatch:
    """How the learner packs its longest sequences: at most ``micro_batch_size`` of them, and at most the token
    budget's worth of padded tokens (one sequence at least)."""
    vision_tokens = max(1, max_pixels // (28 * 28))
    sequence_tokens = CRITIC_PROMPT_TEXT_TOKENS + vision_tokens + max_new_tokens
    sequences = micro_batch_size
    if max_tokens_per_micro_batch > 0:
        sequences = max(1, min(micro_batch_size, max_tokens_per_micro_batch // sequence_tokens))
    return CriticMicroBatch(sequences=sequences, sequence_tokens=sequence_tokens, vision_tokens=vision_tokens,
                            response_tokens=max_new_tokens)


def artist_tokens(*, resolution: int, downscale: int, critic_max_pixels: int, critic_max_new_tokens: int,
                  drop_prefix_tokens: int) -> tuple[int, int]:
    """(target image tokens, H_c tokens) of one edit: a square ``resolution`` photo through a codec that
    downscales by ``downscale`` and 2×2 packing; H_c = the critic prompt + response minus the dropped prefix."""
    image_tokens = math.ceil(resolution / (downscale * 2)) ** 2
    text_tokens = CRITIC_PROMPT_TEXT_TOKENS + max(1, critic_max_pixels // (28 * 28)) + critic_max_new_tokens - 1
    return image_tokens, max(1, text_tokens - drop_prefix_tokens)


__all__ = ["GIB", "LearnerMemory", "ModelShape", "artist_learner_memory", "artist_shape", "artist_tokens",
           "block_activations", "critic_learner_memory", "critic_micro_batch", "critic_shape", "gather_buffers",
           "sharded_state"]
