"""Benchmark of the critic's GRPO learner on the tiny critic: prepare, update and weight export times.

Measures, on a fixed synthetic workload (``photos`` × ``group_size`` critiques with random completions of
``response_tokens`` tokens, the critic's real prompt and pixel bounds of the embedded config):

- ``prepare_s``: one :meth:`CriticLearner.prepare` (teacher-forced forward: old/ref log-probs and H_c);
- ``update_s``: one :meth:`CriticLearner.update` (forward + backward + AdamW step);
- ``get_weights_s`` and ``weights_mb``: exporting the full state dict a weight sync sends;
- ``conditioning_mb``: the H_c bytes the batch produces for the object store.

Run: ``.venv/bin/python -m bench.critic_learner [--repeats 3] [--lora]``; prints JSON (medians).
The time of loading those weights into a running vLLM replica is measured by ``bench.critic`` and printed by
``tests/ray/test_critic_sync.py``. Numbers depend on the machine and its load; report them with the command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

WORKLOAD = {"photos": 2, "group_size": 4, "response_tokens": 48, "min_pixels": 3136, "max_pixels": 12544}
"""The embedded config's shape: B = 2 photos, G = 4, up to 48 new tokens, 56²–112² critic images."""


def _critiques(learner, workload):
    from critic_actor.inputs import build_critic_inputs
    from rollout.records.types import Critique, ParsedCritique

    rng = np.random.default_rng(0)
    vocab = int(learner.model.config.text_config.vocab_size)
    banned = {learner.image_token_id}
    critiques = []
    for photo in range(workload["photos"]):
        image = rng.integers(0, 256, (84, 112, 3), dtype=np.uint8)
        prompt = build_critic_inputs(learner.processor, image)["input_ids"][0].tolist()
        for index in range(workload["group_size"]):
            tokens = [int(t) for t in rng.integers(0, vocab, workload["response_tokens"]) if int(t) not in banned]
            critiques.append(Critique(
                task_id=f"photo-{photo}", index=index, text="", prompt_token_ids=prompt, completion_token_ids=tokens,
                rollout_logprobs=np.full(len(tokens), -np.log(vocab), np.float32), finish_reason="length",
                parsed=ParsedCritique(), policy_version=0, image=image))
    return critiques


def bench(repeats: int, lora: bool, workload: dict = WORKLOAD) -> dict:
    import torch

    from learner.config import CriticLearnerConfig, LoraConfig
    from learner.critic_learner import CriticLearner
    from rollout.models import ensure_embedded_models
    from rollout.records.types import CriticGroup, CritiqueReward

    torch.set_num_threads(1)
    config = CriticLearnerConfig(micro_batch_size=8, kl_coef=0.01,
                                 lora=LoraConfig(enabled=lora, rank=8, alpha=16.0))
    learner = CriticLearner(ensure_embedded_models().critic, config, min_pixels=workload["min_pixels"],
                            max_pixels=workload["max_pixels"], max_new_tokens=workload["response_tokens"], device="cpu")
    critiques = _critiques(learner, workload)
    times: dict[str, list[float]] = {"prepare_s": [], "update_s": [], "get_weights_s": []}
    conditioning_bytes = weights_bytes = 0
    for _ in range(repeats):
        started = time.perf_counter()
        prepared = learner.prepare(critiques)
        times["prepare_s"].append(time.perf_counter() - started)
        conditioning_bytes = sum(c.hidden.nbytes for c in prepared.conditionings)
        groups = []
        for photo in range(workload["photos"]):
            members = [c for c in critiques if c.task_id == f"photo-{photo}"]
            rewards = [CritiqueReward(task_id=c.task_id, critique_index=c.index, total=float(c.index), format=0.0,
                                      rank=0.0, suggestion=0.0) for c in members]
            groups.append(CriticGroup(task_id=f"photo-{photo}", critiques=members, rewards=rewards,
                                      advantages=np.zeros(len(members), np.float32)))
        started = time.perf_counter()
        learner.update(groups, prepared)
        times["update_s"].append(time.perf_counter() - started)
        started = time.perf_counter()
        weights = learner.get_weights()
        times["get_weights_s"].append(time.perf_counter() - started)
        weights_bytes = sum(t.numel() * t.element_size() for t in weights.values())
    prompt_tokens = len(critiques[0].prompt_token_ids)
    return {
        "workload": {**workload, "prompt_tokens": prompt_tokens, "sequences": len(critiques), "lora": lora,
                     "torch_threads": 1},
        **{name: round(statistics.median(values), 4) for name, values in times.items()},
        "weights_mb": round(weights_bytes / 2**20, 3),
        "conditioning_mb": round(conditioning_bytes / 2**20, 3),
        "repeats": repeats,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lora", action="store_true", help="train a LoRA (r8) instead of the full weights")
    args = parser.parse_args(argv)
    print(json.dumps(bench(args.repeats, args.lora), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
