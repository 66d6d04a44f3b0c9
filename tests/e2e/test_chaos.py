"""A chaos run: the embedded loop trained while actors of every role are killed at random moments.

``python -m bench.chaos`` carries out one seeded schedule (see bench/chaos.py): a critic rollout replica, an
artist sampler and a reward worker killed mid-step, one of them killed again while Ray restarts it, a worker
killed by Ray's memory monitor after an actor allocated past its threshold, a learner rank killed while a weight
sync sends, then — after resuming — the driver killed between two checkpoints, and a second resume. Against an
uninterrupted run of the same config: the run stops with its checkpoint when the learner is lost, the resumes
finish it, every photo is consumed exactly once, no critique, edit or reward is lost or counted twice, and the
final weights of both learners are the uninterrupted run's (every piece of work is seeded by what it is, not by
the actor or the attempt that did it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rollout.config import PROJECT_ROOT

pytestmark = pytest.mark.slow
SEED, STEPS = 3, 5


@pytest.fixture(scope="module")
def chaos(tmp_path_factory):
    out = tmp_path_factory.mktemp("chaos")
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    result = subprocess.run([sys.executable, "-m", "bench.chaos", "--runs", "1", "--steps", str(STEPS), "--seed",
                             str(SEED), "--compare", "--out", str(out), "--json", str(out / "report.json"),
                             "--segment-timeout", "600"],
                            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=1800)
    report = json.loads((out / "report.json").read_text())[0] if (out / "report.json").is_file() else {}
    log = (out / f"chaos-{SEED}.log").read_text() if (out / f"chaos-{SEED}.log").is_file() else ""
    print(result.stdout)
    assert report, result.stdout[-3000:] + result.stderr[-3000:]
    return report, log, result


def test_a_lost_learner_rank_stops_the_run_with_its_checkpoint_and_resuming_finishes_it(chaos):
    report, log, _ = chaos
    first, *rest = report["segments"]
    assert first["command"] == "train" and first["status"] == 1
    assert report["learner_loss_stopped_with_checkpoint"], log[-4000:]
    assert "died during the" in log and "weight sync to version" in log  # killed while the sync was sending
    assert report["driver_killed_between_checkpoints"]
    assert report["completed"] and rest[-1]["command"] == "resume" and rest[-1]["status"] == 0


def test_every_role_was_killed_and_every_restart_was_recovered(chaos):
    report, log, _ = chaos
    assert report["kill_errors"] == [], report["kill_errors"]
    kills = report["kills"]
    assert kills["kill"] >= 3 and kills["kill_during_restart"] == 1 and kills["learner_mid_sync"] == 1, kills
    assert all(count >= 1 for count in report["restarts_by_role"].values()), report["restarts_by_role"]
    assert report["retried_items"] > 0
    if report["segments"][0]["memory_monitor"]["threshold_bytes"] is not None:
        assert report["memory_monitor_victims"], "the memory monitor killed no worker"
    assert "was lost (" in log and "is back" in log  # one line per recovered loss


def test_every_photo_was_consumed_once_and_no_item_was_lost_or_counted_twice(chaos):
    report, _, _ = chaos
    assert report["steps_done"] and report["photos_consumed_once"]
    assert report["redone_steps_took_other_photos"] == []
    assert report["items_lost"] == 0 and report["items_duplicated"] == 0


def test_final_weights_equal_an_uninterrupted_runs(chaos):
    report, _, _ = chaos
    weights = report["weights"]
    assert weights["step"] == STEPS
    assert weights["equal"], weights["max_abs_diff"]
