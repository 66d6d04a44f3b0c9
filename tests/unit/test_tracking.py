"""RunTracker against a real MLflow sqlite store in a temporary directory."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from PIL import Image

from rollout.config import load_config
from rollout.tracking.figures import SampleRow
from rollout.tracking.run_tracker import (DROPPED_NONFINITE_KEY, TAG_RESUMES, RunTracker, flatten_config,
                              resolve_tracking_uri)


@pytest.fixture(scope="module")
def tracking_root(tmp_path_factory):
    """One sqlite database for the module: creating MLflow's schema takes seconds, runs are cheap."""
    return tmp_path_factory.mktemp("tracking")


@pytest.fixture()
def config(tracking_root):
    return load_config(overrides=[f"tracking.mlflow_uri=sqlite:///{tracking_root / 'mlflow.db'}"])


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _rows(rng):
    def image(h=32, w=48):
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return [SampleRow(task_id=f"t{i}", input=image(), edits=[image(), image()], target=image(),
                      critique="the photo is too dark; raise exposure slightly", edit_rewards=[0.2, 0.7],
                      critic_score=3.5) for i in range(2)]


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    run_dir = tmp_path / "runs" / "r1"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = resolve_tracking_uri("", run_dir)
    assert default == f"sqlite:///{(tmp_path / 'runs').resolve()}/mlflow.db"
    assert default.startswith("sqlite:////"), "the default database path must be absolute"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert resolve_tracking_uri("", run_dir) == "http://mlflow.internal:5000"
    assert resolve_tracking_uri("sqlite:////data/m.db", run_dir) == "sqlite:////data/m.db"


def test_flatten_config_uses_dotted_keys_and_respects_mlflow_limits(config):
    flat = flatten_config(config)
    assert flat["learner.critic.lr"] == str(config.learner.critic.lr)
    assert flat["trainer.batch_size"] == "2"
    assert all(len(v) <= 6000 for v in flat.values())
    assert len(flat) > 100, "every field of the resolved config is a param"


def test_new_run_logs_params_metrics_artifacts(config, tmp_path, tracking_root, caplog):
    run_dir = tmp_path / "runs" / "first"
    tracker = RunTracker(config, run_dir, "first")
    tracker.log_params(config)
    tracker.log_metrics({"reward/artist/total/mean": 0.25, "learner/grpo/kl": float("nan"),
                         "learner/nft/loss": float("inf"), "perf/edits_per_s": np.float32(5.5)}, step=1)
    with caplog.at_level(logging.WARNING, logger="rollout.tracking.run_tracker"):
        tracker.log_metrics({"reward/artist/total/mean": 0.5, "bad key!": 1.0, "learner/nft/loss": None}, 2)
    assert any("bad key!" in r.getMessage() for r in caplog.records)
    grid = tracker.log_sample_grid(2, _rows(np.random.default_rng(0)))
    curves = tracker.log_reward_curves(2)
    tracker.close("FINISHED")

    client = _client(tracker.tracking_uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "first"
    assert run.data.params["learner.critic.lr"] == str(config.learner.critic.lr)
    assert len(run.data.params) == len(flatten_config(config))
    history = client.get_metric_history(tracker.run_id, "reward/artist/total/mean")
    assert [(m.step, m.value) for m in history] == [(1, 0.25), (2, 0.5)]
    dropped = client.get_metric_history(tracker.run_id, DROPPED_NONFINITE_KEY)
    assert [(m.step, m.value) for m in dropped] == [(1, 2.0), (2, 0.0)]
    assert client.get_metric_history(tracker.run_id, "learner/grpo/kl") == []
    invalid = client.get_metric_history(tracker.run_id, "tracking/dropped_invalid")
    assert [(m.step, m.value) for m in invalid] == [(1, 0.0), (2, 2.0)]
    assert math.isclose(client.get_metric_history(tracker.run_id, "perf/edits_per_s")[0].value, 5.5)

    artifacts = {a.path for folder in ("samples", "curves", "config")
                 for a in client.list_artifacts(tracker.run_id, folder)}
    assert artifacts == {"samples/step_000002.png", "curves/rewards.png", "config/config.yaml"}
    assert grid == run_dir / "artifacts" / "samples" / "step_000002.png"
    assert curves == run_dir / "artifacts" / "curves" / "rewards.png"
    assert Image.open(grid).size[0] > 4 * 100 and Image.open(curves).mode == "RGB"
    # Artifacts live beside the database, not in ./mlruns of whatever directory the job ran from.
    assert run.info.artifact_uri.startswith((tracking_root / "mlartifacts").as_uri())


def test_resume_appends_to_the_same_run_and_reloads_history(config, tmp_path):
    run_dir = tmp_path / "runs" / "r"
    first = RunTracker(config, run_dir, "r")
    first.log_params(config)
    for step in range(1, 5):
        first.log_metrics({"reward/critic/total/mean": step / 10}, step)
    first.close("KILLED")

    changed = config.model_copy(deep=True)
    changed.trainer.steps = 9
    resumed = RunTracker(changed, run_dir, "r", resume_run_id=first.run_id, resume_step=3)
    assert resumed.run_id == first.run_id
    # Step 4 came after the checkpoint: it is not part of the resumed curve until logged again.
    assert resumed.history["reward/critic/total/mean"] == {1: 0.1, 2: 0.2, 3: 0.3}
    resumed.log_params(changed)
    resumed.log_metrics({"reward/critic/total/mean": 0.45}, 4)
    resumed.log_metrics({"reward/critic/total/mean": 0.5}, 5)
    assert resumed.history["reward/critic/total/mean"] == {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.45, 5: 0.5}
    resumed.close("FINISHED")

    client = _client(resumed.tracking_uri)
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[TAG_RESUMES] == "1"
    assert run.data.params["trainer.steps"] == str(config.trainer.steps)
    assert run.data.tags["photocrafter.config_changed_on_resume.trainer.steps"] == f"{config.trainer.steps} -> 9"
    steps = [m.step for m in client.get_metric_history(first.run_id, "reward/critic/total/mean")]
    assert steps == [1, 2, 3, 4, 4, 5]
    assert [r.info.run_id for r in client.search_runs([resumed.experiment_id], "attributes.run_name = 'r'")] \
        == [first.run_id]


def test_resume_of_unknown_run_names_it(config, tmp_path):
    with pytest.raises(ValueError, match="deadbeef"):
        RunTracker(config, tmp_path / "runs" / "x", "x", resume_run_id="deadbeef")


def test_context_manager_marks_failed_runs(config, tmp_path):
    with pytest.raises(RuntimeError):
        with RunTracker(config, tmp_path / "runs" / "boom", "boom") as tracker:
            raise RuntimeError("learner diverged")
    assert _client(tracker.tracking_uri).get_run(tracker.run_id).info.status == "FAILED"
    with pytest.raises(ValueError, match="DONE"):
        tracker.close("DONE")


def test_bad_sample_rows_do_not_stop_the_run(config, tmp_path, caplog):
    tracker = RunTracker(config, tmp_path / "runs" / "g", "g")
    with caplog.at_level(logging.WARNING, logger="rollout.tracking.run_tracker"):
        assert tracker.log_sample_grid(1, []) is None
    tracker.warn("lpips.backbone", "LPIPS runs on a RANDOM AlexNet backbone: perceptual reward is not perceptual")
    tracker.close()
    run = _client(tracker.tracking_uri).get_run(tracker.run_id)
    assert run.data.tags["lpips.backbone"].startswith("LPIPS runs on a RANDOM")


def test_unusable_tracking_uri_is_named_in_the_error(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    config = load_config(overrides=[f"tracking.mlflow_uri=sqlite:///{blocker / 'mlflow.db'}"])
    with pytest.raises(RuntimeError, match=r"not-a-dir/mlflow\.db.*tracking\.mlflow_uri"):
        RunTracker(config, tmp_path / "runs" / "x", "x")


def test_bad_tags_do_not_stop_the_run(config, tmp_path, caplog):
    tracker = RunTracker(config, tmp_path / "runs" / "t", "t")
    with caplog.at_level(logging.ERROR, logger="rollout.tracking.run_tracker"):
        tracker.set_tags({"bad tag key!": "x"})
    assert any("bad tag key!" in r.getMessage() for r in caplog.records)
    tracker.set_tags({"ok.tag": 3})
    tracker.close()
    assert _client(tracker.tracking_uri).get_run(tracker.run_id).data.tags["ok.tag"] == "3"
