"""The learners' memory plan: the formulas on hand-computed cases, the shapes counted from the real configs, and the
plans check-config accepts or refuses."""

from __future__ import annotations

import pytest

from learner.memory import (CUDA_CONTEXT_BYTES, FRAGMENTATION, GIB, LOGITS_BYTES_PER_TOKEN_PER_VOCAB, ModelShape,
                            artist_shape, block_activations, critic_learner_memory, critic_micro_batch, critic_shape,
                            gather_buffers, sharded_state)
from rollout.config import PROJECT_ROOT, load_config
from rollout.cluster.placement import plan_resources

SHAPE = ModelShape(params=1_000_000_000, lora_params=10_000_000, root_params=100_000_000,
                   largest_block_params=30_000_000, blocks=10, width=1000, vision_blocks=2, vision_width=500,
                   vocab=5000)


def test_sharded_state_by_hand():
    # LoRA: frozen base bf16 (2 B), adapters fp32 master + grad + AdamW m, v (16 B), over 4 ranks.
    assert sharded_state(SHAPE, ranks=4, lora=True, frozen_reference=False, cpu_offload=False) == (5e8, 4e7, 0.0)
    # Full fine-tune: fp32 master (4 B) + fp32 grad and AdamW m, v (12 B); a bf16 reference (2 B); over 4 ranks.
    assert sharded_state(SHAPE, ranks=4, lora=False, frozen_reference=True, cpu_offload=False) == (1e9, 3e9, 5e8)
    assert sharded_state(SHAPE, ranks=4, lora=False, frozen_reference=True, cpu_offload=True) == (0.0, 0.0, 0.0)


def test_block_activations_with_and_without_checkpointing():
    assert block_activations(10, 100, 8, 50.0, checkpointing=False) == 10 * 100 * 8 * 50
    # Checkpointed: each block keeps its bf16 input; one block recomputes its activations at a time.
    assert block_activations(10, 100, 8, 50.0, checkpointing=True) == 10 * 100 * 8 * 2 + 100 * 8 * 50


def test_gather_buffers_by_hand():
    assert gather_buffers(SHAPE, ranks=1, lora=True) == 0.0
    assert gather_buffers(SHAPE, ranks=2, lora=True) == 2.0 * (2 * 30e6 + 100e6)
    assert gather_buffers(SHAPE, ranks=2, lora=False) == 2.0 * (2 * 30e6 + 100e6) + 4.0 * 100e6


def test_critic_learner_memory_adds_up():
    memory = critic_learner_memory(SHAPE, ranks=2, lora=True, kl_coef=0.01, cpu_offload=False, checkpointing=True,
                                   sequences=2, sequence_tokens=300, vision_tokens=100, response_tokens=50)
    assert memory.weights == 1e9 and memory.trainable_state == 8e7 and memory.reference == 0.0
    assert memory.activations == 10 * 600 * 1000 * 2 + 600 * 1000 * 59.3  # frozen vision tower: nothing kept
    assert memory.logits == 2 * 50 * 5000 * LOGITS_BYTES_PER_TOKEN_PER_VOCAB
    parts = memory.weights + memory.trainable_state + memory.gather_buffers + memory.activations + memory.logits
    assert memory.total == pytest.approx(parts * FRAGMENTATION + CUDA_CONTEXT_BYTES)
    full = critic_learner_memory(SHAPE, ranks=2, lora=False, kl_coef=0.01, cpu_offload=False, checkpointing=True,
                                 sequences=2, sequence_tokens=300, vision_tokens=100, response_tokens=50)
    assert full.reference == 1e9  # a frozen bf16 copy for the KL term, sharded
    assert full.activations > memory.activations  # the vision tower trains too


def test_critic_micro_batch_follows_the_token_budget():
    batch = critic_micro_batch(max_pixels=1024 * 1024, max_new_tokens=1280, micro_batch_size=4,
                               max_tokens_per_micro_batch=8192)
    assert batch.vision_tokens == 1337 and batch.sequence_tokens == 260 + 1337 + 1280
    assert batch.sequences == 2  # 8192 // 2877
    assert critic_micro_batch(max_pixels=1024 * 1024, max_new_tokens=1280, micro_batch_size=4,
                              max_tokens_per_micro_batch=0).sequences == 4
    assert critic_micro_batch(max_pixels=1024 * 1024, max_new_tokens=1280, micro_batch_size=4,
                              max_tokens_per_micro_batch=1000).sequences == 1  # a long sequence gets a pass alone


def test_real_architectures_are_counted_from_their_configs():
    critic = critic_shape(None, lora_rank=64)
    assert critic.source == "nominal" and critic.blocks == 28 and critic.width == 3584 and critic.vocab == 152064
    assert critic.params == pytest.approx(8.29e9, rel=0.01)
    # r64 on q, k, v, o, gate, up, down of 28 layers: r·(in + out) each.
    per_layer = 64 * ((3584 + 3584) * 2 + (3584 + 512) * 2 + (3584 + 18944) * 3)
    assert critic.lora_params == 28 * per_layer
    dit = artist_shape(None, lora_rank=32)
    assert dit.blocks == 60 and dit.width == 3072 and dit.params == pytest.approx(20.43e9, rel=0.01)
    assert dit.lora_params == 60 * 8 * 32 * (3072 + 3072)


def test_shipped_cluster_plans_fit_and_a_plan_that_does_not_is_refused_naming_the_knob():
    for name in ("cluster-8gpu.yaml", "cluster-64gpu.yaml"):
        plan = plan_resources(load_config(PROJECT_ROOT / "configs" / name))
        assert plan.ok, plan.problems
        learners = {r.role: r for r in plan.roles if r.role.endswith("learner")}
        assert all(10 < r.memory_gib_per_gpu < 80 for r in learners.values()), learners
    # Full fine-tune of the 7B critic on one GPU cannot fit: ~16 B per parameter of state alone.
    refused = plan_resources(load_config(PROJECT_ROOT / "configs" / "cluster-8gpu.yaml",
                                         ["learner.critic.lora.enabled=false"]))
    assert not refused.ok
    critic = next(p for p in refused.problems if p.startswith("critic-learner: needs"))
    # It names the knobs that would still help, not gradient checkpointing, which the plan already has.
    assert "learner.critic.gpus" in critic and "cpu_offload: true" in critic
    assert "gradient_checkpointing" not in critic
    # The 20B DiT on one GPU without gradient checkpointing: its activations alone exceed 80 GiB.
    refused = plan_resources(load_config(PROJECT_ROOT / "configs" / "cluster-8gpu.yaml",
                                         ["learner.artist.gradient_checkpointing=false"]))
    assert any(p.startswith("artist-learner: needs") and "gradient_checkpointing" in p for p in refused.problems)


def test_full_fine_tune_fits_when_sharded_over_eight():
    config = load_config(PROJECT_ROOT / "configs" / "cluster-64gpu.yaml")
    critic = next(r for r in plan_resources(config).roles if r.role == "critic-learner")
    assert critic.count == 8 and critic.gpus == 1
    assert critic.memory_gib_per_gpu * GIB < 80 * GIB
