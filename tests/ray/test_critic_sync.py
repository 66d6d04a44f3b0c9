"""Learner → vLLM actor round trip on a local Ray cluster: rollouts, prepare, one GRPO update, weight sync.

One vLLM CriticRolloutActor serves the tiny critic. Its critiques go through CriticLearner.prepare (rollout and
learner log-probs must agree at fp32) and one update; the learner's weights are synced into the running
engine, which must then serve version 1 and produce exactly the learner's own greedy output.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from critic_actor.config import CriticConfig
from critic_actor.inputs import build_critic_inputs
from critic_actor.model import vision_special_token_ids
from learner.config import CriticLearnerConfig
from learner.critic_learner import CriticLearner
from rollout.types import CriticGroup, CritiqueReward, PhotoTask

MIN_PIXELS, MAX_PIXELS, MAX_NEW_TOKENS, G = 3136, 12544, 16, 3


@pytest.fixture(scope="module")
def group(ray_local, embedded_models):
    from critic_actor.group import CriticRolloutGroup

    config = CriticConfig(model=str(embedded_models.critic), engine="vllm", num_replicas=1, cpus_per_replica=1,
                          group_size=G, temperature=1.0, max_new_tokens=MAX_NEW_TOKENS, min_pixels=MIN_PIXELS,
                          max_pixels=MAX_PIXELS, dtype="float32")
    group = CriticRolloutGroup(embedded_models.critic, config, sync_timeout_s=60.0)
    yield group
    group.shutdown()


def learner_greedy(learner: CriticLearner, image: np.ndarray) -> list[int]:
    model, processor = learner.model, learner.processor
    inputs = build_critic_inputs(processor, image)
    eos = set(model.generation_config.eos_token_id)
    model.eval()
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW_TOKENS,
                             suppress_tokens=vision_special_token_ids(processor.tokenizer))
    model.train()
    tokens = out[0, inputs["input_ids"].shape[1]:].tolist()
    return tokens[:next((i + 1 for i, t in enumerate(tokens) if t in eos), len(tokens))]


def test_learner_update_then_sync_serves_the_new_version(group, embedded_models):
    tasks = [
        PhotoTask(task_id="astronaut", input=data.astronaut()[:256, 128:384], target=data.astronaut()[:256, 128:384]),
        PhotoTask(task_id="coffee", input=data.coffee()[100:300, 200:500], target=data.coffee()[100:300, 200:500]),
    ]
    critiques = group.generate(tasks, n=G, step=0)
    learner = CriticLearner(embedded_models.critic, CriticLearnerConfig(lr=1e-2, kl_coef=0.01, micro_batch_size=6),
                            min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, temperature=1.0,
                            max_new_tokens=MAX_NEW_TOKENS, device="cpu")

    prepared = learner.prepare(critiques)
    assert prepared.agreement.num_tokens == sum(len(c.completion_token_ids) for c in critiques)
    assert prepared.agreement.mean_abs_diff < 1e-3 and abs(prepared.agreement.kl) < 1e-5
    assert [(h.task_id, h.critique_index) for h in prepared.conditionings] == [(c.task_id, c.index) for c in critiques]

    # Reward the later samples of each photo (responses of a random critic rarely stop early, so a length
    # reward would give every group zero variance and the update nothing to learn).
    groups = []
    for task in tasks:
        members = [c for c in critiques if c.task_id == task.task_id]
        rewards = [CritiqueReward(task_id=task.task_id, critique_index=c.index, format=0.0, rank=0.0, suggestion=0.0,
                                  total=float(c.index)) for c in members]
        groups.append(CriticGroup(task_id=task.task_id, critiques=members, rewards=rewards,
                                  advantages=np.zeros(G, np.float32)))
    metrics = learner.update(groups, prepared)
    assert metrics["learner/grpo/step_applied"] == 1.0 and learner.policy_version == 1

    report = group.set_weights(learner.policy_version, learner.get_weights())
    assert report["policy_version"] == 1
    after = group.generate(tasks, n=1, step=0, greedy=True)
    assert all(c.policy_version == 1 for c in after)
    for critique in after:
        assert critique.completion_token_ids == learner_greedy(learner, critique.image)

    # Sampled rollouts from the synced engine agree with the learner's recomputation at fp32 ...
    resampled = group.generate(tasks, n=G, step=1)
    agreement = learner.prepare(resampled).agreement
    assert agreement.mean_abs_diff < 1e-3 and abs(agreement.kl) < 1e-5, agreement
    # ... far more closely than version 1 agrees with version 0: the engine really serves the new weights
    # (one step can leave the greedy path of a random model unchanged, the log-probs cannot stay).
    moved_by_update = np.mean(np.concatenate([
        np.abs(v1 - prepared.old_log_probs[key]) for key, v1 in learner.prepare(critiques).old_log_probs.items()]))
    assert moved_by_update > 1e-3 and moved_by_update > 20 * agreement.mean_abs_diff, (moved_by_update, agreement)
    print(f"sync {report['seconds']:.3f} s; rollout/learner |Δlogp| before {prepared.agreement.mean_abs_diff:.2e}, "
          f"after sync {agreement.mean_abs_diff:.2e} (max {agreement.max_abs_diff:.2e}), KL {agreement.kl:.2e}; "
          f"|Δlogp| moved by the update {moved_by_update:.2e}")
