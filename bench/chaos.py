"""Chaos runs: the embedded loop trained while actors of every role are killed at random moments.

One run is one seeded schedule carried out over up to three driver processes (``bench/chaos_driver.py``: the real
``photocrafter train`` / ``resume``, each on its own local Ray cluster with Ray's memory monitor armed):

1. ``train``: a critic rollout replica, an artist sampler and a reward worker are each killed (SIGKILL) a random
   delay into a random step; one of them is killed again while Ray is restarting it; one actor allocates memory
   until Ray's memory monitor kills a worker; then a rank of one learner is killed while a weight sync sends its
   shards. The run must stop with the newest checkpoint named and a resume command (exit status 1).
2. ``resume``: more replica kills; the driver itself is killed (SIGKILL) a random moment after a checkpoint is
   written and before the next.
3. ``resume``: more replica kills on longer schedules; the run must finish (exit status 0).

Each restartable role is killed once per three steps a driver covers (at least once per driver).

Then, from the steps' ledger: every training photo consumed exactly once in the run's history (one epoch), every
step's critiques, edits and rewards delivered once each (items lost = expected − delivered, must be 0); restarts
by role and memory-monitor kills from the run's ``faults/*`` counters; with ``--compare``, the final learner
weights against an uninterrupted run of the same config (max |Δ| per learner). They match to float rounding
because every piece of work is seeded by what it is (step, photo, critique, edit), never by the actor or the
attempt that did it, and a resumed run continues from the checkpoint's exact state (as tests/e2e/test_train_cli.py
checks).

    python -m bench.chaos --runs 5 [--steps 6] [--seed 0] [--compare] [--json out.json] [--out DIR]

Prints one line per run and a summary: runs completed / runs, restarts by role, memory kills, items lost.
Exit status 0 when every run completed with 0 items lost (and, with ``--compare``, weights within tolerance).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BATCH, GROUP, EDITS = 2, 2, 2
CHECKPOINT_EVERY = 2
WEIGHT_TOLERANCE = 1e-4
"""Largest |Δ| allowed between a chaos run's final weights and an uninterrupted run's (float rounding)."""

# Small and fast: one actor per restartable role, one rank per learner, 32-px edits. The critic replicas use the
# transformers engine by default (``--engine vllm`` for vLLM): recovery does not depend on the engine, and a vLLM
# replica's restart takes far longer on a two-core machine.
BASE = ["critic.num_replicas=1", f"critic.group_size={GROUP}", "artist.num_samplers=1",
        f"artist.edits_per_critique={EDITS}", "artist.resolution=32", "rewards.num_workers=1",
        f"trainer.batch_size={BATCH}", f"trainer.checkpoint_every={CHECKPOINT_EVERY}", "trainer.init_from=",
        "data.num_eval=2", "tracking.sample_grid_every=0", "cluster.actor_max_restarts=20",
        "cluster.num_cpus=6", "trainer.sync_timeout_s=60",
        # 4 vision tokens per photo (56 px): recovery does not depend on how much of the photo the critic sees.
        "critic.min_pixels=3136", "critic.max_pixels=3136"]


def overrides(steps: int, out: Path, name: str, engine: str) -> list[str]:
    # One epoch exactly: every photo is consumed once in the run's history.
    return [*BASE, f"critic.engine={engine}", f"trainer.steps={steps}", f"data.num_train={steps * BATCH}",
            f"trainer.output_dir={out}", f"trainer.run_name={name}", f"tracking.mlflow_uri=sqlite:///{out}/mlflow.db"]


def schedule(seed: int, steps: int) -> list[dict]:
    """The three segments' plans of one run: which kills at which step, with which delay."""
    rng = random.Random(seed)
    roles = ["critic_rollout", "artist_sampler", "reward"]
    learner_step = rng.choice([CHECKPOINT_EVERY + 1, 2 * CHECKPOINT_EVERY])  # the newest checkpoint: step 2

    def kills(first: int, last: int) -> list[dict]:
        """Each role killed once per three steps of [first, last] (at least once), at random steps and delays."""
        rounds = max(1, (last - first + 1) // 3)
        return [{"kind": "kill", "role": role, "step": rng.randint(first, last), "delay_s": rng.uniform(0.0, 3.0)}
                for role in roles for _ in range(rounds)]

    first = [*kills(1, learner_step - 1),
             {"kind": "kill_during_restart", "role": rng.choice(roles), "step": rng.randint(1, learner_step - 1),
              "delay_s": rng.uniform(0.0, 2.0)},
             {"kind": "memory", "role": rng.choice(roles), "step": rng.randint(1, learner_step - 1),
              "delay_s": rng.uniform(0.0, 2.0)},
             {"kind": "learner_mid_sync", "role": rng.choice(["critic_learner", "artist_learner"]),
              "step": learner_step, "delay_s": rng.uniform(0.0, 0.05)}]
    # The driver dies after the checkpoint that follows the resumed steps, before the next one.
    driver_after = 2 * CHECKPOINT_EVERY if steps > 2 * CHECKPOINT_EVERY else None
    second = kills(CHECKPOINT_EVERY + 1, max(CHECKPOINT_EVERY + 1, (driver_after or steps)))
    return [{"segment": 1, "command": "train", "seed": seed, "events": first},
            {"segment": 2, "command": "resume", "seed": seed + 1, "events": second,
             "kill_driver_after_checkpoint": driver_after, "driver_delay_s": rng.uniform(0.3, 2.0)},
            {"segment": 3, "command": "resume", "seed": seed + 2,
             "events": kills(driver_after + 1, steps) if driver_after and steps > driver_after + 1 else []}]


def drive(plan: dict, out: Path, log: Path, timeout_s: float) -> dict:
    """Run one segment's driver; kill it when its plan says so. Returns its exit status and duration."""
    plan_path = out / f"plan-{plan['segment']}.json"
    plan_path.write_text(json.dumps(plan))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    with open(log, "a") as console:
        console.write(f"\n===== segment {plan['segment']}: {plan['command']} =====\n")
        console.flush()
        process = subprocess.Popen([sys.executable, "-m", "bench.chaos_driver", "--plan", str(plan_path)],
                                   cwd=ROOT, env=env, stdout=console, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        killed_at = None
        after = plan.get("kill_driver_after_checkpoint")
        checkpoint = Path(plan["run_dir"]) / "checkpoints" / f"step_{after:08d}" if after else None
        while process.poll() is None:
            if time.monotonic() - started > timeout_s:
                _kill_session(process)
                raise TimeoutError(f"segment {plan['segment']} did not end within {timeout_s:.0f} s (see {log})")
            if checkpoint is not None and killed_at is None and (checkpoint / "manifest.json").is_file():
                time.sleep(plan["driver_delay_s"])
                if process.poll() is None:
                    os.kill(process.pid, signal.SIGKILL)  # the driver alone, as a lost driver process
                    killed_at = time.monotonic() - started
            time.sleep(0.1)
        _kill_session(process)  # the local cluster the killed driver started, if anything of it is left
    memory = plan_path.with_suffix(".memory.json")
    return {"segment": plan["segment"], "command": plan["command"], "status": process.returncode,
            "seconds": round(time.monotonic() - started, 1), "driver_killed": killed_at is not None,
            "memory_monitor": json.loads(memory.read_text()) if memory.is_file() else None}


def _kill_session(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def analyse(run_dir: Path, steps: int) -> dict:
    """What the run's history says: photos consumed, items delivered and lost, restarts by role."""
    ledger = [json.loads(line) for line in (run_dir / "chaos" / "ledger.jsonl").read_text().splitlines()]
    events = [json.loads(line) for line in (run_dir / "chaos" / "events.jsonl").read_text().splitlines()] \
        if (run_dir / "chaos" / "events.jsonl").is_file() else []
    final = {row["step"]: row for row in ledger}  # the last attempt of each step is the run's history
    redone_differently = [row["step"] for row in ledger if row["tasks"] != final[row["step"]]["tasks"]]
    consumed = Counter(task for row in final.values() for task in row["tasks"])
    expected_critiques, expected_edits = BATCH * GROUP, BATCH * GROUP * EDITS
    lost = duplicated = 0
    for row in final.values():
        delivered_edits = row["edits"] + EDITS * row["rejected_critiques"]
        lost += max(0, expected_critiques - row["critiques"]) + max(0, expected_edits - delivered_edits)
        lost += row["lost_edit_rewards"] + row["lost_critique_rewards"] + (row["edits"] - row["edit_rewards"])
        duplicated += (row["critiques"] - row["critique_keys"]) + (row["edits"] - row["edit_keys"])
    faults: Counter = Counter()
    for segment in sorted({row["segment"] for row in ledger}):  # counters restart with each driver
        last = [row for row in ledger if row["segment"] == segment][-1]["faults"]
        faults.update({key: int(value) for key, value in last.items()})
    return {
        "steps_done": sorted(final) == list(range(1, steps + 1)),
        "photos_consumed_once": len(consumed) == steps * BATCH and set(consumed.values()) == {1},
        "redone_steps_took_other_photos": redone_differently,
        "items_expected": steps * (expected_critiques + expected_edits) * 2,
        "items_lost": lost, "items_duplicated": duplicated,
        "restarts_by_role": {role: faults.get(f"faults/restarts/{role}", 0)
                             for role in ("critic_rollout", "artist_sampler", "reward")},
        "memory_kills": faults.get("faults/memory_kills", 0),
        "retried_items": faults.get("faults/retried_items", 0),
        "kills": Counter(event["kind"] for event in events if event.get("killed")),
        "memory_monitor_victims": [victim for event in events if event["kind"] == "memory"
                                   for victim in event.get("victims", [])],
        "kill_errors": [event for event in events if "error" in event or "skipped" in event],
    }


def learner_weights(checkpoint: Path) -> dict[str, dict]:
    """Every learner's weights in a checkpoint, section by section (the critic's ``model``; the artist's
    ``adapters`` and ``ema``), without the optimizer state; read without running code from the checkpoint."""
    import warnings

    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    from learner.checkpoint_reader import safe_reader

    weights = {}
    for learner in ("critic_learner", "artist_learner"):
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            state = _load_state_dict_from_keys(storage_reader=safe_reader(checkpoint / learner))
        weights[learner] = {f"{section}.{name}": tensor for section, tensors in state.items()
                            if section != "optimizer" for name, tensor in tensors.items()}
    return weights


def compare_weights(run_dir: Path, reference_dir: Path) -> dict:
    from rollout.checkpoint import latest_checkpoint

    mine, theirs = latest_checkpoint(run_dir), latest_checkpoint(reference_dir)
    a, b = learner_weights(mine.path), learner_weights(theirs.path)
    diffs = {}
    for learner in a:
        keys = set(a[learner]) | set(b[learner])
        missing = [k for k in keys if k not in a[learner] or k not in b[learner]]
        diffs[learner] = float("inf") if missing else max(
            float((a[learner][k].float() - b[learner][k].float()).abs().max()) for k in keys)
    return {"max_abs_diff": diffs, "tolerance": WEIGHT_TOLERANCE,
            "equal": all(d <= WEIGHT_TOLERANCE for d in diffs.values()), "step": mine.step}


def chaos_run(seed: int, steps: int, out: Path, engine: str, timeout_s: float) -> dict:
    name = f"chaos-{seed}"
    run_dir = out / name
    log = out / f"{name}.log"
    segments = []
    for plan in schedule(seed, steps):
        plan.update(run_dir=str(run_dir), overrides=overrides(steps, out, name, engine) if plan["segment"] == 1
                    else [f"trainer.steps={steps}"])
        segments.append(drive(plan, out, log, timeout_s))
        if segments[-1]["status"] == 0:
            break
    console = log.read_text()
    first = segments[0]
    report = {"seed": seed, "segments": segments,
              "completed": segments[-1]["status"] == 0,
              "learner_loss_stopped_with_checkpoint": first["status"] == 1 and "was lost during" in console
              and "photocrafter resume --run" in console and "the newest complete checkpoint is" in console,
              "driver_killed_between_checkpoints": any(s["driver_killed"] for s in segments),
              "tracebacks": console.count("Traceback (most recent call last)"), "log": str(log)}
    if (run_dir / "chaos" / "ledger.jsonl").is_file():
        report.update(analyse(run_dir, steps))
    return report


def reference_run(steps: int, out: Path, engine: str, timeout_s: float) -> Path:
    """The same config trained without interruption (no kills, no memory monitor)."""
    plan = {"segment": 0, "command": "train", "seed": 0, "events": [], "memory_budget_gib": 1e9,
            "run_dir": str(out / "reference"), "overrides": overrides(steps, out, "reference", engine)}
    result = drive(plan, out, out / "reference.log", timeout_s)
    if result["status"] != 0:
        raise RuntimeError(f"the uninterrupted reference run failed (status {result['status']}, see "
                           f"{out / 'reference.log'})")
    return out / "reference"


def passed(report: dict, compare: bool) -> bool:
    return (report["completed"] and report.get("items_lost", 1) == 0 and report.get("items_duplicated", 1) == 0
            and report.get("photos_consumed_once", False) and (not compare or report["weights"]["equal"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8, help="steps per run (one epoch of the training set)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first run's schedule (then +10 per run)")
    parser.add_argument("--engine", choices=("transformers", "vllm"), default="transformers")
    parser.add_argument("--compare", action="store_true", help="compare final weights with an uninterrupted run")
    parser.add_argument("--out", help="directory for the runs (default: a fresh temporary one, removed at the end)")
    parser.add_argument("--segment-timeout", type=float, default=900.0, help="seconds one driver may take")
    parser.add_argument("--json", metavar="FILE", help="also write the reports as JSON")
    args = parser.parse_args(argv)
    if args.steps < 2 * CHECKPOINT_EVERY + 1:
        parser.error(f"--steps must be at least {2 * CHECKPOINT_EVERY + 1}: the schedule loses a learner after "
                     f"step {CHECKPOINT_EVERY} and the driver after step {2 * CHECKPOINT_EVERY}")
    import tempfile

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="chaos-"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    reference = reference_run(args.steps, out, args.engine, args.segment_timeout) if args.compare else None
    reports = []
    for run in range(args.runs):
        report = chaos_run(args.seed + 10 * run, args.steps, out, args.engine, args.segment_timeout)
        if reference is not None and report["completed"]:
            report["weights"] = compare_weights(out / f"chaos-{report['seed']}", reference)
        reports.append(report)
        weights = report.get("weights", {}).get("max_abs_diff")
        print(f"run {run + 1}/{args.runs} seed {report['seed']}: "
              f"{'completed' if report['completed'] else 'FAILED'} over {len(report['segments'])} driver(s) "
              f"({'; '.join(_segment_line(s) for s in report['segments'])}); "
              f"restarts {report.get('restarts_by_role')}, "
              f"memory kills {report.get('memory_kills')}, items lost {report.get('items_lost')}, duplicated "
              f"{report.get('items_duplicated')}, photos once {report.get('photos_consumed_once')}"
              + (f", final weights max |Δ| {weights}" if weights else ""), flush=True)
    survived = sum(passed(r, args.compare) for r in reports)
    restarts: Counter = Counter()
    for report in reports:
        restarts.update(report.get("restarts_by_role", {}))
    print(f"\nchaos: {survived}/{len(reports)} runs completed (resumed where a learner or the driver was lost) with 0 "
          f"items lost; restarts by role {dict(restarts)}; memory-monitor kills "
          f"{sum(r.get('memory_kills', 0) for r in reports)}; items lost {sum(r.get('items_lost', 0) for r in reports)}"
          f"; {time.monotonic() - started:.0f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=1, default=str))
    if survived != len(reports):
        print(f"bench.chaos: {len(reports) - survived} run(s) did not complete cleanly; their logs are under {out}",
              file=sys.stderr)
        return 1
    if not args.out:
        shutil.rmtree(out, ignore_errors=True)
    return 0


def _segment_line(segment: dict) -> str:
    how = "driver killed" if segment["driver_killed"] else f"exit {segment['status']}"
    return f"{segment['command']} {how} after {segment['seconds']:.0f} s"


if __name__ == "__main__":
    from rollout.commands.entry import run_main

    run_main(main, "bench.chaos", supervise=True)
