"""ArtistSamplerGroup on a local Ray cluster: named replicas, K edits per critique, versioned weight sync."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from artist_actor.config import ArtistConfig
from rollout.records.types import Conditioning, Critique, ParsedCritique, PhotoTask


@pytest.fixture(scope="module")
def hidden_size(embedded_models):
    return int(json.loads((embedded_models.artist / "photocrafter_artist.json").read_text())["critic_hidden_size"])


@pytest.fixture(scope="module")
def group(ray_local, embedded_models):
    from artist_actor.group import ArtistSamplerGroup

    config = ArtistConfig(num_samplers=2, cpus_per_sampler=1.0, edits_per_critique=2, num_steps=3, resolution=64,
                          dtype="float32")
    samplers = ArtistSamplerGroup(config, str(embedded_models.artist), lora_alpha=8.0, sync_timeout_s=120.0,
                                  namespace="test-artist-sampler")
    yield samplers
    samplers.shutdown()


def batch(ray, hidden_size: int, photos: int = 2, critiques: int = 2):
    rng = np.random.default_rng(0)
    tasks, crits, conds = [], [], []
    for p in range(photos):
        image = ray.put(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
        tasks.append(PhotoTask(task_id=f"p{p}", input=image, target=image))
        for c in range(critiques):
            crits.append(Critique(task_id=f"p{p}", index=c, text="", prompt_token_ids=[], completion_token_ids=[],
                                  rollout_logprobs=np.zeros(0, np.float32), finish_reason="stop",
                                  parsed=ParsedCritique(), policy_version=1))
            hidden = ray.put(rng.standard_normal((6 + c, hidden_size)).astype(np.float32))
            conds.append(Conditioning(task_id=f"p{p}", critique_index=c, hidden=hidden, critic_version=1))
    return tasks, crits, conds


def test_replicas_are_named_and_ready(group, ray_local):
    assert [info["index"] for info in group.info] == [0, 1]
    assert all(info["policy_version"] == 0 for info in group.info)
    actor = ray_local.get_actor("artist-sampler-1", namespace="test-artist-sampler")
    assert ray_local.get(actor.ready.remote())["index"] == 1


def test_replicas_run_at_the_clusters_cpu_priority(group, ray_local):
    """Not at Ray's background worker niceness (15 below the raylet, which is this process's child here)."""
    import os

    assert ray_local.get([a.__ray_call__.remote(lambda actor: os.nice(0)) for a in group.actors]) == \
        [os.nice(0)] * len(group.actors)


def test_group_samples_k_edits_per_critique_across_replicas(group, ray_local, hidden_size):
    tasks, crits, conds = batch(ray_local, hidden_size)
    edits = group.sample(tasks, crits, conds, k=2, step=0)
    assert [(e.task_id, e.critique_index, e.edit_index) for e in edits] == [
        (f"p{p}", c, k) for p in range(2) for c in range(2) for k in range(2)]
    image = ray_local.get(edits[0].image)  # edits travel by reference
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert edits[0].x0.shape == (256, 48) and all(e.critic_version == 1 for e in edits)
    # The same record and step give the same edit whichever replica made it.
    again = group.sample(tasks[::-1], crits, conds[::-1], k=2, step=0)
    first = {(e.task_id, e.critique_index, e.edit_index): e.x0 for e in edits}
    for edit in again:
        np.testing.assert_allclose(edit.x0, first[(edit.task_id, edit.critique_index, edit.edit_index)], atol=1e-5)


def lora_state(artist_dir, rank: int = 4, scale: float = 0.3) -> dict[str, torch.Tensor]:
    """Adapter-free peft names and shapes for the artist's LoRA targets: every attention projection of its DiT
    (all of them, text-stream ones included, act on inner-dim features: txt_in has already projected H_c) and
    its output projection (inner → patch² × out_channels)."""
    config = json.loads((artist_dir / "transformer" / "config.json").read_text())
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    generator = torch.Generator().manual_seed(0)
    state = {}
    for block in range(config["num_layers"]):
        for proj in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"):
            prefix = f"transformer_blocks.{block}.attn.{proj}"
            state[f"{prefix}.lora_A.weight"] = torch.randn(rank, inner, generator=generator) * scale
            state[f"{prefix}.lora_B.weight"] = torch.randn(inner, rank, generator=generator) * scale
    out = config["patch_size"] ** 2 * config["out_channels"]
    state["proj_out.lora_A.weight"] = torch.randn(rank, inner, generator=generator) * scale
    state["proj_out.lora_B.weight"] = torch.randn(out, rank, generator=generator) * scale
    return state


def test_weight_sync_reaches_every_replica_and_tags_edits(group, ray_local, hidden_size, embedded_models):
    tasks, crits, conds = batch(ray_local, hidden_size, photos=1, critiques=2)
    before = group.sample(tasks, crits, conds, k=1, step=3)
    group.set_weights(4, lora_state(embedded_models.artist))
    assert group.policy_versions() == [4, 4]
    after = group.sample(tasks, crits, conds, k=1, step=3)
    assert all(e.artist_version == 4 for e in after)
    assert all(np.abs(a.x0 - b.x0).max() > 1e-3 for a, b in zip(before, after))
    with pytest.raises(Exception, match="missing"):
        group.set_weights(5, dict(list(lora_state(embedded_models.artist).items())[2:]))


def test_mismatched_conditioning_is_a_controller_bug(group, ray_local, hidden_size):
    tasks, crits, conds = batch(ray_local, hidden_size, photos=1, critiques=1)
    with pytest.raises(ValueError, match="without a matching critique"):
        group.sample(tasks, [], conds, k=1)


def test_a_stalled_call_fails_loudly_naming_the_replica(ray_local):
    import time

    from artist_actor.group import ArtistSamplerGroup

    @ray_local.remote(num_cpus=0)
    def stall():
        time.sleep(60)

    ref = stall.remote()
    with pytest.raises(TimeoutError, match=r"weight sync .* within 1 s \(stalled: artist-sampler-3\)"):
        ArtistSamplerGroup._wait([ref], ["artist-sampler-3"], 1.0, "weight sync")
    ray_local.cancel(ref, force=True)
