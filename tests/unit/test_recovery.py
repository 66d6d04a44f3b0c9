"""Telling a lost actor from a failed call, the reward pool's call sizes, and the verbosity actors inherit."""

from __future__ import annotations

import pytest
import ray.exceptions as rex

from rewards.pool import call_sizes
from rollout.cluster.recovery import describe_exit, describe_loss, lost_actor_cause


def _task_error(cause: BaseException) -> rex.RayTaskError:
    return rex.RayTaskError("sample", "Traceback ...", cause, proctitle="ray::ArtistSamplerActor.sample")


@pytest.mark.parametrize("error", [
    rex.ActorUnavailableError("restarting", None),
    rex.ActorDiedError(),
    rex.OutOfMemoryError("Task was killed due to the node running low on memory."),
    rex.NodeDiedError("node 1 died"),
    rex.WorkerCrashedError(),
])
def test_losses_are_recognised_directly_and_inside_a_task_error(error):
    assert lost_actor_cause(error) is error
    assert lost_actor_cause(_task_error(error)) is error  # the actor's own call to a lost actor


def test_a_calls_own_error_is_not_a_loss():
    assert lost_actor_cause(ValueError("bad record")) is None
    assert lost_actor_cause(_task_error(RuntimeError("connection closed by peer"))) is None
    wrapped = RuntimeError("weight sync failed")
    wrapped.__cause__ = rex.ActorDiedError()
    assert isinstance(lost_actor_cause(wrapped), rex.ActorDiedError)  # chained with ``raise ... from``


def test_the_cause_is_named_for_the_log_line():
    assert describe_loss(rex.OutOfMemoryError("low on memory")) == "killed by Ray's memory monitor"
    assert describe_loss(rex.NodeDiedError("x")) == "its node was lost"
    assert describe_loss(rex.ActorUnavailableError("restarting", None)) == "unreachable while restarting"
    assert describe_loss(rex.ActorDiedError()).startswith("its process died (The actor died unexpectedly")


def test_the_workers_recorded_exit_names_a_memory_monitor_kill():
    # A killed actor's pending call fails the same way whatever killed it; Ray's worker table tells the cause.
    assert describe_exit("NODE_OUT_OF_MEMORY", "Task was killed due to the node running low on memory.") == \
        "killed by Ray's memory monitor"
    assert describe_exit("SYSTEM_ERROR", "The node with node id abc has been marked dead") == "its node was lost"
    assert describe_exit("SYSTEM_ERROR", "Worker unexpectedly exits with a connection error code 2. End of file. "
                                         "Some common causes include: (1) the process was killed by the OOM killer") \
        == "its process died (Worker unexpectedly exits with a connection error code 2)"
    # An actor's death message names its node's address; that alone is no node loss.
    assert describe_loss(rex.ActorUnavailableError("node 1.2.3.4: the actor was restarted; it died", None)) == \
        "unreachable while restarting"


@pytest.mark.parametrize("count, workers, inflight, minimum, expected", [
    (32, 1, 2, 16, [16, 16]),      # one worker, two calls in flight: two calls of 16
    (32, 2, 2, 16, [16, 16]),      # two workers: one call each, none below the batch size
    (16, 2, 2, 16, [8, 8]),        # the embedded step: both workers busy even below the batch size
    (64, 2, 2, 8, [16, 16, 16, 16]),
    (3, 4, 2, 8, [1, 1, 1]),
    (0, 2, 2, 8, []),
])
def test_reward_calls_are_few_and_large_and_keep_every_worker_busy(count, workers, inflight, minimum, expected):
    assert call_sizes(count, workers, inflight, minimum) == expected


def test_actors_inherit_the_drivers_verbosity():
    from rollout.cluster.startup import LOGGING_ENV
    from rollout.env import FORWARDED

    assert set(LOGGING_ENV) == set(FORWARDED)
