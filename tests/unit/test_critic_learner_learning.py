"""GRPO learns: on a checkable reward, a few dozen CriticLearner steps on the tiny critic raise the mean reward.

Reward: the fraction of response tokens that are numbers (the tiny tokenizer has ~106 number tokens out of
~950, so a random critic starts near 0.1). Rollouts are sampled with HF ``generate`` from the learner's own
weights (on-policy, temperature 1, full vocabulary), exactly like the transformers rollout engine would.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from critic_actor.grammar import build_critic_messages, parse_critique
from critic_actor.model import vision_special_token_ids
from learner.config import CriticLearnerConfig
from learner.critic_learner import CriticLearner
from rollout.records.types import Critique, CriticGroup, CritiqueReward

STEPS = 24
GROUP_SIZE = 8
MAX_NEW_TOKENS = 8
INSTRUCTION = "Score this photo."
"""A short instruction keeps each teacher-forced pass small; the learner is indifferent to the prompt's text."""
LR = 1e-2
"""High for a real critic, right for a 0.4 M-parameter random one that must move within a few dozen steps."""


def _number_token_ids(tokenizer) -> set[int]:
    ids = set()
    for token, token_id in tokenizer.get_vocab().items():
        if tokenizer.convert_tokens_to_string([token]).strip().isdigit():
            ids.add(token_id)
    return ids


def _rollouts(learner: CriticLearner, images, step: int) -> list[Critique]:
    processor, model = learner.processor, learner.model
    prompt = processor.apply_chat_template(build_critic_messages(INSTRUCTION), add_generation_prompt=True,
                                           tokenize=False)
    eos = set(model.generation_config.eos_token_id)
    critiques = []
    model.eval()
    for task, image in enumerate(images):
        inputs = processor(text=[prompt], images=[image], return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=True, top_k=0, top_p=1.0,
                                 temperature=1.0, num_return_sequences=GROUP_SIZE, output_logits=True,
                                 suppress_tokens=vision_special_token_ids(processor.tokenizer),
                                 return_dict_in_generate=True)
        prompt_ids = inputs["input_ids"][0].tolist()
        logprobs = torch.stack([torch.log_softmax(s.float(), -1) for s in out.logits], dim=1)
        for index in range(GROUP_SIZE):
            tokens = out.sequences[index, len(prompt_ids):].tolist()
            length = next((i + 1 for i, t in enumerate(tokens) if t in eos), len(tokens))
            tokens = tokens[:length]
            critiques.append(Critique(
                task_id=f"photo-{task}", index=index, text="", prompt_token_ids=prompt_ids,
                completion_token_ids=tokens,
                rollout_logprobs=logprobs[index, torch.arange(length), torch.tensor(tokens)].numpy(),
                finish_reason="stop" if tokens[-1] in eos else "length", parsed=parse_critique(""),
                policy_version=learner.policy_version, image=image))
    model.train()
    return critiques


@pytest.mark.slow
def test_grpo_raises_a_checkable_reward(embedded_models):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (56, 84, 3), dtype=np.uint8) for _ in range(2)]
    config = CriticLearnerConfig(lr=LR, kl_coef=0.0, micro_batch_size=16, weight_decay=0.0)
    learner = CriticLearner(embedded_models.critic, config, min_pixels=56 * 56, max_pixels=112 * 112,
                            max_new_tokens=MAX_NEW_TOKENS, device="cpu", seed=0)
    numbers = _number_token_ids(learner.processor.tokenizer)

    history = []
    for step in range(STEPS):
        critiques = _rollouts(learner, images, step)
        prepared = learner.prepare(critiques)
        groups = []
        for task in sorted({c.task_id for c in critiques}):
            members = [c for c in critiques if c.task_id == task]
            rewards = [CritiqueReward(
                task_id=task, critique_index=c.index, format=0.0, rank=0.0, suggestion=0.0,
                total=sum(t in numbers for t in c.completion_token_ids) / len(c.completion_token_ids))
                for c in members]
            groups.append(CriticGroup(task_id=task, critiques=members, rewards=rewards,
                                      advantages=np.zeros(len(members), np.float32)))
        history.append(float(np.mean([r.total for g in groups for r in g.rewards])))
        metrics = learner.update(groups, prepared)
        assert np.isfinite(metrics["learner/grpo/loss"])
        # On-policy rollouts from the learner's own weights: engine and learner agree to float precision.
        assert prepared.metrics["learner/grpo/rollout_logprob_abs_diff/mean"] < 1e-4

    start, end = np.mean(history[:5]), np.mean(history[-5:])
    print(f"number-token reward: first 5 steps {start:.3f}, last 5 steps {end:.3f}; curve "
          + " ".join(f"{h:.2f}" for h in history))
    assert end > start + 0.25 and end > 0.4, history
