"""Start-up of a run's actors: bounded waits for placement and model load, with progress lines, the CPU priority
every actor runs at, and the device an actor that was granted GPUs computes on.

Owns the three waits every actor owner goes through — the cluster granting a placement group, the actors
loading their models, a restarted replica coming back — each bounded by its own timeout from the ``cluster``
config section and reporting what is still pending (which role, which resources, which actors) at a fixed
interval, so a long start on a real cluster is visible and a start that cannot succeed ends with an error that
names the role and the knob to change. Weight-sync timeouts are not here: they belong to the sync path.
Every actor owner starts its actors with :func:`foreground_runtime_env`: Ray starts workers at niceness 15,
where the run's own work would lose its CPU to anything else on the machine (measured by ``bench/critic.py``).

A leaf like ``rollout.records.types``: the standard library only, Ray and torch imported inside the functions, so the
critic, artist and reward packages may use it. It creates no actor and no placement group itself.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

Report = Callable[[str], None]


def print_progress(line: str) -> None:
    """Default progress sink: one line on stderr, flushed (it reaches the job log as it happens)."""
    print(f"[photocrafter] {line}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class StartupLimits:
    """How long each start-up wait may take and how often it reports (``cluster.*`` in the config)."""

    placement_timeout_s: float = 600.0
    """Waiting for the cluster to grant a placement group (``cluster.placement_timeout_s``)."""
    load_timeout_s: float = 1800.0
    """Waiting for actors to load their models (``cluster.model_load_timeout_s``)."""
    progress_every_s: float = 30.0
    """Interval of progress lines (``cluster.progress_every_s``)."""
    cpu_fallback: bool = False
    """Actors granted GPUs may compute on CPU when CUDA is absent (``cluster.cpu_fallback``)."""

    @classmethod
    def from_config(cls, cluster: Any) -> StartupLimits:
        """From a ``cluster`` config section (duck-typed, so this module imports no config)."""
        return cls(placement_timeout_s=cluster.placement_timeout_s, load_timeout_s=cluster.model_load_timeout_s,
                   progress_every_s=cluster.progress_every_s, cpu_fallback=cluster.cpu_fallback)


WORKER_NICENESS = "RAY_worker_niceness"


def foreground_env() -> dict[str, str]:
    """Environment variables that start an actor at the cluster's own CPU priority: ``RAY_worker_niceness`` 0, or
    the driver's own ``$RAY_worker_niceness`` when it sets one.

    Ray starts worker processes 15 nice levels below its raylet (the value is an increment over the raylet's
    niceness), so that they never starve its daemons. The run's actors — rollout replicas, samplers, reward
    workers, learner ranks — are its main work, not background work: at Ray's default a vLLM replica got a
    fraction of the CPU time the same engine gets in a process of its own whenever anything else ran at normal
    priority (``python -m bench.critic`` measures both), so they run at the priority of the cluster's daemons and
    of a job's driver.
    """
    import os

    return {WORKER_NICENESS: os.environ.get(WORKER_NICENESS) or "0"}


def foreground_runtime_env(env_vars: dict[str, str] | None = None) -> dict[str, dict[str, str]]:
    """A Ray ``runtime_env`` with ``env_vars`` and the foreground priority (:func:`foreground_env`)."""
    return {"env_vars": {**(env_vars or {}), **foreground_env()}}


def describe_bundles(bundles: Sequence[dict[str, float]]) -> str:
    """``3 × {CPU: 4, GPU: 1}`` for identical bundles, else each bundle listed."""

    def one(bundle: dict[str, float]) -> str:
        return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(bundle.items())) + "}"

    shapes = [one(b) for b in bundles]
    if shapes and all(s == shapes[0] for s in shapes):
        return f"{len(shapes)} × {shapes[0]}"
    return " + ".join(shapes)


def free_resources_line() -> str:
    """What the cluster has free right now, for progress and error lines."""
    import ray

    free, total = ray.available_resources(), ray.cluster_resources()
    parts = [f"{key} {free.get(key, 0.0):g} of {total.get(key, 0.0):g}" for key in ("GPU", "CPU")]
    return "free now: " + ", ".join(parts)


ROLE_KNOBS = {
    "critic-rollout": "critic.num_replicas, critic.gpus_per_replica or critic.cpus_per_replica",
    "artist-sampler": "artist.num_samplers, artist.gpus_per_sampler or artist.cpus_per_sampler",
    "reward": "rewards.num_workers, rewards.cpus_per_worker or rewards.gpus_per_worker",
    "critic-learner": "learner.critic.gpus",
    "artist-learner": "learner.artist.gpus",
}
"""The config fields that size each role: what a placement timeout and a pre-flight refusal tell to lower."""


def wait_for_placement(placement_group: Any, role: str, limits: StartupLimits, *,
                       report: Report = print_progress) -> None:
    """Block until the cluster grants ``placement_group``; a progress line every ``progress_every_s``.

    ``role`` names the owner (``critic-rollout``), whose :data:`ROLE_KNOBS` the error names as the fix. Raises
    ``TimeoutError`` after ``placement_timeout_s``, after removing the pending group so its demand does not
    linger in the cluster.
    """
    import ray
    from ray.util.placement_group import remove_placement_group

    bundles = describe_bundles(placement_group.bundle_specs)
    strategy = ray.util.placement_group_table(placement_group).get("strategy", "")
    ready = placement_group.ready()
    started = time.monotonic()
    deadline, next_report = started + limits.placement_timeout_s, started + limits.progress_every_s
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        done, _ = ray.wait([ready], timeout=max(0.05, min(next_report, deadline) - now))
        if done:
            if time.monotonic() - started >= limits.progress_every_s:
                report(f"placement: {role} placed after {time.monotonic() - started:.0f} s")
            return
        if time.monotonic() >= next_report:
            next_report += limits.progress_every_s
            report(f"placement: waiting for {role}: {bundles} ({strategy}) pending for "
                   f"{time.monotonic() - started:.0f} s of {limits.placement_timeout_s:.0f} s "
                   f"(cluster.placement_timeout_s); {free_resources_line()}")
    remove_placement_group(placement_group)
    raise TimeoutError(f"{role}: the cluster did not grant {bundles} ({strategy}) within "
                       f"{limits.placement_timeout_s:.0f} s (cluster.placement_timeout_s); {free_resources_line()}; "
                       f"lower {ROLE_KNOBS.get(role, 'its size')}, add nodes, or raise cluster.placement_timeout_s")


def wait_until_ready(refs: Sequence[Any], names: Sequence[str], limits: StartupLimits, *,
                     report: Report = print_progress) -> list[Any]:
    """Results of the actors' ``ready`` calls ``refs`` (one per name, in order), waiting at most
    ``load_timeout_s`` for all of them, with a progress line listing the actors still loading.

    An actor whose constructor failed raises its error here (Ray's error names the actor class and its
    exception). A load that outlasts the timeout raises ``TimeoutError`` naming the actors still loading.
    """
    import ray

    refs = list(refs)
    started = time.monotonic()
    deadline, next_report = started + limits.load_timeout_s, started + limits.progress_every_s
    pending = list(refs)
    while pending:
        now = time.monotonic()
        if now >= deadline:
            loading = [name for ref, name in zip(refs, names) if ref in pending]
            raise TimeoutError(f"{', '.join(loading)} did not finish loading within {limits.load_timeout_s:.0f} s "
                               f"(cluster.model_load_timeout_s); raise it for large checkpoints on slow storage")
        done, pending = ray.wait(pending, num_returns=1, timeout=max(0.05, min(next_report, deadline) - now))
        if done:
            ray.get(done)  # an actor whose constructor failed raises now, not after the others have loaded
        if pending and time.monotonic() >= next_report:
            next_report += limits.progress_every_s
            loading = [name for ref, name in zip(refs, names) if ref in pending]
            report(f"model load: waiting for {', '.join(loading)} ({len(loading)} of {len(refs)} still loading) "
                   f"for {time.monotonic() - started:.0f} s of {limits.load_timeout_s:.0f} s "
                   f"(cluster.model_load_timeout_s)")
    return ray.get(refs)


def wait_for_restart(ready_call: Callable[[], Any], name: str, limits: StartupLimits, *,
                     report: Report = print_progress) -> Any:
    """Wait until an actor Ray is restarting answers ``ready_call()`` again, and return its answer.

    A restart needs a place (after a node loss, the actor's bundle moves to a surviving node) and a model
    load, so the wait is bounded by ``placement_timeout_s + load_timeout_s``. Calls fail with
    ``ActorUnavailableError`` while the actor is down; an actor that is dead for good raises its
    ``RayActorError``.
    """
    import ray

    limit = limits.placement_timeout_s + limits.load_timeout_s
    started = last_report = time.monotonic()
    while True:
        remaining = limit - (time.monotonic() - started)
        if remaining <= 0:
            raise TimeoutError(f"{name} did not come back from its restart within {limit:.0f} s "
                               f"(cluster.placement_timeout_s + cluster.model_load_timeout_s); {free_resources_line()}")
        try:
            return ray.get(ready_call(), timeout=max(0.1, min(limits.progress_every_s, remaining)))
        except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
            pass
        now = time.monotonic()
        if now - last_report >= limits.progress_every_s:
            last_report = now
            report(f"restart: waiting for {name} to be placed and reloaded for {now - started:.0f} s of "
                   f"{limit:.0f} s; {free_resources_line()}")
        time.sleep(min(0.5, max(0.0, limit - (now - started))))


def actor_device(name: str, gpus: float, cpu_fallback: bool) -> str:
    """The torch device an actor computes on: ``cpu`` without GPUs, ``cuda`` when it was granted GPUs and sees
    CUDA, ``cpu`` with a logged warning when it sees none and ``cpu_fallback`` allows it; otherwise the actor
    fails at start (a GPU it was promised and cannot use is a broken node, not a reason to run 100× slower)."""
    if gpus <= 0:
        return "cpu"
    import os

    import torch

    if torch.cuda.is_available():
        return "cuda"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
    if cpu_fallback:
        logger.warning("%s was granted %g GPU(s) (CUDA_VISIBLE_DEVICES=%s) but this process sees no CUDA device; "
                       "running on CPU because cluster.cpu_fallback is true", name, gpus, visible)
        return "cpu"
    raise RuntimeError(f"{name} was granted {gpus:g} GPU(s) (CUDA_VISIBLE_DEVICES={visible}) but this process "
                       f"sees no CUDA device: check the node's NVIDIA driver and container runtime, or set "
                       f"cluster.cpu_fallback: true to run on CPU (simulated clusters only)")
