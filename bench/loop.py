"""Benchmark of the coordinated loop on the embedded config: per-stage breakdown, orchestration overhead,
synchronous vs overlapped (``trainer.max_staleness: 1``) step time, and disaggregated vs colocated placement
(``placement.critic`` / ``placement.artist: colocated``: each learner rank shares its bundle with a replica or
sampler and they take turns, synchronous loop) with the seconds its changes of turn cost.

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


MODES = {
    "synchronous": ["trainer.max_staleness=0"],
    "overlapped": ["trainer.max_staleness=1"],
    "colocated": ["trainer.max_staleness=0", "placement.critic=colocated", "placement.artist=colocated"],
}
"""The loops compared: every role on its own resources (synchronous, overlapped) and both models colocated."""


def run_loop(mode: str, steps: int, out_dir: Path) -> tuple[list[dict], list[tuple[float, float]]]:
    from rollout.controller import Controller

    config = load_config(DEFAULT_CONFIG, [f"trainer.steps={steps}", *MODES[mode],
                                          "tracking.sample_grid_every=0", f"trainer.output_dir={out_dir}"])
    name = f"bench-loop-{mode}"
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
    for mode in MODES:
        per_step, windows = run_loop(mode, args.steps, out_dir)
        time.sleep(2.0)  # task events reach the state API asynchronously
        intervals = task_intervals()
        measured = list(zip(per_step, windows))[1:]  # drop warm-up (engine/JIT first use)
        overheads = [1.0 - busy_seconds(intervals, a, b) / (b - a) for _, (a, b) in measured]
        results[mode] = {
            "step_s": statistics.mean(b - a for _, (a, b) in measured),
            "overhead": statistics.mean(overheads),
            "stages": {s: statistics.mean(m.get(f"time/stage/{s}_s", 0.0) for m, _ in measured) for s in STAGES},
            "switch_s": statistics.mean(sum(v for k, v in m.items() if k.endswith("/switch_s")) for m, _ in measured),
            "released_mb": {k.removeprefix("colocation/"): statistics.mean(m.get(k, 0.0) for m, _ in measured)
                            for k in measured[0][0] if k.endswith("_released_mb")},
        }
    ray.shutdown()

    print(f"\nembedded config, {args.steps - 1} measured steps per mode (after 1 warm-up), 2-core CPU\n")
    print(f"{'stage':<16}" + "".join(f"{mode + ' s':>16}" for mode in MODES))
    for stage in STAGES:
        print(f"{stage:<16}" + "".join(f"{results[mode]['stages'][stage]:>16.3f}" for mode in MODES))
    print(f"{'changes of turn':<16}" + "".join(f"{results[mode]['switch_s']:>16.3f}" for mode in MODES))
    print(f"{'step (wall)':<16}" + "".join(f"{results[mode]['step_s']:>16.3f}" for mode in MODES))
    print("\norchestration overhead (no task running anywhere): " + ", ".join(
        f"{mode} {100 * results[mode]['overhead']:.1f} %" for mode in MODES) + " of step time")
    sync, over, coloc = (results[mode] for mode in MODES)
    print(f"overlapped / synchronous step time: {over['step_s'] / sync['step_s']:.3f} "
          f"({'faster' if over['step_s'] < sync['step_s'] else 'slower'})")
    print(f"colocated / disaggregated (synchronous) step time: {coloc['step_s'] / sync['step_s']:.3f} "
          f"({'faster' if coloc['step_s'] < sync['step_s'] else 'slower'})")
    print("memory given back per release, mean (MiB of resident set): " + ", ".join(
        f"{key} {value:.1f}" for key, value in sorted(coloc["released_mb"].items())))
    return 0


if __name__ == "__main__":
    from rollout.commands.entry import run_main

    run_main(main, "bench.loop", supervise=True)
