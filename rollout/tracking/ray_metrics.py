"""Ray metrics of a training run (``ray.util.metrics``): what the Ray dashboard and Prometheus see.

Owns the ``photocrafter_*`` counters, gauges and the stage-latency histogram, and the mapping from the
controller's per-step metric dict (keys of docs/metrics.md) to them. Ray exports them on each node's metrics
export port with a ``ray_`` prefix, e.g. ``ray_photocrafter_edits_total{stage=...}``, about 20 s after start.

It must not compute metrics (the controller does) nor talk to MLflow (``rollout.tracking.run_tracker``). Metrics are
created on the driver after ``ray.init``; ``ray.util.metrics`` is imported lazily so importing this module
costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

PREFIX = "photocrafter_"

STAGE_SECONDS_BOUNDARIES: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
"""Histogram buckets of stage latency, in seconds: tiny CPU runs take ~0.01–10 s per stage, real GPU steps
minutes; a stage beyond 30 minutes lands in the +Inf bucket."""

COUNT_KEYS: dict[str, str] = {
    "count/edits": "edits_total",
    "count/critiques": "critiques_total",
    "count/tokens": "tokens_total",
}
"""Controller keys holding this step's counts → the counter each one increments."""

RATE_FALLBACKS: dict[str, tuple[str, str]] = {
    "count/edits": ("perf/edits_per_s", "time/stage/artist_sample_s"),
    "count/tokens": ("perf/tokens_per_s", "time/stage/critic_rollout_s"),
}
"""When a count is not emitted, it is recovered from its rate and the stage time the rate is defined over
(docs/metrics.md: edits_per_s = edits / artist_sample time, tokens_per_s = tokens / critic_rollout time)."""

REJECTED_KEY = "data/rejected"
"""Run total of rejected input records (cumulative, as the controller reports it)."""
REJECTED_PREFIX = "data/rejected/"
"""``data/rejected/<stage>``: run total of records rejected at ``stage`` (cumulative)."""
STAGE_PREFIX, STAGE_SUFFIX = "time/stage/", "_s"
MODELS = ("critic", "artist")


@dataclass(frozen=True, slots=True)
class MetricUpdate:
    """One change to a Ray metric: increment a counter, set a gauge or observe a histogram sample."""

    metric: str
    """Name without the ``photocrafter_`` prefix, e.g. ``edits_total``."""
    kind: Literal["inc", "set", "observe"]
    value: float
    tags: tuple[tuple[str, str], ...] = ()


def _finite(metrics: Mapping[str, float], key: str) -> float | None:
    raw = metrics.get(key)
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _step_count(metrics: Mapping[str, float], key: str) -> float | None:
    count = _finite(metrics, key)
    if count is None and key in RATE_FALLBACKS:
        rate_key, seconds_key = RATE_FALLBACKS[key]
        rate, seconds = _finite(metrics, rate_key), _finite(metrics, seconds_key)
        if rate is not None and seconds is not None:
            count = float(round(rate * seconds))
    return count


def rejected_totals(metrics: Mapping[str, float]) -> dict[str, float]:
    """Run totals of rejected records by stage (``unspecified`` when only ``data/rejected`` is given)."""
    per_stage = {k.removeprefix(REJECTED_PREFIX): v for k in metrics
                 if k.startswith(REJECTED_PREFIX) and (v := _finite(metrics, k)) is not None}
    if per_stage:
        return per_stage
    total = _finite(metrics, REJECTED_KEY)
    return {} if total is None else {"unspecified": total}


def plan_updates(metrics: Mapping[str, float],
                 previous_rejected: Mapping[str, float] | None = None) -> list[MetricUpdate]:
    """The Ray metric updates one step's metric dict implies (missing or non-finite values are skipped).

    ``previous_rejected``: the rejected-record totals of the last recorded step; counters move by the
    difference (counters only move forward, so zero or negative changes are not recorded).
    """
    updates: list[MetricUpdate] = []
    for key, metric in COUNT_KEYS.items():
        value = _step_count(metrics, key)
        if value is not None and value > 0:
            updates.append(MetricUpdate(metric, "inc", value))
    previous_rejected = previous_rejected or {}
    for stage, total in rejected_totals(metrics).items():
        delta = total - previous_rejected.get(stage, 0.0)
        if delta > 0:
            updates.append(MetricUpdate("rejected_records_total", "inc", delta, (("stage", stage),)))
    for model in MODELS:
        reward = _finite(metrics, f"reward/{model}/total/mean")
        if reward is not None:
            updates.append(MetricUpdate("reward_mean", "set", reward, (("model", model),)))
        version = _finite(metrics, f"policy/{model}_version")
        if version is not None:
            updates.append(MetricUpdate("policy_version", "set", version, (("model", model),)))
    for key in metrics:
        if key.startswith(STAGE_PREFIX) and key.endswith(STAGE_SUFFIX):
            seconds = _finite(metrics, key)
            if seconds is not None and seconds >= 0:
                stage = key.removeprefix(STAGE_PREFIX).removesuffix(STAGE_SUFFIX)
                updates.append(MetricUpdate("stage_seconds", "observe", seconds, (("stage", stage),)))
    return updates


class RayMetrics:
    """The run's Ray metrics, created on the driver after ``ray.init``; ``record_step`` once per step.

    Every series carries a ``run`` tag (the run name) so several runs on one cluster stay apart.
    """

    def __init__(self, run_name: str = ""):
        import ray
        from ray.util.metrics import Counter, Gauge, Histogram

        if not ray.is_initialized():
            raise RuntimeError("RayMetrics needs a connected Ray driver: call ray.init() first")
        self.run_name = run_name
        run = ("run",)
        self._metrics = {
            "edits_total": Counter(f"{PREFIX}edits_total", "Artist edits sampled.", run),
            "critiques_total": Counter(f"{PREFIX}critiques_total", "Critic responses generated.", run),
            "tokens_total": Counter(f"{PREFIX}tokens_total", "Critic completion tokens generated.", run),
            "rejected_records_total": Counter(
                f"{PREFIX}rejected_records_total", "Input records rejected, by stage.", run + ("stage",)),
            "reward_mean": Gauge(f"{PREFIX}reward_mean", "Mean reward total of the last step.",
                                 run + ("model",)),
            "policy_version": Gauge(f"{PREFIX}policy_version", "Current policy version.", run + ("model",)),
            "stage_seconds": Histogram(f"{PREFIX}stage_seconds", "Wall time of each stage of a step (s).",
                                       list(STAGE_SECONDS_BOUNDARIES), run + ("stage",)),
        }
        for metric in self._metrics.values():
            metric.set_default_tags({"run": run_name})
        self._rejected_totals: dict[str, float] = {}

    def record_step(self, metrics: Mapping[str, float]) -> int:
        """Apply one step's metric dict to the Ray metrics; returns how many updates were made."""
        updates = plan_updates(metrics, self._rejected_totals)
        self._rejected_totals.update(rejected_totals(metrics))
        for update in updates:
            metric = self._metrics[update.metric]
            tags = dict(update.tags) or None
            if update.kind == "inc":
                metric.inc(update.value, tags=tags)
            elif update.kind == "set":
                metric.set(update.value, tags=tags)
            else:
                metric.observe(update.value, tags=tags)
        return len(updates)
