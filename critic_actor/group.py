"""CriticRolloutGroup: the driver-side owner of N CriticRolloutActor replicas.

Owns creating the replicas as Ray actors (named ``critic-rollout-<i>``, resources from config, packed in one
placement group), splitting requests across them, broadcasting weights with a timeout and checking that every
replica holds the same weights afterwards, and reporting health. It must not hold model weights or images
itself: state and images travel through the object store.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from critic_actor.config import CriticConfig
from critic_actor.engines import fingerprints_match, state_checksum
from rollout.types import Critique, PhotoTask

logger = logging.getLogger(__name__)

_FORWARDED_ENV_PREFIXES = ("VLLM_", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM", "DO_NOT_TRACK",
                           "OMP_NUM_THREADS")


_RAY_WORKER_NICENESS = "RAY_worker_niceness"


def replica_niceness() -> str:
    """``RAY_worker_niceness`` for the replicas: 0, or the driver's own ``$RAY_worker_niceness`` when it sets one.

    Ray starts worker processes 15 nice levels below its raylet (the value is an increment over the raylet's
    niceness), so that they never starve its daemons. A vLLM replica is a tight Python loop: on a machine where
    anything else runs at normal priority it then gets a fraction of the CPU time the same engine gets in a
    process of its own (``python -m bench.critic`` measures both). The replicas are the run's main work, not
    background work, so they run at the cluster's own priority, that of its daemons and of a job's driver.
    """
    return os.environ.get(_RAY_WORKER_NICENESS) or "0"


class CriticRolloutGroup:
    """N critic rollout replicas behind one generate / rescore / set_weights interface."""

    def __init__(self, model_path: str | Path, config: CriticConfig, *, sync_timeout_s: float = 120.0,
                 namespace_prefix: str = "", start_timeout_s: float = 600.0, max_restarts: int = 3):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from critic_actor.actor import ROLE, CriticRolloutActor

        self.config = config
        self.sync_timeout_s = sync_timeout_s
        bundle = {"CPU": config.cpus_per_replica}
        if config.gpus_per_replica > 0:
            bundle["GPU"] = config.gpus_per_replica
        # PACK keeps replicas (and a replica's tensor-parallel ranks) close without requiring one node.
        self.placement_group = placement_group([dict(bundle) for _ in range(config.num_replicas)], strategy="PACK")
        try:
            ray.get(self.placement_group.ready(), timeout=start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise RuntimeError(f"the cluster cannot place {config.num_replicas} critic replicas of {bundle} within "
                               f"{start_timeout_s:.0f} s; lower critic.num_replicas or the per-replica "
                               f"resources") from None
        remote_cls = ray.remote(CriticRolloutActor)
        # The engine reads these at start (in-process engine core, KV-cache size, offline hub); forward the
        # driver's values so replicas behave the same wherever Ray starts them.
        env_vars = {k: v for k, v in os.environ.items() if k.startswith(_FORWARDED_ENV_PREFIXES)}
        env_vars[_RAY_WORKER_NICENESS] = replica_niceness()
        self.actors = [
            remote_cls.options(
                name=f"{namespace_prefix}{ROLE}-{i}", num_cpus=config.cpus_per_replica,
                num_gpus=config.gpus_per_replica, max_restarts=max_restarts, max_task_retries=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement_group,
                                                                     placement_group_bundle_index=i),
                runtime_env={"env_vars": env_vars},
            ).remote(str(model_path), config, i, sync_timeout_s)
            for i in range(config.num_replicas)
        ]
        self.ready_info = ray.get([a.ready.remote() for a in self.actors], timeout=start_timeout_s)
        self.start_timeout_s = start_timeout_s
        self.version = 0
        # The last synced state stays in the object store so a replica that Ray restarts (on the base
        # checkpoint) can be brought back to the current weights before it serves again.
        self._state_ref = None
        self._checksum = ""
        self.restarts = 0
        """Replica restarts this group recovered from."""
        self.retried_items = 0
        """Work items (critiques to generate, images to re-score) redone after a replica died."""
        self._next = 0

    def _shards(self, count: int) -> list[tuple[int, int, int]]:
        """(replica, start, stop) contiguous shards of ``count`` items, balanced; the first replica rotates so
        small batches do not always land on replica 0."""
        replicas = len(self.actors)
        base, extra = divmod(count, replicas)
        shards, start = [], 0
        for k in range(replicas):
            size = base + (1 if k < extra else 0)
            if size:
                shards.append(((self._next + k) % replicas, start, start + size))
            start += size
        self._next = (self._next + 1) % replicas
        return shards

    def generate(self, tasks: list[PhotoTask], n: int, step: int, greedy: bool = False) -> list[Critique]:
        """``n`` critiques per task, in task order, from all replicas in parallel."""
        return self._fan_out("generate", tasks, n, step, greedy)

    def rescore(self, images: list[Any]) -> list[float | None]:
        """Greedy re-scores of ``images`` (ranking reward), in order, from all replicas in parallel."""
        return self._fan_out("rescore", images)

    def _fan_out(self, method: str, items: list[Any], *args: Any) -> list[Any]:
        """Split ``items`` over the replicas, call ``method`` on each shard, concatenate in order.

        A replica that died during its call is restarted by Ray; it gets the current weights back and its
        shard is retried once. Work is never returned from a replica whose version lags the group's.
        """
        import ray

        shards = self._shards(len(items))
        refs = [getattr(self.actors[r], method).remote(items[a:b], *args) for r, a, b in shards]
        results = []
        for (replica, start, stop), ref in zip(shards, refs):
            try:
                part = ray.get(ref)
            except ray.exceptions.RayActorError as exc:  # includes ActorUnavailableError (restarting)
                self._recover(replica, exc)
                self.retried_items += (stop - start) * (args[0] if method == "generate" else 1)
                part = ray.get(getattr(self.actors[replica], method).remote(items[start:stop], *args))
            if method == "generate" and any(c.policy_version != self.version for c in part):
                self._recover(replica, f"it served version {part[0].policy_version}, expected {self.version}")
                part = ray.get(getattr(self.actors[replica], method).remote(items[start:stop], *args))
            results.extend(part)
        return results

    def _recover(self, replica: int, reason: Any) -> None:
        import ray

        actor = self.actors[replica]
        deadline = time.monotonic() + self.start_timeout_s
        while True:  # calls fail with ActorUnavailableError until the restarted replica's engine is up
            try:
                ray.get(actor.ready.remote(), timeout=max(1.0, deadline - time.monotonic()))
                break
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        self.restarts += 1
        if self._state_ref is not None:
            ray.get(actor.set_weights.remote(self.version, self._state_ref, self._checksum),
                    timeout=self.sync_timeout_s + 30.0)
        logger.warning("critic-rollout-%d was restarted (%s); reloaded weights version %d", replica, reason,
                       self.version)

    def set_weights(self, version: int, state: dict[str, Any] | Any, checksum: str | None = None) -> dict[str, Any]:
        """Load ``state`` into every replica as ``version``; fail loudly on timeout or disagreement.

        ``state`` is a state dict, or an ObjectRef to one together with its ``checksum``
        (:func:`~critic_actor.engines.state_checksum`, computed where the state was made): then the weights go
        from the object store to the replicas without passing through this process. Returns the seconds the
        whole sync took, the checksum of the state and each replica's report.
        """
        import ray

        started = time.perf_counter()
        if isinstance(state, ray.ObjectRef):
            if not checksum:
                raise ValueError("set_weights with an ObjectRef needs the state's checksum")
            state_ref = state
        else:
            checksum = state_checksum(state)
            state_ref = ray.put(state)
        refs = [a.set_weights.remote(version, state_ref, checksum) for a in self.actors]
        # The replica enforces the same timeout on its own load; the margin covers transfer and queueing.
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=self.sync_timeout_s + 30.0)
        if pending:
            raise TimeoutError(f"critic weight sync to version {version}: {len(pending)} of {len(refs)} replicas "
                               f"did not answer within {self.sync_timeout_s + 30.0:.0f} s")
        reports = ray.get(refs)
        first = reports[0]["fingerprint"]
        if not all(fingerprints_match(first, r["fingerprint"]) for r in reports[1:]):
            raise RuntimeError(f"critic replicas hold different weights after sync to version {version}: "
                               f"{[r['fingerprint'] for r in reports]}")
        self.version, self._state_ref, self._checksum = version, state_ref, checksum
        return {"policy_version": version, "checksum": checksum, "seconds": time.perf_counter() - started,
                "replicas": reports}

    def health(self, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """One report per replica; an unreachable replica reports ``ok: False`` with the reason."""
        import ray

        reports = []
        for i, actor in enumerate(self.actors):
            try:
                reports.append(ray.get(actor.health.remote(), timeout=timeout_s))
            except Exception as exc:  # noqa: BLE001 - health must report, not raise
                reports.append({"index": i, "ok": False, "problem": f"{type(exc).__name__}: {exc}"})
        return reports

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        remove_placement_group(self.placement_group)
