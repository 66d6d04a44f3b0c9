"""Learner → samplers on local Ray: real tiny-critic H_c, K edits, a DiffusionNFT update, a versioned sync of the
sampling adapter over the collective (the learner broadcasts its buckets to every sampler at once)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from artist_actor.config import ArtistConfig
from learner.config import ArtistLearnerConfig, CriticLearnerConfig, LoraConfig
from rollout.records.types import ArtistGroup, Critique, PhotoTask

MIN_PIXELS, MAX_PIXELS = 56 * 56, 112 * 112
K = 3


def critic_conditionings(critic_dir, images):
    """One greedy tiny-critic response per photo, and its H_c from the critic learner's prepare pass."""
    from critic_actor.grammar import build_critic_messages, parse_critique
    from critic_actor.model import load_critic, vision_special_token_ids
    from learner.critic_learner import CriticLearner

    model, processor = load_critic(critic_dir, dtype="float32", device="cpu")
    prompt = processor.apply_chat_template(build_critic_messages(), add_generation_prompt=True, tokenize=False)
    critiques = []
    for task, image in enumerate(images):
        inputs = processor(text=[prompt], images=[image], return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=6, do_sample=False, output_logits=True,
                                 suppress_tokens=vision_special_token_ids(processor.tokenizer),
                                 return_dict_in_generate=True)
        prompt_ids = inputs["input_ids"][0].tolist()
        tokens = out.sequences[0, len(prompt_ids):].tolist()
        logprobs = torch.stack([torch.log_softmax(step[0].float(), -1) for step in out.logits])
        text = processor.tokenizer.decode(tokens, skip_special_tokens=True)
        critiques.append(Critique(
            task_id=f"photo-{task}", index=0, text=text, prompt_token_ids=prompt_ids, completion_token_ids=tokens,
            rollout_logprobs=logprobs[torch.arange(len(tokens)), torch.tensor(tokens)].numpy(),
            finish_reason="length", parsed=parse_critique(text), policy_version=0, image=image))
    critic = CriticLearner(critic_dir, CriticLearnerConfig(kl_coef=0.0), min_pixels=MIN_PIXELS,
                           max_pixels=MAX_PIXELS, max_new_tokens=6, device="cpu")
    return critiques, critic.prepare(critiques).conditionings


@pytest.mark.slow
def test_samplers_serve_the_learners_new_version_after_one_update(ray_local, embedded_models):
    from artist_actor.group import ArtistSamplerGroup
    from rewards.attributes import compute_attributes
    from rollout.config import SyncConfig
    from rollout.cluster.learner_groups import ArtistLearnerGroup
    from rollout.sync.weight_sync import WeightSync

    ray = ray_local
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (56, 56, 3), dtype=np.uint8) for _ in range(2)]
    critiques, conditionings = critic_conditionings(embedded_models.critic, images)
    assert all(c.hidden.shape[0] > len(k.prompt_token_ids) for c, k in zip(conditionings, critiques))
    for conditioning in conditionings:  # H_c travels by reference, as in a run
        conditioning.hidden = ray.put(conditioning.hidden)
    tasks = [PhotoTask(task_id=c.task_id, input=ray.put(image), target=ray.put(image))
             for c, image in zip(critiques, images)]

    # The identity-initialised tiny DiT gives K alike edits: exploration makes them differ, as in the embedded run.
    artist = ArtistConfig(num_samplers=1, edits_per_critique=K, num_steps=3, resolution=32, dtype="float32",
                          exploration=1.0)
    lora = LoraConfig(rank=4, alpha=8.0)
    samplers = ArtistSamplerGroup(artist, str(embedded_models.artist), lora_alpha=lora.alpha,
                                  sync_timeout_s=120.0, namespace="test-artist-sync")
    learner = ArtistLearnerGroup(str(embedded_models.artist), ArtistLearnerConfig(lora=lora, micro_batch_size=3),
                                 artist, ranks=1, num_threads=1, namespace="test-artist-sync", learner_kwargs={})
    try:
        info = learner.info[0]
        before = samplers.sample(tasks, critiques, conditionings, k=K, step=0)
        assert len(before) == 2 * K and {e.artist_version for e in before} == {0}

        groups = []
        for task, conditioning, image in zip(tasks, conditionings, images):
            edits = [e for e in before if e.task_id == task.task_id]
            rewards = [compute_attributes(ray.get(e.image)).exposure / 100.0 for e in edits]
            groups.append(ArtistGroup(task_id=task.task_id, critique_index=0, conditioning=conditioning,
                                      condition_image=task.input, edits=edits,
                                      rewards=np.asarray(rewards, np.float32), optimality=np.zeros(K, np.float32)))
        metrics = learner.collect(learner.launch_update(groups), timeout_s=300, what="update")
        assert metrics["learner/nft/skipped"] == 0.0 and metrics["learner/nft/version"] == 1.0

        # As for a bf16 DiT: the adapter still travels in float32, as the learner computes v_old with it.
        sync = WeightSync("artist", learner, samplers, config=SyncConfig(backend="collective"), timeout_s=60.0,
                          backend="collective", wire_dtype="bfloat16")
        started = time.perf_counter()
        report = sync.sync(1)
        sync_s = time.perf_counter() - started
        print(f"artist sync: {report.bytes_per_replica} bytes per sampler, {sync_s * 1000:.1f} ms, "
              f"update {metrics['time/learner/artist_update_s']:.2f} s")
        assert report.path == "collective" and samplers.policy_versions() == [1] and samplers.version == 1
        # The adapter in fp32 plus one 8-byte checksum trailer per bucket: nothing else crosses the wire.
        assert info["sync_bytes"] < report.bytes_per_replica <= info["sync_bytes"] + 8 * 16
        served = ray.get(samplers.actors[0].__ray_call__.remote(
            lambda actor: {n: p.detach().clone() for n, p in actor._adapter_parameters(4).items()}))
        published = ray.get(learner.ranks[0].__ray_call__.remote(
            lambda rank: {n.removeprefix("base_model.model."): t.clone()
                          for n, t in rank.learner.published_sampling_adapter(1)[1].items()}))
        assert served.keys() == published.keys()
        assert all(served[n].dtype == torch.float32 and torch.equal(served[n], published[n]) for n in served)

        after = samplers.sample(tasks, critiques, conditionings, k=K, step=0)  # same seeds, new weights
        assert {e.artist_version for e in after} == {1}
        assert any(not np.array_equal(a.x0, b.x0) for a, b in zip(after, before))
    finally:
        learner.shutdown()
        samplers.shutdown()
