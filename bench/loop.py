"""Benchmark of the coordinated loop on the embedded config: per-stage breakdown, orchestration overhead,
and synchronous vs overlapped (``trainer.max_staleness: 1``) step time.

Orchestration overhead = the fraction of a step's wall time (train step + logging) during which no Ray task or
actor method was executing anywhere in the cluster, i.e. time spent only in the controller: scheduling,
serialisation, waiting on transfers, grouping, logging. Actor execution intervals come from Ray's task state
API (start/end times of every task), so nothing in the loop is instrumented specially for this.

    .venv/bin/python bench/loop.py --steps 6
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rollout.config import DEFAULT_CONFIG, load_config  # noqa: E402
from rollout.env import apply_runtime_defaults  # noqa: E402

STAGES = ("data", "critic_rollout", "prepare", "artist_sample", "rescore", "rewards", "update", "sync")


def busy_seconds(intervals: list[tuple[float, float]], start: float, end: float) -> float:
    """Length of the union of ``intervals`` clipped to [start, end]."""
    clipped = sorted((max(a, start), min(b, end)) for a, b in intervals if b > start and a < end)
    total, cursor = 0.0, start
    for a, b in clipped:
        a = max(a, cursor)
        if b > a:
            total += b - a
            cursor = b
    return total


def task_intervals() -> list[tuple[float, float]]:
    import ray
    from ray.util.state import list_tasks

    # This run's own cluster: on a shared machine other Ray clusters make "auto" ambiguous.
    address = ray.get_runtime_context().gcs_address
    tasks = list_tasks(address=address, detail=True, limit=10_000, raise_on_missing_output=False)
    return [(t.start_time_ms / 1000.0, t.end_time_ms / 1000.0) for t in tasks
            if t.start_time_ms and t.end_time_ms and t.type in ("ACTOR_TASK", "NORMAL_TASK")]


def run_loop(staleness: int, steps: int, out_dir: Path) -> tuple[list[dict], list[tuple[float, float]]]:
    from rollout.controller import Controller

    config = load_config(DEFAULT_CONFIG, [f"trainer.steps={steps}", f"trainer.max_staleness={staleness}",
                                          "tracking.sample_grid_every=0", f"trainer.output_dir={out_dir}"])
    name = f"bench-loop-s{staleness}"
    run_dir = out_dir / name
    run_dir.mkdir(parents=True, exist_ok=True)
    controller = Controller(config, run_dir=run_dir, run_name=name)
    controller.start()
    per_step, windows = [], []
    try:
        while controller.step < steps:
            started = time.time()
            metrics = controller.train_step()
            controller.step += 1
            controller._report(metrics)
            windows.append((started, time.time()))
            per_step.append(metrics)
    finally:
        controller.tracker.close("FINISHED")
        controller.shutdown()
    return per_step, windows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="steps per mode (the first is warm-up)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    apply_runtime_defaults()
    import ray

    ray.init(address="local", num_cpus=8, include_dashboard=True, log_to_driver=False)
    out_dir = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    results = {}
    for staleness in (0, 1):
        per_step, windows = run_loop(staleness, args.steps, out_dir)
        time.sleep(2.0)  # task events reach the state API asynchronously
        intervals = task_intervals()
        measured = list(zip(per_step, windows))[1:]  # drop warm-up (engine/JIT first use)
        overheads = [1.0 - busy_seconds(intervals, a, b) / (b - a) for _, (a, b) in measured]
        results[staleness] = {
            "step_s": statistics.mean(b - a for _, (a, b) in measured),
            "overhead": statistics.mean(overheads),
            "stages": {s: statistics.mean(m.get(f"time/stage/{s}_s", 0.0) for m, _ in measured) for s in STAGES},
        }
    ray.shutdown()

    sync, over = results[0], results[1]
    print(f"\nembedded config, {args.steps - 1} measured steps per mode (after 1 warm-up), 2-core CPU\n")
    print(f"{'stage':<16}{'sync s':>10}{'overlap s':>11}")
    for stage in STAGES:
        print(f"{stage:<16}{sync['stages'][stage]:>10.3f}{over['stages'][stage]:>11.3f}")
    print(f"{'step (wall)':<16}{sync['step_s']:>10.3f}{over['step_s']:>11.3f}")
    print(f"\norchestration overhead (no task running anywhere): sync {100 * sync['overhead']:.1f} %, "
          f"overlapped {100 * over['overhead']:.1f} % of step time")
    print(f"overlapped / synchronous step time: {over['step_s'] / sync['step_s']:.3f} "
          f"({'faster' if over['step_s'] < sync['step_s'] else 'slower'})")
    return 0


if __name__ == "__main__":
    from rollout.commands.entry import run_main

    run_main(main, "bench.loop", supervise=True)
