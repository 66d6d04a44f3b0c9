"""CriticRolloutGroup: the driver-side owner of N CriticRolloutActor replicas.

Owns creating the replicas as Ray actors (named ``critic-rollout-<i>``, resources from config, packed in one
placement group), splitting requests across them, weight sync through the object store with a timeout and a
check that every replica received the same weights (a collective sync is driven by ``rollout.sync.weight_sync``, which
starts each replica's ``receive_weights``), and reporting health. It must not hold model weights or images
itself: state and images travel through the object store or the collective.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from critic_actor.config import CriticConfig
from rollout.cluster.startup import (StartupLimits, foreground_runtime_env, wait_for_placement, wait_for_restart,
                             wait_until_ready)
from rollout.records.types import Critique, PhotoTask
from rollout.sync.weight_transport import tensor_digest

logger = logging.getLogger(__name__)

_FORWARDED_ENV_PREFIXES = ("VLLM_", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM", "DO_NOT_TRACK",
                           "OMP_NUM_THREADS")


class CriticRolloutGroup:
    """N critic rollout replicas behind one generate / rescore / set_weights interface."""

    def __init__(self, model_path: str | Path, config: CriticConfig, *, sync_timeout_s: float = 120.0,
                 namespace_prefix: str = "", startup: StartupLimits | None = None, max_restarts: int = 3):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from critic_actor.actor import ROLE, CriticRolloutActor

        self.config = config
        self.sync_timeout_s = sync_timeout_s
        self.startup = startup or StartupLimits()
        bundle = {"CPU": config.cpus_per_replica}
        if config.gpus_per_replica > 0:
            bundle["GPU"] = config.gpus_per_replica
        # PACK keeps replicas (and a replica's tensor-parallel ranks) close without requiring one node.
        self.placement_group = placement_group([dict(bundle) for _ in range(config.num_replicas)], strategy="PACK")
        wait_for_placement(self.placement_group, ROLE, self.startup)
        remote_cls = ray.remote(CriticRolloutActor)
        self.names = [f"{namespace_prefix}{ROLE}-{i}" for i in range(config.num_replicas)]
        # The engine reads these at start (in-process engine core, KV-cache size, offline hub); forward the
        # driver's values so replicas behave the same wherever Ray starts them.
        env_vars = {k: v for k, v in os.environ.items() if k.startswith(_FORWARDED_ENV_PREFIXES)}
        self.actors = [
            remote_cls.options(
                name=self.names[i], num_cpus=config.cpus_per_replica,
                num_gpus=config.gpus_per_replica, max_restarts=max_restarts, max_task_retries=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement_group,
                                                                     placement_group_bundle_index=i),
                runtime_env=foreground_runtime_env(env_vars),
            ).remote(str(model_path), config, i, sync_timeout_s, cpu_fallback=self.startup.cpu_fallback)
            for i in range(config.num_replicas)
        ]
        self.ready_info = wait_until_ready([a.ready.remote() for a in self.actors], self.names, self.startup)
        self.version = 0
        """Policy version every replica serves (set by :meth:`set_weights`, or by the collective sync)."""
        # With object-store sync the last synced state stays in the object store so a replica that Ray restarts
        # (on the base checkpoint) can be brought back to the current weights before it serves again; with
        # collective sync ``resync`` (set by the sync's owner) sends the current version to that replica.
        self._state_ref = None
        self._digest = ""
        self.resync: Callable[[int], None] | None = None
        """Called with a restarted replica's index to bring it to :attr:`version` over the collective."""
        self.restarts = 0
        """Replica restarts this group recovered from."""
        self.retried_items = 0
        """Work items (critiques to generate, images to re-score) redone after a replica died."""
        self._next = 0

    @property
    def serving_dtype(self) -> str:
        """The replicas' weight dtype (what a sync sends)."""
        return self.ready_info[0]["dtype"]

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
        wait_for_restart(actor.ready.remote, self.names[replica], self.startup)
        self.restarts += 1
        if self.resync is not None:
            self.resync(replica)
        elif self._state_ref is not None:
            ray.get(actor.set_weights.remote(self.version, self._state_ref, self._digest),
                    timeout=self.sync_timeout_s + 30.0)
        logger.warning("%s was restarted (%s); reloaded weights version %d", self.names[replica], reason,
                       self.version)

    def set_weights(self, version: int, state: dict[str, Any] | Any, digest: str | None = None) -> dict[str, Any]:
        """Load ``state`` into every replica as ``version`` through the object store; fail loudly on timeout or
        disagreement.

        ``state`` is a state dict, or an ObjectRef to one together with its ``digest``
        (:func:`~rollout.sync.weight_transport.tensor_digest`, computed where the state was made): then the weights go
        from the object store to the replicas without passing through this process. Returns the seconds the
        whole sync took, the digest of the state and each replica's report.
        """
        import ray

        started = time.perf_counter()
        if isinstance(state, ray.ObjectRef):
            if not digest:
                raise ValueError("set_weights with an ObjectRef needs the state's digest")
            state_ref = state
        else:
            digest = tensor_digest(state)
            state_ref = ray.put(state)
        refs = [a.set_weights.remote(version, state_ref, digest) for a in self.actors]
        # The replica enforces the same timeout on its own load; the margin covers transfer and queueing.
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=self.sync_timeout_s + 30.0)
        if pending:
            raise TimeoutError(f"critic weight sync to version {version}: {len(pending)} of {len(refs)} replicas "
                               f"did not answer within {self.sync_timeout_s + 30.0:.0f} s")
        reports = ray.get(refs)
        if any(r["digest"] != digest for r in reports):
            raise RuntimeError(f"critic replicas received different weights in the sync to version {version}: "
                               f"{[r['digest'] for r in reports]}, sent {digest}")
        self.version, self._state_ref, self._digest = version, state_ref, digest
        self.resync = None
        return {"policy_version": version, "digest": digest, "seconds": time.perf_counter() - started,
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
