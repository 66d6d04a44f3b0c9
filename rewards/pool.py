"""RewardPool: the driver-side owner of N RewardWorker actors and the fan-out of scoring work.

Owns creating the workers (``ray.remote(RewardWorker)``, named ``reward-<i>`` in the run's namespace, one
SPREAD placement-group bundle each, restarted by Ray up to ``max_restarts`` times), splitting requests into
batches, keeping every worker busy, and yielding results in completion order. Per-record failures are
already error results from the worker; here a whole batch that is lost (the worker died beyond its
retries) is split and retried record by record, and records that still fail come back as error results —
the caller always gets exactly one result per request and the pool never raises for one bad record.
It also reports the LPIPS backbone the workers run with, so the run can be tagged. It must not compute
rewards itself or hold images: requests carry ObjectRefs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from rewards.artist import failed_edit_reward
from rewards.config import RewardsConfig
from rewards.critic import failed_critique_reward
from rewards.worker import CritiqueScoringRequest, EditScoringRequest, RewardWorker
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
                num_gpus=config.gpus_per_worker, max_restarts=max_restarts, max_task_retries=max_restarts,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement_group,
                                                                     placement_group_bundle_index=i),
                runtime_env=foreground_runtime_env(),
            ).remote(config, index=i, lpips_device=None, cpu_fallback=startup.cpu_fallback)
            for i in range(config.num_workers)
        ]
        self.worker_info: list[dict[str, Any]] = wait_until_ready([w.ready.remote() for w in self.workers], names,
                                                                  startup)
        self.backbone_is_random = any(info["backbone_is_random"] for info in self.worker_info)
        """True when LPIPS runs on a random AlexNet trunk: r_perc is then not a perceptual metric."""
        if self.backbone_is_random:
            logger.warning("reward pool: LPIPS backbone is RANDOM (no AlexNet weights found); r_perc is weighted "
                           "%.3g in r_PA — tag: %s", config.perceptual_weight, self.tracking_tags())

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

    def _fan_out(self, method: str, requests: Sequence[Request],
                 failed: Callable[[Request, str], Result]) -> Iterator[Result]:
        import ray

        size = self.config.batch_size
        pending: list[list[Request]] = [list(requests[i:i + size]) for i in range(0, len(requests), size)]
        pending.reverse()  # pop() from the end keeps submission in request order
        load = [0] * len(self.workers)
        lost: set[int] = set()  # workers whose batch failed even after Ray's restarts and retries
        inflight: dict[Any, tuple[int, list[Request]]] = {}
        limit = self.config.max_inflight_per_worker

        def submit() -> None:
            while pending:
                alive = [w for w in range(len(self.workers)) if w not in lost]
                worker = min(alive or range(len(self.workers)), key=load.__getitem__)
                if load[worker] >= limit:
                    return
                batch = pending.pop()
                ref = getattr(self.workers[worker], method).remote(batch)
                inflight[ref] = (worker, batch)
                load[worker] += 1

        def drain() -> Iterator[Result]:
            while inflight:
                (ref,), _ = ray.wait(list(inflight), num_returns=1)
                worker, batch = inflight.pop(ref)
                load[worker] -= 1
                try:
                    results = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a lost batch must not end the caller's iteration
                    reason = f"reward worker {ROLE}-{worker} failed: {type(exc).__name__}: {exc}".splitlines()[0]
                    if isinstance(exc, ray.exceptions.RayActorError):
                        lost.add(worker)
                    if len(batch) > 1:
                        logger.warning("%s; retrying its %d records one by one", reason, len(batch))
                        pending.extend([[request] for request in reversed(batch)])
                        submit()
                        continue
                    logger.warning("%s; record %s gets an error result", reason, batch[0].task_id)
                    results = [failed(batch[0], reason)]
                submit()
                yield from results

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
