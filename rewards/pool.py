"""RewardPool: the driver-side owner of N RewardWorker actors and the fan-out of scoring work.

Owns creating the workers (``ray.remote(RewardWorker)``, named ``reward-<i>`` in the run's namespace, one
SPREAD placement-group bundle each, restarted by Ray up to ``max_restarts`` times), splitting requests into
calls (:func:`call_sizes`: few calls per worker, each a batch LPIPS scores at once, so the per-call round trip
is paid rarely), keeping every worker busy, and yielding results in completion order. Per-record failures are
already error results from the worker. A batch whose worker was lost (Ray's memory monitor, a node's loss, a
crash) is redone once the pool has waited for the worker to come back, on whichever worker is free, and counted
(:class:`~rollout.cluster.recovery.RestartableActors`, shared with the rollout and sampler groups); a worker
that is dead for good leaves the pool. A batch that fails otherwise is split and retried record by record, and
records that still fail come back as error results — the caller always gets exactly one result per request and
the pool never raises for one bad record.
It also reports the LPIPS backbone the workers run with, so the run can be tagged. It must not compute
rewards itself or hold images: requests carry ObjectRefs.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from rewards.artist import failed_edit_reward
from rewards.config import RewardsConfig
from rewards.critic import failed_critique_reward
from rewards.perceptual import ALEXNET_WEIGHTS_FILE
from rewards.worker import CritiqueScoringRequest, EditScoringRequest, RewardWorker
from rollout.cluster.recovery import ActorLostForGood, RestartableActors, lost_actor_cause
from rollout.cluster.startup import StartupLimits, foreground_runtime_env, wait_for_placement, wait_until_ready
from rollout.records.types import CritiqueReward, EditReward

logger = logging.getLogger(__name__)

ROLE = "reward"
"""Dashboard name prefix of the workers (``reward-0``, ``reward-1``, …)."""

Request = TypeVar("Request", EditScoringRequest, CritiqueScoringRequest)
Result = TypeVar("Result", EditReward, CritiqueReward)


class RewardPool:
    """N reward workers behind ``score_edits`` / ``score_critiques`` iterators (completion order)."""

    def __init__(self, config: RewardsConfig, *, namespace: str | None = None, max_restarts: int = 3,
                 name_prefix: str = "", startup: StartupLimits | None = None):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.config = config
        startup = startup or StartupLimits()
        bundle: dict[str, float] = {"CPU": config.cpus_per_worker}
        if config.gpus_per_worker > 0:
            bundle["GPU"] = config.gpus_per_worker
        # SPREAD: reward work is CPU-bound and independent, so workers go to as many nodes as possible.
        self.placement_group = placement_group([dict(bundle) for _ in range(config.num_workers)], strategy="SPREAD")
        wait_for_placement(self.placement_group, ROLE, startup)
        remote_cls = ray.remote(RewardWorker)
        names = [f"{name_prefix}{ROLE}-{i}" for i in range(config.num_workers)]
        self.workers = [
            remote_cls.options(
                name=names[i], namespace=namespace, num_cpus=config.cpus_per_worker,
                num_gpus=config.gpus_per_worker, max_restarts=max_restarts, max_task_retries=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement_group,
                                                                     placement_group_bundle_index=i),
                runtime_env=foreground_runtime_env(),
            ).remote(config, index=i, lpips_device=None, cpu_fallback=startup.cpu_fallback,
                     announce_random_backbone=False)
            for i in range(config.num_workers)
        ]
        self.worker_info: list[dict[str, Any]] = wait_until_ready([w.ready.remote() for w in self.workers], names,
                                                                  startup)
        # Ray restarts a lost worker; the pool waits for it and redoes its batch (workers hold no state to restore).
        self.recovery = RestartableActors(ROLE, names, self.workers, limits=startup, max_redos=max(1, max_restarts),
                                          item_noun="records")
        self.backbone_is_random = any(info["backbone_is_random"] for info in self.worker_info)
        """True when LPIPS runs on a random AlexNet trunk: r_perc is then not a perceptual metric."""
        if self.backbone_is_random:
            self._announce_random_backbone()

    def _announce_random_backbone(self) -> None:
        """Once per run: the workers' LPIPS trunk is random, so r_perc is no perceptual distance. A warning,
        unless the config already weights r_perc below its default for that reason (the embedded default
        does: no AlexNet weights ship offline), which gets one note instead."""
        message = (f"LPIPS runs on a random AlexNet backbone (no {ALEXNET_WEIGHTS_FILE} found), so r_perc is not a "
                   f"perceptual distance; it is weighted {self.config.perceptual_weight:g} in r_PA. Set "
                   f"rewards.lpips_weights to the real weights (the MLflow run is tagged rewards.lpips_backbone)")
        if self.config.perceptual_weight < type(self.config).model_fields["perceptual_weight"].default:
            print(f"[photocrafter] note: {message}", file=sys.stderr, flush=True)
        else:
            logger.warning("%s", message)

    def tracking_tags(self) -> dict[str, str]:
        """MLflow run tags describing the reward setup (the controller sets them on the run)."""
        sources = sorted({info["backbone_source"] for info in self.worker_info})
        return {"rewards.lpips_backbone": "random" if self.backbone_is_random else "pretrained",
                "rewards.lpips_backbone_source": ", ".join(sources),
                "rewards.perceptual_weight": f"{self.config.perceptual_weight:g}"}

    def __repr__(self) -> str:
        return f"RewardPool(workers={len(self.workers)}, lpips={'random' if self.backbone_is_random else 'real'})"

    # ------------------------------------------------------------------ scoring

    def score_edits(self, requests: Sequence[EditScoringRequest]) -> Iterator[EditReward]:
        """One :class:`EditReward` per request, yielded as batches finish (match on task/critique/edit ids).

        Work starts at the call; the iterator streams results in completion order."""
        def failed(request: EditScoringRequest, reason: str) -> EditReward:
            return failed_edit_reward(task_id=request.task_id, critique_index=request.critique_index,
                                      edit_index=request.edit_index, reason=reason)
        return self._fan_out("score_edits", requests, failed)

    def score_critiques(self, requests: Sequence[CritiqueScoringRequest]) -> Iterator[CritiqueReward]:
        """One :class:`CritiqueReward` per request, yielded as batches finish."""
        def failed(request: CritiqueScoringRequest, reason: str) -> CritiqueReward:
            return failed_critique_reward(task_id=request.task_id, critique_index=request.critique_index,
                                          reason=reason)
        return self._fan_out("score_critiques", requests, failed)

    @property
    def restarts(self) -> int:
        """Worker losses the pool recovered from."""
        return self.recovery.restarts

    @property
    def retried_items(self) -> int:
        """Records scored again because the worker scoring them was lost."""
        return self.recovery.retried_items

    def _fan_out(self, method: str, requests: Sequence[Request],
                 failed: Callable[[Request, str], Result]) -> Iterator[Result]:
        import ray

        limit = self.config.max_inflight_per_worker
        sizes = call_sizes(len(requests), len(self.workers), limit, self.config.batch_size)
        pending: list[list[Request]] = []
        start = 0
        for size in sizes:
            pending.append(list(requests[start:start + size]))
            start += size
        pending.reverse()  # pop() from the end keeps submission in request order
        load = [0] * len(self.workers)
        gone: set[int] = set()  # workers Ray will not bring back
        redos: dict[int, int] = {}  # batch id -> times it was redone after a worker loss
        inflight: dict[Any, tuple[int, list[Request]]] = {}

        def submit() -> None:
            while pending:
                alive = [w for w in range(len(self.workers)) if w not in gone]
                if not alive:
                    return
                worker = min(alive, key=load.__getitem__)
                if load[worker] >= limit:
                    return
                batch = pending.pop()
                inflight[self.recovery.submit(worker, method, batch)] = (worker, batch)
                load[worker] += 1

        def recover(worker: int, cause: BaseException | str, redo: int = 0) -> None:
            """Wait for a restarted worker; one that will not come back leaves the pool."""
            try:
                self.recovery.recover(worker, cause, redo=redo, restore=False)
            except (ActorLostForGood, TimeoutError) as exc:
                gone.add(worker)
                logger.warning("%s leaves the pool: %s", self.recovery.names[worker], exc)

        def lost(worker: int, batch: list[Request], cause: BaseException) -> list[Result]:
            """Wait for the lost worker and queue its batch again; error results once it was redone too often
            or no worker is left."""
            recover(worker, cause, redo=len(batch))
            redos[id(batch)] = redos.get(id(batch), 0) + 1
            if redos[id(batch)] > self.recovery.max_redos or len(gone) == len(self.workers):
                reason = f"reward worker {self.recovery.names[worker]} was lost ({cause})".splitlines()[0]
                return [failed(request, reason) for request in batch]
            pending.append(batch)
            return []

        def drain() -> Iterator[Result]:
            # A restart no call noticed (the worker was idle when it was lost) is still told and counted. Asking
            # Ray's control store costs a round trip per worker (~1 ms here, as long as a few 64 px edits), so it is
            # asked once the first calls are on their way, not before any work starts. Waiting for such a worker
            # to answer then lasts until its queued calls are done: a rare loss pays that, not every call. A call
            # that reached the worker while it restarted fails and is redone below, counted with the same restart.
            for worker in range(len(self.workers)):
                if self.recovery.restarted_unseen(worker):
                    recover(worker, "it was restarted between calls")
            while inflight:
                (ref,), _ = ray.wait(list(inflight), num_returns=1)
                worker, batch = inflight.pop(ref)
                load[worker] -= 1
                try:
                    results = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a lost batch must not end the caller's iteration
                    cause = lost_actor_cause(exc)
                    if cause is not None:
                        results = lost(worker, batch, cause)
                        submit()
                        yield from results
                        continue
                    reason = f"reward worker {ROLE}-{worker} failed: {type(exc).__name__}: {exc}".splitlines()[0]
                    if len(batch) > 1:
                        logger.warning("%s; retrying its %d records one by one", reason, len(batch))
                        pending.extend([[request] for request in reversed(batch)])
                        submit()
                        continue
                    logger.warning("%s; record %s gets an error result", reason, batch[0].task_id)
                    results = [failed(batch[0], reason)]
                submit()
                yield from results
            for batch in reversed(pending):  # only when every worker left the pool
                yield from (failed(request, "no reward worker is left in the pool") for request in batch)
            pending.clear()

        # The first batches are submitted now, not at the first next(): scoring edits and critiques can be
        # requested back to back and run together while the caller consumes either iterator.
        submit()
        return drain()

    # ------------------------------------------------------------------ lifecycle

    def shutdown(self) -> None:
        """Kill the workers and release their placement group."""
        import ray
        from ray.util.placement_group import remove_placement_group

        for worker in self.workers:
            ray.kill(worker, no_restart=True)
        self.workers = []
        remove_placement_group(self.placement_group)

    def __enter__(self) -> "RewardPool":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()


def call_sizes(count: int, workers: int, inflight: int, min_size: int) -> list[int]:
    """Sizes of the calls ``count`` records are cut into for ``workers`` workers with ``inflight`` calls each in
    flight: one call per slot, so each worker gets few large calls (the per-call round trip is then paid rarely, and
    LPIPS scores a whole call as one batch), but no call smaller than ``min_size`` records (``rewards.batch_size``)
    unless that would leave a worker idle; sizes differ by at most one."""
    if count <= 0:
        return []
    calls = min(count, max(workers, min(workers * inflight, count // max(1, min_size))))
    base, extra = divmod(count, calls)
    return [base + (1 if i < extra else 0) for i in range(calls)]
