"""The CUDA-only paths a CPU machine never runs, with the tiny models and the plain classes (no Ray, no vLLM).

Both learners' update in bf16 (frozen bases stored in bf16, adapters and trained weights as fp32 masters,
bf16 autocast), a learner rank sharded with FSDP2 over a one-rank NCCL group, the sampler and the conditioning on
CUDA, and LPIPS on CUDA. Marked ``gpu``: skipped without CUDA (tests/conftest.py), run on a GPU machine with
``python -m pytest tests/gpu``.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from artist_actor.conditioning import flow_match_sigmas
from artist_actor.config import ArtistConfig
from artist_actor.model import PROJECT_FILE, QWEN_IMAGE_SCHEDULER_CONFIG
from critic_samples import generate_critiques, photo
from learner.config import ArtistLearnerConfig, CriticLearnerConfig, LoraConfig
from rollout.records.types import ArtistGroup, Conditioning, CriticGroup, CritiqueReward, Edit

pytestmark = pytest.mark.gpu

SIZE = 32
MIN_PIXELS, MAX_PIXELS = 56 * 56, 112 * 112


@pytest.fixture(scope="module")
def critic_batch(embedded_models):
    from critic_actor.model import load_critic

    model, processor = load_critic(embedded_models.critic, dtype="float32", device="cpu")
    critiques, _ = generate_critiques(model, processor, [photo(1), photo(2)], group_size=3, max_new_tokens=10,
                                      do_sample=True, seed=0)
    groups = []
    for task in dict.fromkeys(c.task_id for c in critiques):
        members = [c for c in critiques if c.task_id == task]
        rewards = [CritiqueReward(task_id=c.task_id, critique_index=c.index, total=float(i), format=1.0, rank=0.0,
                                  suggestion=0.0) for i, c in enumerate(members)]
        groups.append(CriticGroup(task_id=task, critiques=members, rewards=rewards,
                                  advantages=np.zeros(len(members), np.float32)))
    return critiques, groups


def _artist_groups(hidden: int, version: int = 0) -> list[ArtistGroup]:
    rng = np.random.default_rng(0)
    sigmas = flow_match_sigmas(4, (SIZE // 4) ** 2, QWEN_IMAGE_SCHEDULER_CONFIG)
    groups = []
    for g in range(2):
        edits = [Edit(task_id=f"p{g}", critique_index=0, edit_index=e, seed=e, image=None,
                      x0=rng.uniform(-1, 1, ((SIZE // 4) ** 2, 48)).astype(np.float32), sigmas=sigmas,
                      artist_version=version, critic_version=0) for e in range(3)]
        groups.append(ArtistGroup(
            task_id=f"p{g}", critique_index=0, edits=edits, rewards=rng.uniform(0, 1, 3).astype(np.float32),
            conditioning=Conditioning(task_id=f"p{g}", critique_index=0,
                                      hidden=rng.standard_normal((5, hidden)).astype(np.float32)),
            condition_image=rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), optimality=np.zeros(3, np.float32)))
    return groups


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_critic_learner_updates_in_bf16_on_cuda(embedded_models, critic_batch, lora):
    from learner.critic_learner import CriticLearner

    config = CriticLearnerConfig(lr=1e-3, kl_coef=0.01, lora=LoraConfig(enabled=lora, rank=4, alpha=8.0))
    learner = CriticLearner(embedded_models.critic, config, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS,
                            max_new_tokens=10, device="cuda")
    dtypes = {p.dtype for p in learner.model.parameters() if not p.requires_grad}
    assert all(p.dtype == torch.float32 for p in learner.trainable)  # fp32 masters
    if lora:
        assert dtypes == {torch.bfloat16}  # the frozen base is stored in bf16
    critiques, groups = critic_batch
    before = {n: p.detach().clone() for n, p in learner.model.named_parameters() if p.requires_grad}
    prepared = learner.prepare(critiques)
    assert prepared.metrics["learner/grpo/rollout_logprob_abs_diff/mean"] < 0.05  # bf16 vs the fp32 rollout
    metrics = learner.update(groups, prepared)
    assert metrics["learner/grpo/step_applied"] == 1.0 and np.isfinite(metrics["learner/grpo/loss"])
    moved = max(float((p.detach() - before[n]).abs().max()) for n, p in learner.model.named_parameters()
                if p.requires_grad)
    assert moved > 0


def test_artist_learner_updates_a_bf16_dit_with_fp32_adapters_on_cuda(embedded_models):
    from learner.artist_learner import ArtistLearner

    hidden = json.loads((embedded_models.artist / PROJECT_FILE).read_text())["critic_hidden_size"]
    learner = ArtistLearner(embedded_models.artist, ArtistLearnerConfig(lora=LoraConfig(rank=4, alpha=8.0), gpus=1),
                            ArtistConfig(resolution=SIZE))
    assert learner.artist.device.type == "cuda" and learner.artist.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in learner.trained_parameters)
    metrics = learner.update(_artist_groups(hidden))
    assert metrics["learner/nft/skipped"] == 0.0 and np.isfinite(metrics["learner/nft/loss"])


def test_sharded_learner_rank_on_one_gpu_with_nccl(embedded_models):
    """FSDP2 over a one-rank NCCL group: the learner groups' code path on a GPU node."""
    from learner.artist_learner import ArtistLearner
    from learner.distributed import ParallelContext, Rendezvous, free_port

    hidden = json.loads((embedded_models.artist / PROJECT_FILE).read_text())["critic_hidden_size"]
    context = ParallelContext.join(0, Rendezvous("127.0.0.1", free_port(), 1), torch.device("cuda", 0))
    try:
        learner = ArtistLearner(embedded_models.artist, ArtistLearnerConfig(lora=LoraConfig(rank=4, alpha=8.0)),
                                ArtistConfig(resolution=SIZE), parallel=context)
        first = learner.update(_artist_groups(hidden, version=0))
        second = learner.update(_artist_groups(hidden, version=1))
        assert first["learner/nft/skipped"] == second["learner/nft/skipped"] == 0.0
        version, adapter = learner.get_sampler_weights()
        assert version == 2 and all(t.device.type == "cpu" for t in adapter.values())
    finally:
        context.close()


def test_sampler_and_conditioning_on_cuda_match_the_cpu(embedded_models):
    from artist_actor.model import load_artist
    from artist_actor.sampler import EditRequest, FlowMatchSampler

    hidden = json.loads((embedded_models.artist / PROJECT_FILE).read_text())["critic_hidden_size"]
    image = cv2.resize(data.astronaut(), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    request = EditRequest(condition_image=image,
                          hidden=np.random.default_rng(0).standard_normal((6, hidden)).astype(np.float32), seed=7)
    edits = {}
    for device in ("cpu", "cuda"):
        model = load_artist(embedded_models.artist, dtype="float32", device=device)
        edits[device] = FlowMatchSampler(model, num_steps=4, resolution=SIZE).sample([request])[0]
    assert np.abs(edits["cuda"].x0 - edits["cpu"].x0).max() < 1e-3
    assert np.abs(edits["cuda"].image.astype(int) - edits["cpu"].image.astype(int)).max() <= 2


def test_lpips_on_cuda_matches_cpu():
    from rewards.perceptual import LPIPSScorer

    target = cv2.resize(data.astronaut(), (96, 96), interpolation=cv2.INTER_AREA)
    images = target, cv2.GaussianBlur(target, (0, 0), 2.0)
    cpu, cuda = LPIPSScorer(resolution=96), LPIPSScorer(resolution=96, device="cuda")
    assert cuda.distance(*images) == pytest.approx(cpu.distance(*images), rel=1e-3, abs=1e-5)
