"""Learner → vLLM replicas on a local Ray cluster: rollouts, prepare, one GRPO update, weight sync.

Two vLLM CriticRolloutActors serve the tiny critic (started once for the module). Their critiques go through the
learner's prepare (rollout and learner log-probs must agree at fp32) and one update; the learner's weights are
synced into the running engines — through the object store, and over the collective for a full fine-tune sharded
over two learner ranks (each sending its own rows) and for a LoRA learner (adapter only) — after which every
replica must serve the new version: the learner's log-probs and, for a one-rank learner, its greedy output.
A LoRA payload that binds to no module, and a replica that never joins the collective, must fail the sync loudly.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
import torch
from ray import cloudpickle as ray_cloudpickle
from skimage import data

from critic_actor.config import CriticConfig
from critic_actor.inputs import build_critic_inputs
from critic_actor.model import vision_special_token_ids
from learner.config import CriticLearnerConfig, LoraConfig
from learner.critic_learner import CriticLearner
from rollout.config import SyncConfig
from rollout.records.types import CriticGroup, CritiqueReward, PhotoTask

# _rank_greedy runs inside learner ranks (through __ray_call__); Ray workers cannot import test modules.
ray_cloudpickle.register_pickle_by_value(sys.modules[__name__])

MIN_PIXELS, MAX_PIXELS, MAX_NEW_TOKENS, G = 3136, 12544, 16, 3
TASKS = [
    PhotoTask(task_id="astronaut", input=data.astronaut()[:256, 128:384], target=data.astronaut()[:256, 128:384]),
    PhotoTask(task_id="coffee", input=data.coffee()[100:300, 200:500], target=data.coffee()[100:300, 200:500]),
]


@pytest.fixture(scope="module")
def group(ray_local, embedded_models):
    from critic_actor.group import CriticRolloutGroup

    config = CriticConfig(model=str(embedded_models.critic), engine="vllm", num_replicas=2, cpus_per_replica=1,
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


def _agreement(metrics: dict[str, float]) -> tuple[float, float]:
    """(mean |Δ log p|, k3 KL) between the rollout engine's log-probs and the learner's recomputation."""
    return metrics["learner/grpo/rollout_logprob_abs_diff/mean"], metrics["learner/grpo/rollout_kl"]


def _groups(critiques) -> list[CriticGroup]:
    """Rewards that favour each photo's later samples (responses of a random critic rarely stop early, so a length
    reward would give every group zero variance and the update nothing to learn)."""
    groups = []
    for task in TASKS:
        members = [c for c in critiques if c.task_id == task.task_id]
        rewards = [CritiqueReward(task_id=task.task_id, critique_index=c.index, format=0.0, rank=0.0, suggestion=0.0,
                                  total=float(c.index)) for c in members]
        groups.append(CriticGroup(task_id=task.task_id, critiques=members, rewards=rewards,
                                  advantages=np.zeros(len(members), np.float32)))
    return groups


def test_learner_update_then_sync_serves_the_new_version(group, embedded_models):
    tasks = TASKS
    critiques = group.generate(tasks, n=G, step=0)
    learner = CriticLearner(embedded_models.critic, CriticLearnerConfig(lr=1e-2, kl_coef=0.01, micro_batch_size=6),
                            min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, temperature=1.0,
                            max_new_tokens=MAX_NEW_TOKENS, device="cpu")

    prepared = learner.prepare(critiques)
    before = _agreement(prepared.metrics)
    assert before[0] < 1e-3 and abs(before[1]) < 1e-5, prepared.metrics
    assert [(h.task_id, h.critique_index) for h in prepared.conditionings] == [(c.task_id, c.index) for c in critiques]

    metrics = learner.update(_groups(critiques), prepared)
    assert metrics["learner/grpo/step_applied"] == 1.0 and learner.policy_version == 1

    report = group.set_weights(learner.policy_version, learner.get_weights())
    assert report["policy_version"] == 1
    after = group.generate(tasks, n=1, step=0, greedy=True)
    assert all(c.policy_version == 1 for c in after)
    for critique in after:
        assert critique.completion_token_ids == learner_greedy(learner, critique.image)

    # Sampled rollouts from the synced engine agree with the learner's recomputation at fp32 ...
    resampled = group.generate(tasks, n=G, step=1)
    mean_abs_diff, kl = _agreement(learner.prepare(resampled).metrics)
    assert mean_abs_diff < 1e-3 and abs(kl) < 1e-5, (mean_abs_diff, kl)
    # ... far more closely than version 1 agrees with version 0: the engine really serves the new weights
    # (one step can leave the greedy path of a random model unchanged, the log-probs cannot stay).
    moved_by_update = np.mean(np.concatenate([
        np.abs(v1 - prepared.old_log_probs[key]) for key, v1 in learner.prepare(critiques).old_log_probs.items()]))
    assert moved_by_update > 1e-3 and moved_by_update > 20 * mean_abs_diff, (moved_by_update, mean_abs_diff)
    print(f"sync {report['seconds']:.3f} s; rollout/learner |Δlogp| before {before[0]:.2e}, "
          f"after sync {mean_abs_diff:.2e}, KL {kl:.2e}; |Δlogp| moved by the update {moved_by_update:.2e}")


# ------------------------------------------------------------------------------------------- collective sync
def _learner_group(embedded_models, lora: bool, ranks: int = 1):
    """The critic learner as a group of CPU ranks (gloo), as a run builds it."""
    from rollout.cluster.learner_groups import CriticLearnerGroup

    config = CriticLearnerConfig(lr=1e-2, kl_coef=0.01, micro_batch_size=6,
                                 lora=LoraConfig(enabled=lora, rank=8, alpha=16.0))
    return CriticLearnerGroup(str(embedded_models.critic), config, ranks=ranks, num_threads=1, learner_kwargs={
        "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS, "temperature": 1.0, "max_new_tokens": MAX_NEW_TOKENS})


def _update_once(group, learner) -> int:
    critiques = group.generate(TASKS, n=G, step=0)
    learner.prepare(critiques)
    metrics = learner.collect(learner.launch_update(_groups(critiques)), what="update")
    assert metrics["learner/grpo/step_applied"] == 1.0
    return learner.version()


def _weight_sync(group, learner, *, lora: bool, timeout_s: float = 60.0):
    from rollout.sync.weight_sync import WeightSync

    return WeightSync("critic", learner, group, config=SyncConfig(backend="collective", bucket_mb=1),
                      timeout_s=timeout_s, backend="collective", wire_dtype=group.serving_dtype, probe_tokens=32,
                      lora_learner=lora)


def _rank_greedy(rank, image: np.ndarray) -> list[int]:
    """The greedy decode of a learner rank's model. ``generate`` bypasses the FSDP root (the policy's forward), so
    the root's own parameters (embeddings, vision patch embedding) are gathered around it by hand."""
    policy = rank.learner.policy
    policy.unshard()
    try:
        return learner_greedy(rank.learner, image)
    finally:
        policy.reshard()


def _assert_serves_the_learner(ray, group, learner, version: int) -> float:
    """Sampled log-probs of every replica agree with the learner's recomputation at fp32; for a one-rank learner
    (whose model generates on its own) greedy output of every replica == the learner's own greedy decode too."""
    after = group.generate(TASKS, n=1, step=0, greedy=True)
    assert {c.policy_version for c in after} == {version}
    if learner.num_ranks == 1:
        for critique in after:
            expected = ray.get(learner.ranks[0].__ray_call__.remote(_rank_greedy, critique.image), timeout=120)
            assert critique.completion_token_ids == expected
    _, metrics = learner.prepare(group.generate(TASKS, n=G, step=1))
    mean_abs_diff, kl = _agreement(metrics)
    assert mean_abs_diff < 1e-3 and abs(kl) < 1e-5, metrics
    return mean_abs_diff


def test_collective_sync_of_a_full_fine_tune_serves_exactly_the_learners_weights(group, ray_local, embedded_models):
    ray = ray_local
    learner = _learner_group(embedded_models, lora=False, ranks=2)  # each rank sends its own shards
    try:
        version = _update_once(group, learner)
        report = _weight_sync(group, learner, lora=False).sync(version)
        assert report.path == "collective" and report.replicas == 2 and report.probe_abs_diff < 1e-4
        # Every weight in fp32 with bucket trailers: a full model's bytes, once per replica (not per replica pair).
        assert report.full_model_bytes <= report.bytes_per_replica < 1.05 * report.full_model_bytes
        diff = _assert_serves_the_learner(ray, group, learner, version)
        print(f"collective full sync: {report.bytes_per_replica / 1e6:.2f} MB per replica to 2 replicas in "
              f"{report.seconds:.2f} s; probe |Δlogp| {report.probe_abs_diff:.1e}, rollouts {diff:.1e}")
    finally:
        learner.shutdown()


def test_collective_sync_of_a_lora_learner_moves_the_adapter_and_serves_the_learners_output(group, ray_local,
                                                                                            embedded_models):
    ray = ray_local
    learner = _learner_group(embedded_models, lora=True)
    try:
        version = _update_once(group, learner)
        sync = _weight_sync(group, learner, lora=True)
        # The replicas served another learner's weights so far: the first adapter sync sends the whole model once
        # (merged where adapted); from then on only the factors move.
        first = sync.sync(version)
        diff = _assert_serves_the_learner(ray, group, learner, version)
        again = sync.sync(version)
        assert again.bytes_per_replica < first.full_model_bytes < first.bytes_per_replica
        assert again.sent_fraction < 0.1 and again.probe_abs_diff < 1e-4
        _assert_serves_the_learner(ray, group, learner, version)
        print(f"collective LoRA sync: first {first.bytes_per_replica / 1e6:.3f} MB (adapter + whole base), then "
              f"{again.bytes_per_replica / 1e6:.3f} MB = {again.sent_fraction:.1%} of the model; rollouts {diff:.1e}")
    finally:
        learner.shutdown()


def test_a_lora_payload_that_binds_to_no_module_fails_loudly(group, ray_local, embedded_models):
    """The adapter's names carry peft's saved-adapter prefix, so they match nothing in the served model."""
    import threading

    from critic_actor.actor import WeightSyncError
    from learner.lora import adapter_sync_state
    from learner.weight_sender import WeightSender
    from rollout.sync.weight_transport import LoraSpec, SyncManifest, TensorSpec
    from rollout.sync.weight_sync import start_receivers

    ray = ray_local
    learner = CriticLearner(embedded_models.critic, CriticLearnerConfig(lora=LoraConfig(rank=8, alpha=16.0)),
                            min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, device="cpu")
    tensors, modules, scaling = adapter_sync_state(learner.model, "default", include_base=True)
    renamed = {f"base_model.model.{n}": t for n, t in tensors.items()}
    manifest = SyncManifest(
        version=group.version + 1, tensors=tuple(TensorSpec(n, tuple(t.shape)) for n, t in renamed.items()),
        wire_dtype="float32", num_senders=1, bucket_bytes=1 << 20, kind="lora",
        lora=LoraSpec(scaling, tuple(f"base_model.model.{m}" for m in modules), True))
    sender = WeightSender()
    endpoint = sender.open_endpoint("127.0.0.1", num_receivers=2, timeout_s=30.0)
    thread = threading.Thread(target=sender.send, args=(endpoint, manifest, renamed.items()))
    thread.start()
    refs = [ref for _, ref in start_receivers(group, manifest.version, endpoint, manifest)]
    for ref in refs:
        with pytest.raises(ray.exceptions.RayTaskError, match=r"bound to 0 of 14 modules") as info:
            ray.get(ref, timeout=120)
        assert isinstance(info.value.cause, WeightSyncError)
    thread.join(60)
    for actor in group.actors:  # neither replica serves until a good sync
        with pytest.raises(ray.exceptions.RayTaskError, match="refuses to serve"):
            ray.get(actor.generate.remote(TASKS[:1], 1, 0), timeout=120)


def test_a_replica_that_never_joins_fails_the_sync_within_the_timeout_naming_it(group, ray_local, embedded_models):
    ray = ray_local
    learner = _learner_group(embedded_models, lora=False)
    try:
        version = learner.version()
        sync = _weight_sync(group, learner, lora=False, timeout_s=8.0)
        blocker = group.actors[1].__ray_call__.remote(lambda actor: time.sleep(20.0))  # replica 1 is busy
        started = time.perf_counter()
        with pytest.raises(TimeoutError, match=r"critic-rollout-1 did not join or finish within the 8 s") as info:
            sync.sync(version)
        elapsed = time.perf_counter() - started
        assert "critic-rollout-0" not in str(info.value).split("did not join")[0]
        assert elapsed < 8.0 + 10.0, elapsed
        with pytest.raises(ray.exceptions.RayTaskError, match="refuses to serve"):
            ray.get(group.actors[0].generate.remote(TASKS[:1], 1, 0), timeout=120)
        ray.get(blocker)
        ray.get(group.actors[1].health.remote(), timeout=120)  # its late receive has failed too by now
        report = sync.sync(version)  # once the replica is free, a new sync brings both back
        assert report.replicas == 2 and group.generate(TASKS, n=1, step=0)[0].policy_version == version
        print(f"stalled sync raised after {elapsed:.1f} s (timeout 8 s): {str(info.value)[:160]}")
    finally:
        learner.shutdown()
