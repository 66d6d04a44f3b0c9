"""Memory a colocated role gives back at a change of turn, measured on a GPU with ``torch.cuda.memory_allocated``.

The actors' own ``release`` / ``wake`` verbs with the tiny models, as plain classes (no Ray, no vLLM): a learner
rank (one-rank NCCL group, FSDP2) moves its weights and AdamW state to host memory and back, a sampler its DiT, a
critic replica on the transformers engine its weights; each reports the GPU memory around the change, and each
computes again once woken. Marked ``gpu``: skipped without CUDA (tests/conftest.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from artist_actor.config import ArtistConfig
from artist_actor.model import PROJECT_FILE
from learner.config import ArtistLearnerConfig, LoraConfig
from rollout.cluster.residency import TurnReport

pytestmark = pytest.mark.gpu

SIZE = 32


def _report(data: dict) -> TurnReport:
    return TurnReport.from_dict(data)


def test_a_learner_rank_offloads_its_weights_and_optimizer_state_and_takes_them_back(embedded_models):
    from learner.distributed import Rendezvous, free_port
    from rollout.cluster.learner_actors import ArtistLearnerRank
    from test_cuda_paths import _artist_groups

    hidden = json.loads((embedded_models.artist / PROJECT_FILE).read_text())["critic_hidden_size"]
    rank = ArtistLearnerRank(0, 1, 0.5, str(embedded_models.artist),
                             ArtistLearnerConfig(lora=LoraConfig(rank=4, alpha=8.0)), ArtistConfig(resolution=SIZE))
    rank.setup(Rendezvous("127.0.0.1", free_port(), 1))
    try:
        assert rank.update(_artist_groups(hidden, version=0))["learner/nft/skipped"] == 0.0  # AdamW state exists
        released = _report(rank.release(offload=True))
        assert released.how == "weights and optimizer state to host"
        assert released.after.cuda_allocated_bytes < released.before.cuda_allocated_bytes
        assert released.released_cuda_bytes > 0.5 * released.before.cuda_allocated_bytes
        woken = _report(rank.wake())
        assert woken.after.cuda_allocated_bytes >= 0.9 * released.before.cuda_allocated_bytes
        assert rank.update(_artist_groups(hidden, version=1))["learner/nft/skipped"] == 0.0
    finally:
        rank.shutdown()


def test_a_sampler_moves_its_dit_off_the_gpu_for_the_learners_turn(embedded_models):
    from artist_actor.actor import ArtistSamplerActor

    sampler = ArtistSamplerActor(0, str(embedded_models.artist), ArtistConfig(resolution=SIZE, num_steps=2),
                                 device="cuda")
    released = _report(sampler.release(offload=True))
    dit_bytes = sum(p.numel() * p.element_size() for p in sampler.model.transformer.parameters())
    assert released.released_cuda_bytes >= 0.9 * dit_bytes
    with pytest.raises(RuntimeError, match="wake it"):
        sampler.sample([], [])
    woken = _report(sampler.wake())
    assert woken.after.cuda_allocated_bytes - woken.before.cuda_allocated_bytes >= 0.9 * dit_bytes
    assert sampler.model.device.type == "cuda"


def test_a_critic_replica_on_the_transformers_engine_releases_its_weights(embedded_models):
    from critic_actor.actor import CriticRolloutActor
    from critic_actor.config import CriticConfig
    from critic_samples import photo
    from rollout.records.types import PhotoTask

    replica = CriticRolloutActor(embedded_models.critic, CriticConfig(engine="transformers", gpus_per_replica=1,
                                                                      dtype="float32", max_new_tokens=8,
                                                                      min_pixels=56 * 56, max_pixels=112 * 112),
                                 colocated=True)
    released = _report(replica.release(offload=True))
    weights = sum(p.numel() * p.element_size() for p in replica.engine.model.parameters())
    assert released.released_cuda_bytes >= 0.9 * weights
    woken = _report(replica.wake())
    assert woken.after.cuda_allocated_bytes > woken.before.cuda_allocated_bytes
    task = PhotoTask(task_id="p0", input=np.asarray(photo(1)), target=np.asarray(photo(1)), kind="retouch")
    assert len(replica.generate([task], n=2, step=0)) == 2
    torch.cuda.empty_cache()
