"""The capacity plan's formulas on hand-computed cases, and the plan ``check-config`` prints for a GPU config."""

from __future__ import annotations

import argparse
import json

import pytest

from rollout.cluster.capacity import (
    CriticShape,
    DitShape,
    critic_prefill_flops,
    critic_shape,
    critic_token_flops,
    dit_forward_flops,
    generation_seconds,
    idle_fraction,
    roofline_seconds,
    step_seconds,
    time_plan,
)
from rollout.config import PROJECT_ROOT, CapacityConfig, load_config
from rollout.cluster.placement import plan_resources

SMALL_CRITIC = CriticShape(params=2e9, lm_matmul_params=1e9, layers=2, hidden=8, kv_width=4, vision_params=1e6,
                           pixels_per_token=784, source="test")
# 1 TFLOP/s and 100 GB/s, half of each achieved: 0.5e12 FLOP/s and 50e9 B/s per GPU.
SLOW_GPU = CapacityConfig(gpu_bf16_tflops=1.0, gpu_memory_bandwidth_gbs=100.0, compute_efficiency=0.5,
                          bandwidth_efficiency=0.5)


def test_critic_token_flops_are_two_per_weight_plus_attention_over_the_context():
    # 2 × 1e9 weights + 4 × 2 layers × 8 hidden × 100 context tokens
    assert critic_token_flops(SMALL_CRITIC, context=100) == 2e9 + 6400


def test_prefill_counts_prompt_tokens_causal_attention_and_vision_patches():
    # 10 prompt tokens: 2·1e9·10; causal attention 2·2·8·10²; an image of 5 merged tokens = 20 patches: 2·1e6·20
    assert critic_prefill_flops(SMALL_CRITIC, prompt_tokens=10, image_pixels=5 * 784) == 2e10 + 3200 + 4e7


def test_dit_forward_flops_per_stream_weights_and_joint_attention():
    shape = DitShape(layers=2, inner=4, text_in=3, pixels_per_token=16, source="test")
    # linear: 2·12·4²·2 layers·8 tokens = 6144, text input projection 2·3·4·2 text tokens = 48;
    # joint attention: 4·2 layers·4·8² = 2048
    assert dit_forward_flops(shape, image_tokens=6, text_tokens=2) == 6144 + 48 + 2048


def test_roofline_takes_the_slower_of_compute_and_memory():
    # 1e12 FLOP on 2 GPUs at 0.5e12 each: 1 s; 4e11 B at 50e9 each: 4 s
    assert roofline_seconds(1e12, 4e11, 2, SLOW_GPU) == pytest.approx(4.0)
    assert roofline_seconds(4e12, 1e10, 2, SLOW_GPU) == pytest.approx(4.0)


def test_generation_is_prefill_plus_memory_bound_decode_steps():
    # Prefill of 1 prompt of 10 tokens, no image: 2e10 + 3200 FLOP at 0.5e12 → 0.0400000064 s.
    # Each of 3 decode steps for 2 sequences reads 1e9 weight bytes + KV 2·2·2 layers·4·2 B·(10 + 1.5) context
    # (= 736 B) at 50e9 B/s, while its compute 2·(2e9 + 4·2·8·11.5) is 4e9 FLOP ≈ 0.008 s: memory-bound.
    seconds = generation_seconds(SMALL_CRITIC, prompts=1, sequences=2, prompt_tokens=10, image_pixels=0,
                                 new_tokens=3, weight_bytes=1e9, gpus=1, capacity=SLOW_GPU)
    assert seconds == pytest.approx((2e10 + 3200) / 0.5e12 + 3 * (1e9 + 736) / 50e9)


STAGES = {"critic_rollout": 4.0, "prepare": 1.0, "artist_sample": 4.0, "rescore": 1.0, "critic_update": 2.0,
          "artist_update": 6.0, "sync_critic": 1.0, "sync_artist": 0.5}


def test_step_time_synchronous_and_overlapped():
    # synchronous: 10 (chain) + max(2, 6) + 1 + 0.5; overlapped: max(10 + 2 + 1, 6) + 0.5
    assert step_seconds(STAGES, overlapped=False) == 17.5
    assert step_seconds(STAGES, overlapped=True) == 13.5
    # the artist update longer than the whole critic chain sets the overlapped period
    assert step_seconds({**STAGES, "artist_update": 20.0}, overlapped=True) == 20.5


def test_idle_fraction():
    # 2 rollout GPUs × (4 + 1) + 2 sampler GPUs × 4 + 1 critic-learner GPU × (1 + 2) + 1 artist GPU × 6 = 27 GPU-s
    assert idle_fraction(27.0, 6, 17.5) == pytest.approx(1 - 27 / 105)
    assert idle_fraction(27.0, 6, 13.5) == pytest.approx(1 - 27 / 81)
    assert idle_fraction(0.0, 0, 10.0) == 0.0


def test_critic_shape_read_from_checkpoint_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "text_config": {"hidden_size": 8, "num_hidden_layers": 2, "intermediate_size": 16, "num_attention_heads": 2,
                        "num_key_value_heads": 1, "vocab_size": 10, "tie_word_embeddings": False},
        "vision_config": {"hidden_size": 4, "depth": 1, "intermediate_size": 8, "patch_size": 14,
                          "spatial_merge_size": 2}}))
    shape = critic_shape(str(tmp_path))
    # per layer: q,o 2·8·8 + k,v 2·8·4 + MLP 3·8·16 = 576; two layers and the 10×8 LM head
    assert shape.lm_matmul_params == 2 * 576 + 80
    # + input embedding 80 + one vision block 4·4·4 + 3·4·8 = 160
    assert shape.params == 2 * 576 + 160 + 160
    assert (shape.kv_width, shape.pixels_per_token) == (4, 784)


def test_cluster_plan_stage_figures_follow_the_config():
    config = load_config(PROJECT_ROOT / "configs" / "cluster-8gpu.yaml")
    plan = time_plan(config, plan_resources(config))
    # The whole bf16 critic (8.29e9 weights × 2 B) over 8 GB/s.
    assert plan.stage("sync_critic").seconds == pytest.approx(8.29e9 * 2 / 8e9)
    # Doubling the samplers halves sampling (256 edits split 3 → 6 ways: 86 → 43 per sampler).
    more = load_config(PROJECT_ROOT / "configs" / "cluster-8gpu.yaml", ["artist.num_samplers=6", "cluster.num_gpus=11"])
    faster = time_plan(more, plan_resources(more))
    assert faster.stage("artist_sample").seconds == pytest.approx(plan.stage("artist_sample").seconds * 43 / 86)
    assert plan.overlapped_step_s < plan.sync_step_s
    assert 0.0 < plan.overlapped_idle < plan.sync_idle < 1.0


def test_check_config_prints_the_time_plan_for_a_gpu_config(capsys):
    from rollout.commands.check_config import run

    code = run(argparse.Namespace(config=str(PROJECT_ROOT / "configs" / "cluster-8gpu.yaml"), overrides=[],
                                  quiet=False))
    out = capsys.readouterr().out
    assert code == 0
    plan = out.split("# time plan of one step", 1)[1]
    for stage in ("critic_rollout", "artist_sample", "critic_update", "artist_update", "sync_critic"):
        assert f"\n{stage} " in plan
    assert "step, synchronous (max_staleness 0)" in plan and "step, overlapped" in plan
    assert "GPUs idle" in plan


def test_check_config_prints_no_time_plan_for_a_cpu_config(capsys):
    from rollout.commands.check_config import run

    assert run(argparse.Namespace(config=None, overrides=[], quiet=False)) == 0
    assert "# time plan" not in capsys.readouterr().out
