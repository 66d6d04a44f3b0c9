"""CriticRolloutGroup on a local Ray cluster: one vLLM replica on the tiny critic, started once per module."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from critic_actor.config import CriticConfig
from critic_actor.inputs import build_critic_inputs
from critic_actor.model import load_critic, vision_special_token_ids
from learner.grpo import logprob_agreement
from rollout.records.types import Critique, ParsedCritique, PhotoTask

MIN_PIXELS, MAX_PIXELS, MAX_NEW_TOKENS = 3136, 12544, 24


@pytest.fixture(scope="module")
def group(ray_local, embedded_models):
    from critic_actor.group import CriticRolloutGroup

    config = CriticConfig(model=str(embedded_models.critic), engine="vllm", num_replicas=1, cpus_per_replica=1,
                          group_size=3, temperature=1.0, max_new_tokens=MAX_NEW_TOKENS, min_pixels=MIN_PIXELS,
                          max_pixels=MAX_PIXELS, dtype="float32")
    group = CriticRolloutGroup(embedded_models.critic, config, sync_timeout_s=60.0)
    yield group
    group.shutdown()


@pytest.fixture(scope="module")
def hf_critic(embedded_models):
    return load_critic(embedded_models.critic, dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def tasks(ray_local, tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("photos") / "chelsea.png"
    Image.fromarray(data.chelsea()[50:250, 100:400]).save(path)
    astronaut = data.astronaut()[:256, 128:384]
    return [
        PhotoTask(task_id="astronaut", input=ray_local.put(astronaut), target=astronaut),
        PhotoTask(task_id="chelsea", input=str(path), target=str(path)),
        PhotoTask(task_id="coffee", input=data.coffee()[100:300, 200:500], target=data.coffee()[100:300, 200:500]),
    ]


def hf_greedy(hf_critic, image, max_new_tokens):
    model, processor = hf_critic
    inputs = build_critic_inputs(processor, image)
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens,
                             suppress_tokens=vision_special_token_ids(processor.tokenizer))
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def hf_logprobs(hf_critic, critique: Critique):
    """Teacher-forced log-probs of the critique's tokens (M-RoPE types extended with zeros over the response)."""
    model, processor = hf_critic
    inputs = build_critic_inputs(processor, critique.image)
    prompt_len = inputs["input_ids"].shape[1]
    response = torch.tensor([critique.completion_token_ids])
    ids = torch.cat([inputs["input_ids"], response], dim=1)
    types = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(response)], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=types,
                       pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"]).logits
    logprobs = logits[0, prompt_len - 1:-1].float().log_softmax(-1)
    return logprobs.gather(-1, response[0].unsqueeze(-1)).squeeze(-1).numpy()


def test_replica_runs_at_the_clusters_cpu_priority_not_rays_background_niceness(group, ray_local):
    """Ray starts workers 15 nice levels below its raylet; on a shared machine the vLLM loop would then get a
    fraction of the CPU the same engine gets in a normal process. The raylet here is this process's child."""
    import os

    replica = ray_local.get(group.actors[0].__ray_call__.remote(lambda actor: os.nice(0)))
    assert replica == os.nice(0)


def test_replica_is_named_and_reports_ready(group, ray_local):
    assert group.ready_info[0]["engine"] == "vllm" and group.ready_info[0]["policy_version"] == 0
    ray_local.get_actor("critic-rollout-0")  # the dashboard name
    assert "role=critic-rollout, index=0, version=0" in group.ready_info[0]["repr"]
    assert group.health()[0]["ok"]


def test_generate_returns_g_complete_records_per_photo(group, tasks, hf_critic):
    critiques = group.generate(tasks, n=3, step=0)
    assert [(c.task_id, c.index) for c in critiques] == [(t.task_id, i) for t in tasks for i in range(3)]
    _, processor = hf_critic
    suppressed = set(vision_special_token_ids(processor.tokenizer))
    for critique in critiques:
        h, w, _ = critique.image.shape
        assert critique.image.dtype == np.uint8 and h % 28 == 0 and w % 28 == 0 and MIN_PIXELS <= h * w <= MAX_PIXELS
        assert 1 <= len(critique.completion_token_ids) <= MAX_NEW_TOKENS
        assert critique.finish_reason in ("stop", "length")
        assert (critique.finish_reason == "length") == (len(critique.completion_token_ids) == MAX_NEW_TOKENS)
        assert critique.rollout_logprobs.shape == (len(critique.completion_token_ids),)
        assert critique.rollout_logprobs.dtype == np.float32 and (critique.rollout_logprobs <= 0).all()
        assert not suppressed & set(critique.completion_token_ids)
        assert isinstance(critique.parsed, ParsedCritique) and critique.policy_version == 0
        # The learner rebuilds exactly the engine's prompt from the stored image.
        assert build_critic_inputs(processor, critique.image)["input_ids"][0].tolist() == critique.prompt_token_ids
    for task in tasks:
        group_tokens = {tuple(c.completion_token_ids) for c in critiques if c.task_id == task.task_id}
        assert len(group_tokens) > 1, "the G samples of one photo should differ at temperature 1"


def test_rollout_logprobs_agree_with_a_teacher_forced_forward(group, tasks, hf_critic):
    critiques = group.generate(tasks[:2], n=2, step=1)
    rollout = torch.cat([torch.as_tensor(c.rollout_logprobs, dtype=torch.float32) for c in critiques])[None]
    learner = torch.cat([torch.as_tensor(hf_logprobs(hf_critic, c), dtype=torch.float32) for c in critiques])[None]
    agreement = logprob_agreement(rollout, learner, torch.ones_like(rollout))
    assert agreement.num_tokens > 0
    assert agreement.mean_abs_diff < 1e-3 and agreement.kl < 1e-5


def test_sampling_is_reproducible_per_step(group, tasks):
    first = group.generate(tasks[:1], n=2, step=7)
    again = group.generate(tasks[:1], n=2, step=7)
    other = group.generate(tasks[:1], n=2, step=8)
    assert [c.completion_token_ids for c in first] == [c.completion_token_ids for c in again]
    assert [c.completion_token_ids for c in first] != [c.completion_token_ids for c in other]


def test_greedy_vllm_equals_transformers_greedy(group, tasks, hf_critic):
    critiques = group.generate(tasks, n=1, step=0, greedy=True)
    for critique in critiques:
        assert critique.completion_token_ids == hf_greedy(hf_critic, critique.image, MAX_NEW_TOKENS)


def test_rescore_returns_one_score_or_none_per_image_and_names_bad_input(group, tasks):
    scores = group.rescore([t.input for t in tasks])
    assert len(scores) == len(tasks)
    assert all(s is None or 0.0 <= s <= 100.0 for s in scores)
    import ray

    with pytest.raises(ray.exceptions.RayTaskError, match="rescore image 0"):
        group.rescore([np.zeros((32, 32), np.uint8)])


def test_set_weights_changes_outputs_and_version_without_restart(group, tasks, hf_critic, ray_local):
    model, _ = hf_critic
    before = group.generate(tasks[:2], n=1, step=0, greedy=True)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    state = {name: tensor.numpy() for name, tensor in model.state_dict().items()}
    report = group.set_weights(1, state)
    assert report["policy_version"] == 1 and report["seconds"] > 0
    assert report["replicas"][0]["digest"] == report["digest"]
    after = group.generate(tasks[:2], n=1, step=0, greedy=True)
    assert all(c.policy_version == 1 for c in after)
    assert [c.completion_token_ids for c in after] != [c.completion_token_ids for c in before]
    for critique in after:
        assert critique.completion_token_ids == hf_greedy(hf_critic, critique.image, MAX_NEW_TOKENS)
    actor = ray_local.get_actor("critic-rollout-0")
    assert ray_local.get(actor.policy_version.remote()) == 1
    assert "version=1" in group.health()[0]["repr"]
    assert group.ready_info[0]["start_s"] > 0


def test_bad_weights_are_refused_before_they_reach_the_engine(group, tasks, hf_critic, ray_local):
    import ray

    model, _ = hf_critic
    state = {name: tensor.numpy() for name, tensor in model.state_dict().items()}
    actor = ray_local.get_actor("critic-rollout-0")
    with pytest.raises(ray.exceptions.RayTaskError, match="digest"):
        ray.get(actor.set_weights.remote(2, state, "0000000000000000"))
    broken = dict(state)
    name = next(k for k in broken if k.endswith("embed_tokens.weight"))
    broken[name] = broken[name][:, :7]
    with pytest.raises(ray.exceptions.RayTaskError, match="wrong shapes"):
        group.set_weights(3, broken)
    with pytest.raises(ray.exceptions.RayTaskError, match="missing names"):
        group.set_weights(3, {k: v for k, v in state.items() if k != name})
    # Nothing was loaded: the replica still serves version 1 and is healthy.
    assert ray.get(actor.policy_version.remote()) == 1
    assert group.health()[0]["ok"]
    assert group.generate(tasks[:1], n=1, step=0)[0].policy_version == 1


def test_a_restarted_replica_gets_the_current_weights_back_before_serving(group, tasks, ray_local):
    before = group.generate(tasks[:1], n=1, step=3, greedy=True)
    assert before[0].policy_version == 1
    ray_local.kill(group.actors[0], no_restart=False)
    after = group.generate(tasks[:1], n=1, step=3, greedy=True)
    assert after[0].policy_version == 1
    assert after[0].completion_token_ids == before[0].completion_token_ids
    assert group.restarts == 1 and group.health()[0]["ok"]
