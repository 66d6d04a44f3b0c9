"""The console step line and the progress bar over steps."""

from __future__ import annotations

import io

from rollout.tracking.report import StepProgress, format_step_line

FULL = {
    "reward/artist/total/mean": 0.4123, "groups/artist/reward_std_mean": 0.0834, "reward/critic/total/mean": 0.25, "learner/grpo/kl": 0.00123,
    "learner/grpo/loss": -0.0131, "learner/nft/loss": 0.9712, "time/stage/step_s": 12.34,
    "time/stage/critic_rollout_s": 4.1, "time/stage/prepare_s": 0.6, "time/stage/artist_sample_s": 3.2,
    "time/stage/rewards_s": 1.1, "time/stage/critic_update_s": 1.4, "time/stage/artist_update_s": 1.5,
    "time/stage/sync_s": 0.4, "perf/edits_per_s": 5.21, "perf/tokens_per_s": 310.4,
    "skipped/nonfinite_steps": 0.0,
}


def test_full_line_shows_every_group_in_order():
    line = format_step_line(3, 5, FULL)
    assert line == ("step 3/5 | r_artist 0.412 σ_group 0.083 r_critic 0.250 | kl 0.0012 | L_grpo -0.013 L_nft 0.971 | "
                    "t 12.3s (crit 4.1 prep 0.6 art 3.2 rew 1.1 upd_c 1.4 upd_a 1.5 sync 0.4) | "
                    "5.2 edits/s 310 tok/s")
    assert "\n" not in line


def test_missing_keys_are_skipped_not_errors():
    assert format_step_line(1, 10, {}) == "step 1/10"
    line = format_step_line(2, 10, {"reward/artist/total/mean": 0.5, "time/stage/sync_s": 0.25,
                                    "unrelated/key": 3.0, "learner/nft/loss": None})
    assert line == "step 2/10 | r_artist 0.500 | t (sync 0.2)"


def test_nonfinite_values_and_trouble_counters_are_visible():
    line = format_step_line(4, 5, {"learner/nft/loss": float("nan"), "skipped/nonfinite_steps": 1.0,
                                   "data/rejected": 3.0, "faults/actor_restarts": 0.0})
    assert "L_nft nan" in line
    assert line.endswith("! skipped 1 rejected 3")


def test_progress_prints_one_line_per_step_without_a_terminal():
    stream = io.StringIO()
    with StepProgress(3, stream=stream) as progress:
        for step in (1, 2, 3):
            progress.step_done(step, {"reward/critic/total/mean": step / 10})
    lines = stream.getvalue().splitlines()
    assert lines == ["step 1/3 | r_critic 0.100", "step 2/3 | r_critic 0.200", "step 3/3 | r_critic 0.300"]


def test_progress_bar_advances_to_the_reported_step_when_enabled():
    stream = io.StringIO()
    progress = StepProgress(10, initial=4, stream=stream, enabled=True)
    progress.step_done(6, {})
    assert progress._bar.n == 6
    progress.close()
    out = stream.getvalue()
    assert "step 6/10" in out and "6/10" in out.rsplit("step 6/10", 1)[1]


def test_stage_times_follow_the_order_of_a_step():
    line = format_step_line(1, 1, {"time/stage/sync_s": 0.1, "time/stage/update_s": 2.0,
                                   "time/stage/rewards_s": 0.5, "time/stage/rescore_s": 0.3,
                                   "time/stage/data_s": 0.06, "time/stage/step_s": 3.0})
    assert line == "step 1/1 | t 3.0s (data 0.1 rescore 0.3 rew 0.5 upd 2.0 sync 0.1)"


def test_importing_the_observability_modules_stays_light():
    import subprocess
    import sys

    code = ("import sys, rollout.tracking.run_tracker, rollout.tracking.report, rollout.tracking.figures, "
            "rollout.tracking.ray_metrics; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'mlflow', 'ray', 'matplotlib', 'tqdm', 'PIL'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", "MLflow, Ray, matplotlib, tqdm and Pillow are imported only when used"
