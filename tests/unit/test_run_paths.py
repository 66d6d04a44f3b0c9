"""Where a run lives: relative run paths of a Ray job outlive Ray's temporary copy of the working directory."""

from __future__ import annotations

import json

import pytest

from rollout.commands.resume import find_run_dir
from rollout.config import TrainConfig
from rollout.train import with_absolute_run_paths

RAY_JOB = json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_0123456789abcdef.zip"}, "metadata": {}})


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PHOTOCRAFTER_HOME", raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    copy = tmp_path / "ray-session" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123456789abcdef"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    return tmp_path


def test_a_local_run_lives_under_the_current_directory(home):
    config = with_absolute_run_paths(TrainConfig())
    assert config.trainer.output_dir == str(home / "ray-session" / "runtime_resources" / "working_dir_files" /
                                            "_ray_pkg_0123456789abcdef" / "runs")


def test_a_ray_job_run_lives_under_the_users_photocrafter_home_not_rays_copy(home, monkeypatch):
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", RAY_JOB)
    config = TrainConfig.model_validate({"tracking": {"mlflow_uri": "sqlite:///runs/other.db"}})
    resolved = with_absolute_run_paths(config)
    assert resolved.trainer.output_dir == str(home / "home" / "photocrafter" / "runs")
    assert resolved.tracking.mlflow_uri == f"sqlite:///{home / 'home' / 'photocrafter' / 'runs' / 'other.db'}"
    monkeypatch.setenv("PHOTOCRAFTER_HOME", str(home / "shared"))
    assert with_absolute_run_paths(TrainConfig()).trainer.output_dir == str(home / "shared" / "runs")
    absolute = TrainConfig.model_validate({"trainer": {"output_dir": str(home / "elsewhere")}})
    assert with_absolute_run_paths(absolute).trainer.output_dir == str(home / "elsewhere")


def test_resume_finds_a_job_run_from_the_project_by_its_quickstart_path(home, monkeypatch, tmp_path):
    run = home / "home" / "photocrafter" / "runs" / "embedded-1"
    run.mkdir(parents=True)
    (run / "run.json").write_text("{}")
    (run / "config.yaml").write_text("")
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    assert find_run_dir("runs/embedded-1") == run
    (project / "runs" / "embedded-1").mkdir(parents=True)  # an unrelated folder that is not a run
    assert find_run_dir("runs/embedded-1") == run
    assert find_run_dir("runs/absent") is None
