"""Learner groups on the local Ray cluster: 2 data-parallel ranks (FSDP2 over gloo) against 1.

What a user relies on when adding GPUs to a learner: the same batch gives the same updated weights whatever the
number of ranks (GRPO's token-level loss and DiffusionNFT's per-edit weights stay exact across ranks), and a run
checkpointed on 2 ranks resumes on 1 with the losses an uninterrupted 1-rank run has.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from artist_actor.conditioning import flow_match_sigmas
from artist_actor.config import ArtistConfig
from artist_actor.model import PROJECT_FILE, QWEN_IMAGE_SCHEDULER_CONFIG
from critic_actor.model import load_critic
from critic_samples import generate_critiques, photo
from learner.config import ArtistLearnerConfig, CriticLearnerConfig, LoraConfig
from rollout.records.types import ArtistGroup, Conditioning, CriticGroup, CritiqueReward, Edit

MIN_PIXELS, MAX_PIXELS = 56 * 56, 112 * 112
SIZE, STEPS = 32, 4
ARTIST = ArtistConfig(resolution=SIZE)
GROUP_IDS = itertools.count()
"""Each group its own Ray namespace: its ranks are named like the run's (``critic-learner-0`` ...)."""
CRITIC_KWARGS = {"min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS, "max_new_tokens": 10, "seed": 0}


@pytest.fixture(scope="module")
def critique_batches(embedded_models):
    """Two batches of real tiny-critic rollouts (3 photos × 3 critiques) with rewards that vary in each group."""
    model, processor = load_critic(embedded_models.critic, dtype="float32", device="cpu")
    batches = []
    for seed in (0, 1):
        critiques, _ = generate_critiques(model, processor, [photo(10 * seed + i) for i in range(3)], group_size=3,
                                          max_new_tokens=10, do_sample=True, seed=seed)
        rng = np.random.default_rng(seed)
        groups = []
        for task in dict.fromkeys(c.task_id for c in critiques):
            members = [c for c in critiques if c.task_id == task]
            rewards = [CritiqueReward(task_id=c.task_id, critique_index=c.index, total=float(r), format=1.0,
                                      rank=float(r), suggestion=0.0)
                       for c, r in zip(members, rng.uniform(0, 1, len(members)))]
            groups.append(CriticGroup(task_id=task, critiques=members, rewards=rewards,
                                      advantages=np.zeros(len(members), np.float32)))
        batches.append((critiques, groups))
    return batches


def critic_group(embedded_models, config: CriticLearnerConfig, ranks: int):
    from rollout.cluster.learner_groups import CriticLearnerGroup

    return CriticLearnerGroup(str(embedded_models.critic), config, ranks=ranks, num_threads=1,
                              learner_kwargs=CRITIC_KWARGS, namespace=f"test-learner-groups-{next(GROUP_IDS)}")


def critic_step(group, batch) -> dict:
    critiques, groups = batch
    group.prepare(critiques)
    return group.collect(group.launch_update(groups))


def weights_of(group) -> dict[str, torch.Tensor]:
    import ray

    _, ref, _, _ = group.weights_ref()
    return ray.get(ref)


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert set(a) == set(b)
    worst = max(float((a[name].float() - b[name].float()).abs().max()) for name in a)
    assert worst <= atol, f"weights differ by up to {worst}"


def test_grpo_full_fine_tune_on_two_ranks_matches_one_and_resumes_on_one(ray_local, embedded_models,
                                                                          critique_batches, tmp_path):
    config = CriticLearnerConfig(lr=1e-3, kl_coef=0.01, micro_batch_size=2, max_tokens_per_micro_batch=0)
    one = critic_group(embedded_models, config, ranks=1)
    two = critic_group(embedded_models, config, ranks=2)
    try:
        before = weights_of(one)
        first_one, first_two = critic_step(one, critique_batches[0]), critic_step(two, critique_batches[0])
        after_one, after_two = weights_of(one), weights_of(two)
        moved = max(float((after_one[n] - before[n]).abs().max()) for n in before)
        assert moved > 1e-4, "the update did not move the weights"
        assert first_one["learner/grpo/loss"] == pytest.approx(first_two["learner/grpo/loss"], abs=1e-5)
        assert_same_weights(after_one, after_two, atol=1e-5)
        # Checkpoint on 2 ranks; resume on 1 rank: the next step matches the uninterrupted 1-rank run.
        two.save(str(tmp_path))
        uninterrupted = critic_step(one, critique_batches[1])
    finally:
        two.shutdown()
    resumed = critic_group(embedded_models, config, ranks=1)
    try:
        resumed.load(str(tmp_path))
        assert resumed.version() == 1
        continued = critic_step(resumed, critique_batches[1])
        for key in ("learner/grpo/loss", "learner/grpo/kl", "learner/grpo/grad_norm"):
            assert continued[key] == pytest.approx(uninterrupted[key], rel=1e-4, abs=1e-6), key
        assert_same_weights(weights_of(one), weights_of(resumed), atol=1e-5)
    finally:
        resumed.shutdown()
        one.shutdown()


def test_grpo_lora_on_two_ranks_matches_one(ray_local, embedded_models, critique_batches):
    config = CriticLearnerConfig(lr=1e-2, kl_coef=0.01, micro_batch_size=2, max_tokens_per_micro_batch=200,
                                 lora=LoraConfig(enabled=True, rank=4, alpha=8.0))
    one = critic_group(embedded_models, config, ranks=1)
    two = critic_group(embedded_models, config, ranks=2)
    try:
        before = weights_of(one)
        results = [critic_step(group, critique_batches[0]) for group in (one, two)]
        assert results[0]["learner/grpo/loss"] == pytest.approx(results[1]["learner/grpo/loss"], abs=1e-5)
        after_one, after_two = weights_of(one), weights_of(two)
        assert max(float((after_one[n] - before[n]).abs().max()) for n in before) > 1e-5
        assert_same_weights(after_one, after_two, atol=1e-5)
    finally:
        one.shutdown()
        two.shutdown()


# -------------------------------------------------------------------------------------------------- artist
def artist_groups(hidden: int, seed: int, version: int) -> list[ArtistGroup]:
    """5 (photo, critique) groups of 3 edits: 15 edits, an uneven split over 2 ranks and ragged micro-batches."""
    rng = np.random.default_rng(seed)
    sigmas = flow_match_sigmas(STEPS, (SIZE // 4) ** 2, QWEN_IMAGE_SCHEDULER_CONFIG)
    groups = []
    for g in range(5):
        conditioning = Conditioning(task_id=f"photo{g}", critique_index=0,
                                    hidden=rng.standard_normal((int(rng.integers(3, 7)), hidden)).astype(np.float32))
        edits = [Edit(task_id=f"photo{g}", critique_index=0, edit_index=e, seed=e, image=None,
                      x0=rng.uniform(-1, 1, ((SIZE // 4) ** 2, 48)).astype(np.float32), sigmas=sigmas,
                      artist_version=version, critic_version=0) for e in range(3)]
        groups.append(ArtistGroup(task_id=f"photo{g}", critique_index=0, conditioning=conditioning,
                                  condition_image=rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), edits=edits,
                                  rewards=rng.uniform(0, 1, 3).astype(np.float32), optimality=np.zeros(3, np.float32)))
    return groups


def test_nft_on_two_ranks_matches_one_and_resumes_on_one(ray_local, embedded_models, tmp_path):
    import ray

    from rollout.cluster.learner_groups import ArtistLearnerGroup

    hidden = json.loads((embedded_models.artist / PROJECT_FILE).read_text())["critic_hidden_size"]
    config = ArtistLearnerConfig(lr=1e-2, micro_batch_size=2, lora=LoraConfig(rank=4, alpha=8.0))

    def make(ranks: int):
        return ArtistLearnerGroup(str(embedded_models.artist), config, ARTIST, ranks=ranks, num_threads=1,
                                  learner_kwargs={"seed": 5}, namespace=f"test-learner-groups-{next(GROUP_IDS)}")

    def step(group, seed: int, version: int) -> dict:
        return group.collect(group.launch_update(artist_groups(hidden, seed, version)))

    def adapter(group) -> dict:
        return ray.get(group.sampler_weights_ref()[1])

    one, two = make(1), make(2)
    try:
        first = [step(group, seed=0, version=0) for group in (one, two)]
        assert first[0]["learner/nft/loss"] == pytest.approx(first[1]["learner/nft/loss"], rel=1e-5)
        assert first[0]["learner/nft/num_samples"] == first[1]["learner/nft/num_samples"] == 15.0
        assert_same_weights(adapter(one), adapter(two), atol=1e-5)
        two.save(str(tmp_path))
        uninterrupted = step(one, seed=1, version=1)
    finally:
        two.shutdown()
    resumed = make(1)
    try:
        resumed.load(str(tmp_path))
        assert resumed.version() == 1
        continued = step(resumed, seed=1, version=1)
        for key in ("learner/nft/loss", "learner/nft/policy_loss", "learner/nft/grad_norm"):
            assert continued[key] == pytest.approx(uninterrupted[key], rel=1e-5), key
        assert_same_weights(adapter(one), adapter(resumed), atol=1e-5)
    finally:
        resumed.shutdown()
        one.shutdown()
