"""ArtistSamplerGroup: the driver-side owner of M ArtistSamplerActor replicas.

Owns the replicas' placement group (one bundle per replica, SPREAD so replicas land on different GPUs/nodes),
their Ray names (``artist-sampler-<i>``), fanning work out and back in, and weight sync with a deadline. Work is
balanced by splitting the critiques into M contiguous shares of near-equal size (each critique costs K edits of
the same resolution, so counts balance the work); results come back in input order. Every wait has a timeout:
a stalled replica fails the call loudly instead of hanging the run or serving stale weights.

It must not load models itself or decide what to sample; the controller passes the records.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from artist_actor.actor import ArtistSamplerActor
from artist_actor.config import ArtistConfig
from rollout.types import Conditioning, Critique, Edit, PhotoTask, RejectedRecord

logger = logging.getLogger(__name__)


class ArtistSamplerGroup:
    """M sampler replicas behind one ``sample`` / ``set_weights`` interface."""

    def __init__(
        self,
        config: ArtistConfig,
        artist_path: str,
        *,
        lora_alpha: float = 64.0,
        sync_timeout_s: float = 120.0,
        sample_timeout_s: float = 3600.0,
        namespace: str | None = None,
        max_restarts: int = 2,
    ):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.config = config
        self.sync_timeout_s = sync_timeout_s
        self.sample_timeout_s = sample_timeout_s
        self.rejected: list[RejectedRecord] = []
        """Every critique the replicas refused so far (the controller counts and logs them)."""
        bundle = {"CPU": config.cpus_per_sampler}
        if config.gpus_per_sampler:
            bundle["GPU"] = config.gpus_per_sampler
        self.placement_group = placement_group([dict(bundle) for _ in range(config.num_samplers)], strategy="SPREAD")
        ray.get(self.placement_group.ready(), timeout=sync_timeout_s)
        remote_actor = ray.remote(ArtistSamplerActor)
        self.actors = [
            remote_actor.options(
                name=f"artist-sampler-{index}", namespace=namespace, num_cpus=config.cpus_per_sampler,
                num_gpus=config.gpus_per_sampler, max_restarts=max_restarts, max_task_retries=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=self.placement_group, placement_group_bundle_index=index),
                # Foreground work: at Ray's default worker niceness (15 below the raylet) a sampler loses most of
                # its CPU to anything else on the machine (measured on the critic replicas: bench/critic.py).
                runtime_env={"env_vars": {"RAY_worker_niceness": os.environ.get("RAY_worker_niceness") or "0"}},
            ).remote(index, str(artist_path), config.model_dump(), lora_alpha=lora_alpha,
                     num_threads=max(1, int(config.cpus_per_sampler)), images_as_refs=True)
            for index in range(config.num_samplers)
        ]
        self.names = [f"artist-sampler-{index}" for index in range(config.num_samplers)]
        self.info = self._wait([actor.ready.remote() for actor in self.actors], self.names, sync_timeout_s, "start")
        # The last synced adapter stays in the object store so a replica that Ray restarts (on the base
        # model) is brought back to the current version before it samples again.
        self._version = 0
        self._state_ref = None
        self.restart_timeout_s = 600.0
        self.restarts = 0
        """Replica restarts this group recovered from."""
        self.retried_items = 0
        """Edits re-sampled because the replica making them died."""

    def sample(
        self,
        tasks: Sequence[PhotoTask],
        critiques: Sequence[Critique],
        conditionings: Sequence[Conditioning],
        *,
        k: int | None = None,
        step: int = 0,
    ) -> list[Edit]:
        """K edits per conditioning record, in input order; refused records go to :attr:`rejected`.

        ``critiques`` are the responses the conditionings were computed from: every conditioning must name one
        of them (a mismatch means the controller paired records wrongly, which is a bug, so it raises).
        """
        known = {(c.task_id, c.index) for c in critiques}
        strays = [f"{c.task_id}#{c.critique_index}" for c in conditionings if (c.task_id, c.critique_index) not in known]
        if strays:
            raise ValueError(f"conditioning without a matching critique: {strays[:5]}")
        shares = split_evenly(list(conditionings), len(self.actors))
        by_task = {task.task_id: task for task in tasks}
        calls, names, shares_sent = [], [], []
        for actor, name, share in zip(self.actors, self.names, shares):
            if share:
                share_tasks = [by_task[t] for t in dict.fromkeys(c.task_id for c in share) if t in by_task]
                calls.append(actor.sample.remote(share_tasks, share, k, step))
                names.append(name)
                shares_sent.append((share_tasks, share))
        import ray

        self._wait(calls, names, self.sample_timeout_s, "sample", collect=False)
        edits: list[Edit] = []
        for ref, name, (share_tasks, share) in zip(calls, names, shares_sent):
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError as exc:  # includes ActorUnavailableError (restarting)
                index = self.names.index(name)
                self._recover(index, exc)
                self.retried_items += len(share) * (k or self.config.edits_per_critique)
                result = ray.get(self.actors[index].sample.remote(share_tasks, share, k, step),
                                 timeout=self.sample_timeout_s)
            edits.extend(result.edits)
            self.rejected.extend(result.rejected)
        return edits

    def _recover(self, index: int, reason: object) -> None:
        """Wait until Ray has restarted replica ``index`` and give it the current adapter back."""
        import ray

        actor = self.actors[index]
        deadline = time.monotonic() + self.restart_timeout_s
        while True:  # calls fail with ActorUnavailableError until the restarted replica is up
            try:
                ray.get(actor.ready.remote(), timeout=max(1.0, deadline - time.monotonic()))
                break
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        self.restarts += 1
        if self._state_ref is not None:
            ray.get(actor.set_weights.remote(self._version, self._state_ref), timeout=self.sync_timeout_s)
        logger.warning("%s was restarted (%s); reloaded adapter version %d", self.names[index], reason, self._version)

    def set_weights(self, version: int, lora_state: Mapping[str, Any] | Any) -> None:
        """Every replica serves ``version`` afterwards, or this raises naming the replicas that did not."""
        import ray

        # One copy in the object store, read by every replica (an ObjectRef is passed on as it is, so the adapter
        # goes from the learner to the replicas without passing through this process).
        state_ref = lora_state if isinstance(lora_state, ray.ObjectRef) else ray.put(dict(lora_state))
        self._wait([actor.set_weights.remote(version, state_ref) for actor in self.actors], self.names,
                   self.sync_timeout_s, f"weight sync to version {version}")
        self._version, self._state_ref = version, state_ref

    def policy_versions(self) -> list[int]:
        return self._wait([actor.policy_version.remote() for actor in self.actors], self.names,
                          self.sync_timeout_s, "version query")

    @staticmethod
    def _wait(refs: list, names: list[str], timeout_s: float, what: str, collect: bool = True) -> list:
        """Wait for every call (failing loudly on a stall); return their results unless ``collect`` is False."""
        import ray

        if not refs:
            return []
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if pending:
            stalled = [name for ref, name in zip(refs, names) if ref in pending]
            raise TimeoutError(f"artist samplers: {what} did not finish within {timeout_s:.0f} s "
                               f"(stalled: {', '.join(stalled)})")
        return ray.get(refs) if collect else refs

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in self.actors:
            ray.kill(actor)
        remove_placement_group(self.placement_group)

    def __repr__(self) -> str:
        return f"ArtistSamplerGroup({len(self.actors)} replicas)"


def split_evenly(items: list, parts: int) -> list[list]:
    """``items`` cut into ``parts`` contiguous shares whose sizes differ by at most one."""
    size, extra = divmod(len(items), parts)
    shares, start = [], 0
    for part in range(parts):
        end = start + size + (1 if part < extra else 0)
        shares.append(items[start:end])
        start = end
    return shares
