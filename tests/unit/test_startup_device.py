"""The device an actor computes on when it was granted GPUs: CUDA, a logged CPU fallback, or a loud failure."""

from __future__ import annotations

import logging

import pytest
import torch

from rollout.cluster.startup import actor_device

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def test_an_actor_without_gpus_runs_on_cpu():
    assert actor_device("reward-0", 0.0, cpu_fallback=False) == "cpu"


@no_cuda
def test_a_granted_gpu_without_cuda_fails_at_start_naming_the_actor_and_the_switch():
    with pytest.raises(RuntimeError) as failed:
        actor_device("artist-sampler-2", 1.0, cpu_fallback=False)
    assert "artist-sampler-2 was granted 1 GPU(s)" in str(failed.value)
    assert "cluster.cpu_fallback: true" in str(failed.value)


@no_cuda
def test_cpu_fallback_runs_on_cpu_and_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="rollout.cluster.startup"):
        assert actor_device("critic-learner", 2.0, cpu_fallback=True) == "cpu"
    assert "critic-learner was granted 2 GPU(s)" in caplog.text and "running on CPU" in caplog.text
