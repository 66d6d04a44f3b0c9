"""Critiques for learner tests: real tiny-critic rollouts made with transformers ``generate``.

Shared by the unit tests of ``CriticLearner`` and the Ray tests of the critic learner group.
"""

from __future__ import annotations

import numpy as np
import torch

from critic_actor.grammar import build_critic_messages, parse_critique
from critic_actor.model import vision_special_token_ids
from rollout.records.types import Critique


def photo(seed: int, height: int = 56, width: int = 84) -> np.ndarray:
    """A uint8 image whose sides are multiples of 28, so the processor's resize is the identity."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def generate_critiques(model, processor, images, *, group_size, max_new_tokens, do_sample, seed, version=0,
                       hidden_states=False):
    """Critiques made with HF ``generate`` (the transformers rollout path), with their raw-logit log-probs."""
    prompt = processor.apply_chat_template(build_critic_messages(), add_generation_prompt=True, tokenize=False)
    suppress = vision_special_token_ids(processor.tokenizer)
    eos = set(model.generation_config.eos_token_id)
    critiques, states = [], []
    for task, image in enumerate(images):
        inputs = processor(text=[prompt], images=[image], return_tensors="pt")
        torch.manual_seed(seed + task)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=do_sample, top_k=0,
                                 top_p=1.0, temperature=1.0, num_return_sequences=group_size,
                                 suppress_tokens=suppress, output_logits=True, output_hidden_states=hidden_states,
                                 return_dict_in_generate=True)
        prompt_ids = inputs["input_ids"][0].tolist()
        new = out.sequences[:, len(prompt_ids):]
        logprobs = torch.stack([torch.log_softmax(step.float(), -1) for step in out.logits], dim=1)
        for index in range(group_size):
            tokens = new[index].tolist()
            length = next((i + 1 for i, t in enumerate(tokens) if t in eos), len(tokens))
            tokens = tokens[:length]
            lp = logprobs[index, torch.arange(length), torch.tensor(tokens)].numpy().astype(np.float32)
            text = processor.tokenizer.decode(tokens, skip_special_tokens=True)
            critiques.append(Critique(
                task_id=f"photo-{task}", index=index, text=text, prompt_token_ids=prompt_ids,
                completion_token_ids=tokens, rollout_logprobs=lp,
                finish_reason="stop" if tokens[-1] in eos else "length", parsed=parse_critique(text),
                policy_version=version, image=image))
        if hidden_states:
            states.append(out.hidden_states)
    return critiques, states
