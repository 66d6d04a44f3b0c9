"""Start-up waits on a real local cluster: progress lines while pending, and errors that name what is missing."""

from __future__ import annotations

import time

import pytest

from rollout.cluster.startup import StartupLimits, wait_for_placement, wait_until_ready

FAST = StartupLimits(placement_timeout_s=2.5, load_timeout_s=6.0, progress_every_s=0.5)


def slow_loader():
    """An actor class standing in for a model load that takes ``seconds`` (defined in a function so Ray ships
    it by value: the test module is not importable on the workers)."""
    import ray

    class SlowLoader:
        def __init__(self, seconds: float, fail: bool = False):
            if fail:
                raise ValueError("checkpoint is truncated")
            time.sleep(seconds)

        def ready(self) -> str:
            return "loaded"

    return ray.remote(num_cpus=0)(SlowLoader)


def test_placement_that_never_comes_reports_progress_then_names_role_and_knob(ray_local):
    from ray.util.placement_group import placement_group, placement_group_table

    group = placement_group([{"CPU": 1, "GPU": 1}] * 2, strategy="PACK")  # the session cluster has no GPU
    lines: list[str] = []
    with pytest.raises(TimeoutError) as timed_out:
        wait_for_placement(group, "artist-sampler", FAST, report=lines.append)
    message = str(timed_out.value)
    assert message.startswith("artist-sampler: the cluster did not grant 2 × {CPU: 1, GPU: 1} (PACK) within 2 s")
    assert "lower artist.num_samplers, artist.gpus_per_sampler or artist.cpus_per_sampler" in message and "cluster.placement_timeout_s" in message
    assert len(lines) >= 3 and all("waiting for artist-sampler: 2 × {CPU: 1, GPU: 1}" in line for line in lines)
    assert "GPU 0 of 0" in lines[0]
    assert placement_group_table(group)["state"] == "REMOVED"  # no demand left behind


def test_model_load_progress_names_the_actors_still_loading(ray_local):
    import ray

    remote = slow_loader()
    actors = [remote.remote(0.0), remote.remote(6.0)]
    ray.get(actors[0].ready.remote())  # the fast one is up: only the slow load is pending below
    lines: list[str] = []
    assert wait_until_ready([a.ready.remote() for a in actors], ["fast-0", "slow-1"],
                            StartupLimits(load_timeout_s=30.0, progress_every_s=0.5),
                            report=lines.append) == ["loaded", "loaded"]
    assert len(lines) >= 2 and all("waiting for slow-1 (1 of 2 still loading)" in line for line in lines)
    for actor in actors:
        ray.kill(actor)


def test_model_load_timeout_and_load_failure_are_loud(ray_local):
    import ray

    remote = slow_loader()
    slow = remote.remote(30.0)
    loading = r"slow-0 did not finish loading within 1 s \(cluster.model_load_timeout_s\)"
    with pytest.raises(TimeoutError, match=loading):
        wait_until_ready([slow.ready.remote()], ["slow-0"], StartupLimits(load_timeout_s=1.0, progress_every_s=0.5),
                         report=lambda line: None)
    broken = remote.remote(0.0, fail=True)
    started = time.monotonic()
    with pytest.raises(ray.exceptions.RayActorError, match="checkpoint is truncated"):
        wait_until_ready([slow.ready.remote(), broken.ready.remote()], ["slow-0", "broken-1"], FAST,
                         report=lambda line: None)
    assert time.monotonic() - started < 5.0  # the failure surfaced without waiting for the slow load
    for actor in (slow, broken):
        ray.kill(actor)
