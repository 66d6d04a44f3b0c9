"""CriticLearner on the tiny critic: H_c and log-probs against HF generate, the update, weights and state."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from critic_actor.grammar import parse_critique
from critic_actor.model import load_critic
from learner.config import CriticLearnerConfig, LoraConfig
from learner.critic_learner import LANGUAGE_MODEL_LINEAR_LAYERS, CriticLearner, critic_advantages
from learner.grpo import token_log_probs
from critic_samples import generate_critiques, photo
from rollout.records.types import Critique, CriticGroup, CritiqueReward

MIN_PIXELS, MAX_PIXELS = 56 * 56, 112 * 112


@pytest.fixture(scope="module")
def tiny(embedded_models):
    model, processor = load_critic(embedded_models.critic, dtype="float32", device="cpu")
    return embedded_models.critic, model, processor


def make_learner(path, **overrides) -> CriticLearner:
    config = CriticLearnerConfig(**{"lr": 1e-3, "micro_batch_size": 3, **overrides})
    return CriticLearner(path, config, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, max_new_tokens=12, device="cpu")


def test_hidden_states_and_log_probs_match_generate(tiny):
    path, model, processor = tiny
    images = [photo(0), photo(1, 84, 56)]  # two shapes: different vision grids and right-padding in one batch
    critiques, states = generate_critiques(model, processor, images, group_size=1, max_new_tokens=10,
                                           do_sample=True, seed=3, hidden_states=True)
    learner = make_learner(path, kl_coef=0.0)
    prepared = learner.prepare(critiques)

    for critique, conditioning, steps in zip(critiques, prepared.conditionings, states):
        n = len(critique.completion_token_ids)
        # generate exposes the prefill's last layer over the prompt, then one state per fed-back token.
        expected = torch.cat([steps[0][-1][0]] + [steps[k][-1][0] for k in range(1, n)], dim=0).numpy()
        assert conditioning.hidden.dtype == np.float32
        assert conditioning.hidden.shape == (len(critique.prompt_token_ids) + n - 1, learner.hidden_size)
        assert conditioning.prompt_length == len(critique.prompt_token_ids)
        assert conditioning.mask.all() and conditioning.critic_version == 0
        np.testing.assert_allclose(conditioning.hidden, expected, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(prepared.old_log_probs[(critique.task_id, critique.index)],
                                   critique.rollout_logprobs, atol=1e-4)
    assert prepared.metrics["learner/grpo/rollout_logprob_abs_diff/mean"] < 1e-4
    assert abs(prepared.metrics["learner/grpo/rollout_kl"]) < 1e-6
    assert prepared.metrics["learner/grpo/rollout_logprob_abs_diff/mean"] < 1e-4


def test_agreement_compares_raw_log_probs_when_sampling_below_temperature_one(tiny):
    """The engine reports log-probs of the raw distribution (temperature 1); the learner's old log-probs are
    those of the sampling distribution (logits / T). The agreement metric compares like with like."""
    path, model, processor = tiny
    critiques, _ = generate_critiques(model, processor, [photo(2)], group_size=2, max_new_tokens=10,
                                      do_sample=True, seed=4)
    config = CriticLearnerConfig(lr=1e-3, micro_batch_size=3, kl_coef=0.0)
    learner = CriticLearner(path, config, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, max_new_tokens=12,
                            temperature=0.6, device="cpu")
    prepared = learner.prepare(critiques)
    assert prepared.metrics["learner/grpo/rollout_logprob_abs_diff/mean"] < 1e-4
    assert abs(prepared.metrics["learner/grpo/rollout_kl"]) < 1e-6
    assert prepared.metrics["learner/grpo/rollout_logprob_abs_diff/max"] < 1e-3
    # The PPO anchor stays the sampling distribution's: sharper than the raw one.
    key = (critiques[0].task_id, critiques[0].index)
    assert np.abs(prepared.old_log_probs[key] - critiques[0].rollout_logprobs).max() > 1e-2


def test_without_mm_token_type_ids_log_probs_drift(tiny):
    """The M-RoPE trap is real on this model: 1-D positions give log-probs that no longer match the engine's."""
    path, model, processor = tiny
    critiques, _ = generate_critiques(model, processor, [photo(5)], group_size=1, max_new_tokens=8,
                                      do_sample=True, seed=1)
    learner = make_learner(path, kl_coef=0.0)
    batch = learner._build_batch(critiques)
    rollout = torch.as_tensor(critiques[0].rollout_logprobs)
    with torch.no_grad():
        _, right = learner._forward(learner.policy, batch)
        batch.model_inputs.pop("mm_token_type_ids")
        _, wrong = learner._forward(learner.policy, batch)
    right_error = (token_log_probs(right, batch.response_tokens)[0] - rollout).abs().max()
    wrong_error = (token_log_probs(wrong, batch.response_tokens)[0] - rollout).abs().max()
    assert wrong_error > 20 * right_error and wrong_error > 5e-5, (float(right_error), float(wrong_error))


def test_update_moves_the_policy_toward_positive_advantages(tiny):
    path, model, processor = tiny
    critiques, _ = generate_critiques(model, processor, [photo(7), photo(8)], group_size=3, max_new_tokens=8,
                                      do_sample=True, seed=11)
    learner = make_learner(path, kl_coef=0.01)
    prepared = learner.prepare(critiques)
    # Reward 1 for the first response of each photo, 0 for the others.
    groups = []
    for task in ("photo-0", "photo-1"):
        members = [c for c in critiques if c.task_id == task]
        rewards = [CritiqueReward(task_id=task, critique_index=c.index, total=float(c.index == 0), format=0.0,
                                  rank=0.0, suggestion=0.0) for c in members]
        groups.append(CriticGroup(task_id=task, critiques=members, rewards=rewards,
                                  advantages=np.zeros(len(members), np.float32)))
    before = {k: v.sum() for k, v in prepared.old_log_probs.items()}
    metrics = learner.update(groups, prepared)
    assert metrics["learner/grpo/step_applied"] == 1.0 and learner.policy_version == 1
    assert metrics["learner/grpo/grad_norm"] > 0
    assert metrics["learner/grpo/kl"] == pytest.approx(0.0, abs=1e-6)  # first step: policy == reference
    assert metrics["learner/grpo/ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["learner/grpo/response_length/mean"] == pytest.approx(
        np.mean([len(c.completion_token_ids) for c in critiques]))
    after = learner.prepare(critiques)
    assert after.critic_version == 1
    for c in critiques:
        delta = after.old_log_probs[(c.task_id, c.index)].sum() - before[(c.task_id, c.index)]
        assert (delta > 0) == (c.index == 0), f"log-prob of {c.task_id}/{c.index} moved the wrong way: {delta}"
    # A stale prepared batch is refused with the reason.
    with pytest.raises(ValueError, match="critic version 0 but the learner is at 1"):
        learner.update(groups, prepared)


def test_zero_variance_groups_are_filtered_and_a_fully_filtered_step_is_skipped(tiny):
    path, model, processor = tiny
    critiques, _ = generate_critiques(model, processor, [photo(9)], group_size=2, max_new_tokens=6,
                                      do_sample=True, seed=2)
    learner = make_learner(path, kl_coef=0.0, filter_zero_variance_groups=True)
    prepared = learner.prepare(critiques)
    rewards = [CritiqueReward(task_id="photo-0", critique_index=c.index, total=1.0, format=1.0, rank=0.0,
                              suggestion=0.0) for c in critiques]
    group = CriticGroup(task_id="photo-0", critiques=critiques, rewards=rewards, advantages=np.zeros(2, np.float32))
    weights = learner.get_weights()
    metrics = learner.update([group], prepared)
    assert metrics["learner/grpo/groups_kept"] == 0.0 and metrics["learner/grpo/step_applied"] == 0.0
    assert learner.policy_version == 0
    for name, tensor in learner.get_weights().items():
        assert torch.equal(tensor, weights[name]), name


def test_a_nan_reward_skips_the_step_and_reports_it(tiny):
    path, model, processor = tiny
    critiques, _ = generate_critiques(model, processor, [photo(10)], group_size=2, max_new_tokens=6,
                                      do_sample=True, seed=4)
    learner = make_learner(path, kl_coef=0.0)
    prepared = learner.prepare(critiques)
    rewards = [CritiqueReward(task_id="photo-0", critique_index=c.index, total=[1.0, float("nan")][c.index],
                              format=1.0, rank=0.0, suggestion=0.0) for c in critiques]
    weights = learner.get_weights()
    metrics = learner.update([CriticGroup(task_id="photo-0", critiques=critiques, rewards=rewards,
                                          advantages=np.zeros(2, np.float32))], prepared)
    assert metrics["learner/grpo/step_applied"] == 0.0 and metrics["learner/grpo/nonfinite_reward_groups"] == 1.0
    assert learner.policy_version == 0
    assert all(torch.equal(t, weights[n]) for n, t in learner.get_weights().items())


def test_overlong_shaping_changes_advantages():
    config = CriticLearnerConfig(overlong_buffer=4, overlong_penalty=1.0)

    def critique(index, length):
        return Critique(task_id="t", index=index, text="", prompt_token_ids=[1], completion_token_ids=[5] * length,
                        rollout_logprobs=np.zeros(length, np.float32), finish_reason="stop",
                        parsed=parse_critique(""), policy_version=0)

    group = CriticGroup(task_id="t", critiques=[critique(0, 4), critique(1, 10)],
                        rewards=[CritiqueReward(task_id="t", critique_index=i, total=1.0, format=1.0, rank=0.0,
                                                suggestion=0.0) for i in range(2)],
                        advantages=np.zeros(2, np.float32))
    (adv,), (kept,) = critic_advantages([group], config, max_new_tokens=10)
    # Equal raw rewards, but the 10-token response hit the limit: -1 penalty -> it gets the negative advantage.
    assert kept and adv[0] > 0 > adv[1]
    (plain,), _ = critic_advantages([group], CriticLearnerConfig(), max_new_tokens=10)
    np.testing.assert_allclose(plain, 0.0)


def test_lora_reference_is_the_base_model_and_weights_are_merged(tiny):
    path, model, processor = tiny
    critiques, _ = generate_critiques(model, processor, [photo(4)], group_size=3, max_new_tokens=6,
                                      do_sample=True, seed=5)
    learner = make_learner(path, kl_coef=0.05, lora=LoraConfig(enabled=True, rank=4, alpha=8.0))
    assert all("lora_" in name for name, p in learner.model.named_parameters() if p.requires_grad)
    prepared = learner.prepare(critiques)
    for c in critiques:  # adapters start at zero (B = 0): reference == policy == base model
        np.testing.assert_allclose(prepared.ref_log_probs[(c.task_id, c.index)],
                                   prepared.old_log_probs[(c.task_id, c.index)], atol=1e-6)
    rewards = [CritiqueReward(task_id="photo-0", critique_index=c.index, total=float(c.index), format=0.0, rank=0.0,
                              suggestion=0.0) for c in critiques]
    learner.update([CriticGroup(task_id="photo-0", critiques=critiques, rewards=rewards,
                                advantages=np.zeros(3, np.float32))], prepared)
    weights = learner.get_weights()
    # The full parameter set under the base model's own names; only the adapted linears changed.
    base = model.state_dict()
    assert set(weights) == set(base)
    changed = {name for name in weights if not torch.equal(weights[name], base[name])}
    assert changed and all(re.fullmatch(LANGUAGE_MODEL_LINEAR_LAYERS + r"\.weight", name) for name in changed)
    # Loading the merged weights into a plain copy of the base model reproduces the learner's log-probs.
    merged_learner = make_learner(path, kl_coef=0.0)
    merged_learner.model.load_state_dict(weights)
    after = learner.prepare(critiques)
    merged = merged_learner.prepare(critiques)
    for c in critiques:
        key = (c.task_id, c.index)
        np.testing.assert_allclose(merged.old_log_probs[key], after.old_log_probs[key], atol=1e-5)
        # ...while the reference is still the untouched base model.
        np.testing.assert_allclose(after.ref_log_probs[key], prepared.ref_log_probs[key], atol=1e-6)


def test_state_round_trip_resumes_identically(tiny, tmp_path):
    path, model, processor = tiny
    critiques, _ = generate_critiques(model, processor, [photo(6)], group_size=3, max_new_tokens=6,
                                      do_sample=True, seed=8)
    rewards = [CritiqueReward(task_id="photo-0", critique_index=c.index, total=float(c.index == 1), format=0.0,
                              rank=0.0, suggestion=0.0) for c in critiques]
    group = CriticGroup(task_id="photo-0", critiques=critiques, rewards=rewards, advantages=np.zeros(3, np.float32))

    first = make_learner(path, kl_coef=0.0)
    first.update([group], first.prepare(critiques))
    first.save_state(tmp_path)
    in_memory = first.get_state()

    for restore in (lambda learner: learner.load_state(tmp_path), lambda learner: learner.set_state(in_memory)):
        resumed = make_learner(path, kl_coef=0.0)
        restore(resumed)
        assert resumed.policy_version == 1
        m_first = first.update([group], first.prepare(critiques))
        m_resumed = resumed.update([group], resumed.prepare(critiques))
        assert m_resumed["learner/grpo/loss"] == pytest.approx(m_first["learner/grpo/loss"], abs=1e-7)
        for name, tensor in first.get_weights().items():
            torch.testing.assert_close(resumed.get_weights()[name], tensor, atol=0, rtol=0)
        first.set_state(in_memory)  # rewind the original for the next restore path
