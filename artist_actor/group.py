"""ArtistSamplerGroup: the driver-side owner of M ArtistSamplerActor replicas.

Owns the replicas' placement group (one bundle per replica, SPREAD so replicas land on different GPUs/nodes; or,
colocated, one replica in each bundle of the artist learner),
their Ray names (``artist-sampler-<i>``), fanning work out and back in, and weight sync through the object store
with a deadline (a collective sync is driven by ``rollout.sync.weight_sync``, which starts each replica's
``receive_weights``). Work is balanced by splitting the critiques into M contiguous shares of near-equal size
(each critique costs K edits of the same resolution, so counts balance the work); results come back in input
order. Every wait has a timeout: a stalled replica fails the call loudly instead of hanging the run or serving
stale weights. Each edit's image is a return value of its sampling call of its own (``num_returns``): owned by the
driver process (which never fetches it), it outlives the replica that made it, so a sampler lost after it answered
loses none of the edits still to be re-scored and rewarded.

It must not load models itself or decide what to sample; the controller passes the records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from artist_actor.actor import ArtistSamplerActor
from artist_actor.config import ArtistConfig
from rollout.cluster.recovery import RestartableActors
from rollout.cluster.startup import (SharedBundles, StartupLimits, foreground_runtime_env, wait_for_placement,
                                    wait_until_ready)
from rollout.records.types import Conditioning, Critique, Edit, PhotoTask, RejectedRecord

logger = logging.getLogger(__name__)


class ArtistSamplerGroup:
    """M sampler replicas behind one ``sample`` / ``set_weights`` interface."""

    def __init__(
        self,
        config: ArtistConfig,
        artist_path: str,
        *,
        lora_alpha: float = 64.0,
        lora_targets: Sequence[str] = (),
        sync_timeout_s: float = 120.0,
        sample_timeout_s: float = 3600.0,
        namespace: str | None = None,
        max_restarts: int = 2,
        startup: StartupLimits | None = None,
        shared: SharedBundles | None = None,
    ):
        """``shared``: the artist learner's bundles, one sampler beside each rank on its GPU (colocated); None
        places the samplers in a placement group of their own."""
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.config = config
        self.shared = shared
        self.sync_timeout_s = sync_timeout_s
        self.sample_timeout_s = sample_timeout_s
        self.startup = startup or StartupLimits()
        self.rejected: list[RejectedRecord] = []
        """Every critique the replicas refused so far (the controller counts and logs them)."""
        gpus, bundles = config.gpus_per_sampler, list(range(config.num_samplers))
        if shared is None:
            bundle = {"CPU": config.cpus_per_sampler}
            if config.gpus_per_sampler:
                bundle["GPU"] = config.gpus_per_sampler
            self.placement_group = placement_group([dict(bundle) for _ in bundles], strategy="SPREAD")
            wait_for_placement(self.placement_group, "artist-sampler", self.startup)
        else:
            shared.check("artist-sampler", config.num_samplers)
            self.placement_group, gpus = shared.placement_group, shared.gpus_per_actor
            bundles = list(shared.bundle_indices)
        remote_actor = ray.remote(ArtistSamplerActor)
        self.names = [f"artist-sampler-{index}" for index in range(config.num_samplers)]
        self.actors = [
            remote_actor.options(
                name=self.names[index], namespace=namespace, num_cpus=config.cpus_per_sampler,
                num_gpus=gpus, max_restarts=max_restarts, max_task_retries=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=self.placement_group, placement_group_bundle_index=bundles[index]),
                runtime_env=foreground_runtime_env(),
            ).remote(index, str(artist_path), config.model_dump(), lora_alpha=lora_alpha,
                     lora_targets=list(lora_targets) or None, num_threads=max(1, int(config.cpus_per_sampler)), images_as_refs=True,
                     cpu_fallback=self.startup.cpu_fallback)
            for index in range(config.num_samplers)
        ]
        self.info = wait_until_ready([actor.ready.remote() for actor in self.actors], self.names, self.startup)
        # With object-store sync the last synced adapter stays in the object store so a replica that Ray restarts
        # (on the base model) is brought back to the current version before it samples again; with collective
        # sync ``resync`` (set by the sync's owner) sends the current version to that replica.
        self._version = 0
        self._state_ref = None
        self.resync: Callable[[int], None] | None = None
        """Called with a restarted replica's index to bring it to the current version over the collective."""
        self.recovery = RestartableActors("artist-sampler", self.names, self.actors, limits=self.startup,
                                          max_redos=max(1, max_restarts), restore=self._restore, item_noun="edits")
        """Waits out a lost replica, gives it the current adapter back and redoes its share (counted there)."""

    @property
    def restarts(self) -> int:
        """Replica losses this group recovered from."""
        return self.recovery.restarts

    @property
    def retried_items(self) -> int:
        """Edits re-sampled because the replica making them was lost."""
        return self.recovery.retried_items

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
        per_critique = k or self.config.edits_per_critique

        def call(index: int, share_tasks: list[PhotoTask], share: list[Conditioning]) -> list:
            # Each edit's image is a return value of its own (num_returns), owned by this process: it outlives the
            # replica, which may be lost before the images are re-scored and rewarded.
            return self.actors[index].sample.options(num_returns=1 + len(share) * per_critique).remote(
                share_tasks, share, per_critique, step, True)

        calls: list[dict] = []
        for index, share in enumerate(shares):
            if share:
                share_tasks = [by_task[t] for t in dict.fromkeys(c.task_id for c in share) if t in by_task]
                calls.append({"index": index, "tasks": share_tasks, "share": share,
                              "refs": call(index, share_tasks, share)})
        # The deadline bounds the first attempt; a replica lost on the way is waited for by the recovery.
        self._wait([c["refs"][0] for c in calls], [self.names[c["index"]] for c in calls], self.sample_timeout_s,
                   "sample", collect=False)
        edits: list[Edit] = []
        for sent in calls:
            def redo(sent: dict = sent) -> Any:
                sent["refs"] = call(sent["index"], sent["tasks"], sent["share"])
                return sent["refs"][0]

            result = self.recovery.result(sent["index"], sent["refs"][0], redo, items=len(sent["share"]) * per_critique,
                                          timeout_s=self.sample_timeout_s, check=self._stale_check)
            slot = {(c.task_id, c.critique_index): i * per_critique for i, c in enumerate(sent["share"])}
            for edit in result.edits:
                edit.image = sent["refs"][1 + slot[(edit.task_id, edit.critique_index)] + edit.edit_index]
            edits.extend(result.edits)
            self.rejected.extend(result.rejected)
        return edits

    def _stale_check(self, result: Any) -> str | None:
        stale = [e.artist_version for e in result.edits if e.artist_version != self._version]
        # Ray restarted the replica before this call reached it: it holds the base adapter.
        return f"it served version {stale[0]}, expected {self._version}" if stale else None

    def _restore(self, index: int) -> None:
        """Give a replica that is back after a loss the current adapter (nothing to do when it still serves it:
        it was unreachable, not restarted)."""
        import ray

        actor = self.actors[index]
        if ray.get(actor.policy_version.remote(), timeout=60.0) == self._version:
            return
        if self.resync is not None:
            self.resync(index)
        elif self._state_ref is not None:
            ray.get(actor.set_weights.remote(self._version, self._state_ref), timeout=self.sync_timeout_s)
        logger.info("%s reloaded adapter version %d", self.names[index], self._version)

    def set_weights(self, version: int, lora_state: Mapping[str, Any] | Any) -> None:
        """Every replica serves ``version`` afterwards, or this raises naming the replicas that did not."""
        import ray

        # One copy in the object store, read by every replica (an ObjectRef is passed on as it is, so the adapter
        # goes from the learner to the replicas without passing through this process).
        state_ref = lora_state if isinstance(lora_state, ray.ObjectRef) else ray.put(dict(lora_state))
        refs = [actor.set_weights.remote(version, state_ref) for actor in self.actors]
        self._wait(refs, self.names, self.sync_timeout_s, f"weight sync to version {version}", collect=False)
        for index, ref in enumerate(refs):  # a replica lost during its load gets the adapter again once it is back
            self.recovery.result(index, ref, lambda a=self.actors[index]: a.set_weights.remote(version, state_ref),
                                 items=0, timeout_s=self.sync_timeout_s, restore=False)
        self._version, self._state_ref = version, state_ref
        self.resync = None

    @property
    def version(self) -> int:
        """Policy version every replica serves (set by :meth:`set_weights`, or by the collective sync)."""
        return self._version

    @version.setter
    def version(self, value: int) -> None:
        self._version, self._state_ref = int(value), None

    @property
    def serving_dtype(self) -> str:
        """The replicas' weight dtype (what a sync sends)."""
        return self.info[0]["dtype"]

    @property
    def sync_members(self) -> list[list[dict]]:
        """Where each sampler keeps its weights (a weight sync picks its planes by it); one receiver each."""
        return [info["sync_members"] for info in self.info]

    def policy_versions(self) -> list[int]:
        return self._wait([actor.policy_version.remote() for actor in self.actors], self.names,
                          self.sync_timeout_s, "version query")

    @staticmethod
    def _wait(refs: list, names: list[str], timeout_s: float, what: str, collect: bool = True) -> list:
        """Wait for every call (failing loudly on a stall); return their results unless ``collect`` is False
        (then the caller reads each result itself, recovering a call whose replica was lost)."""
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
        if self.shared is None:  # shared bundles are removed by the role that holds them
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
