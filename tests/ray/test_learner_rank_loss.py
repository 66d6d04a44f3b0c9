"""What a learner call reports when one of its ranks dies.

When a learner's node is lost, the surviving ranks' collectives fail at once ("connection closed by peer" from
gloo), often before Ray reports the lost rank dead. The call must still report the lost rank (the controller turns
that into a stop naming the checkpoint to resume from), not the survivor's collective error; and a rank's own
error, with every peer alive, must still surface as that error without waiting for the peers' collective timeout.
"""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest

from rollout.cluster.learner_groups import LearnerRankLost, wait_for_ranks


@pytest.fixture
def ranks(ray_local):
    """Two plain Ray actors standing in for learner ranks, so each failure happens in a chosen order (defined
    here so that Ray ships the class by value: the workers cannot import test modules)."""
    import ray

    class FakeRank:
        def fail_like_a_collective(self, after_s: float) -> None:
            time.sleep(after_s)
            raise RuntimeError("gloo/transport/tcp/pair.cc:561 Connection closed by peer [127.0.0.1]:30906")

        def die(self, after_s: float) -> None:
            time.sleep(after_s)
            os._exit(1)

        def block(self, seconds: float) -> str:
            time.sleep(seconds)
            return "done"

    remote = ray.remote(max_restarts=0, max_task_retries=0, num_cpus=0)(FakeRank)
    actors = [remote.remote(), remote.remote()]
    yield actors
    for actor in actors:
        ray.kill(actor)


NAMES = ["critic-learner-0", "critic-learner-1"]


def test_a_peer_dying_after_a_survivors_collective_error_is_reported_as_the_lost_rank(ranks):
    refs = [ranks[0].fail_like_a_collective.remote(0.0), ranks[1].die.remote(1.0)]
    with pytest.raises(LearnerRankLost) as lost:
        wait_for_ranks(refs, NAMES, "critic-learner", timeout_s=60.0, what="prepare", peer_failure_grace_s=30.0)
    assert lost.value.role == "critic-learner" and lost.value.rank_name == "critic-learner-1"
    assert "critic-learner-1 died during prepare" in str(lost.value)


def test_a_ranks_own_error_with_live_peers_surfaces_after_the_grace(ranks):
    refs = [ranks[0].fail_like_a_collective.remote(0.0), ranks[1].block.remote(60.0)]
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="critic-learner-0 failed during update: .*Connection closed") as failed:
        wait_for_ranks(refs, NAMES, "critic-learner", timeout_s=120.0, what="update", peer_failure_grace_s=2.0)
    assert not isinstance(failed.value, LearnerRankLost)
    assert time.monotonic() - started < 30.0


def test_a_rank_that_dies_first_is_reported_at_once(ranks):
    refs = [ranks[0].block.remote(60.0), ranks[1].die.remote(0.0)]
    started = time.monotonic()
    with pytest.raises(LearnerRankLost, match="critic-learner-1 died during update"):
        wait_for_ranks(refs, NAMES, "critic-learner", timeout_s=120.0, what="update")
    assert time.monotonic() - started < 30.0


def test_a_rank_that_dies_during_a_weight_sync_is_reported_as_the_lost_rank(ranks):
    """The sync waits on learner ranks and replicas together; a dead learner rank, not the replica that failed
    waiting for its buckets, is what ends the run."""
    import ray

    from rollout.config import SyncConfig
    from rollout.sync.weight_sync import WeightSync

    learner = SimpleNamespace(role="critic-learner", names=NAMES, ranks=ranks)
    sync = WeightSync("critic", learner, SimpleNamespace(actors=[None], names=["critic-rollout-0"]),
                      config=SyncConfig(backend="object_store"), timeout_s=30.0, backend="object_store",
                      wire_dtype="float32")

    @ray.remote(num_cpus=0)
    def receive_weights() -> None:
        raise RuntimeError("bucket 0 from sender 1: connection closed by peer")

    calls = [("critic-learner-0", ranks[0].fail_like_a_collective.remote(0.0)),
             ("critic-learner-1", ranks[1].die.remote(0.5)), ("critic-rollout-0", receive_weights.remote())]
    with pytest.raises(LearnerRankLost, match="critic-learner-1 died during the critic weight sync to version 3"):
        sync._await(calls, version=3)
