"""Config loading and validation as a user meets it: shipped configs, typos, bad values, overrides, plans."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rollout.config import PROJECT_ROOT, ConfigError, TrainConfig, load_config
from rollout.cluster.placement import plan_resources

CONFIGS = sorted((PROJECT_ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate_and_plan(path: Path):
    config = load_config(path)
    plan = plan_resources(config)
    assert plan.ok, plan.problems


def test_default_config_is_embedded_and_needs_no_gpu():
    config = load_config()
    assert config.critic.model == "embedded" and config.artist.model == "embedded"
    assert plan_resources(config).total_gpus == 0


def _errors(tmp_path: Path, text: str, overrides=()) -> list[str]:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    return info.value.lines


def test_misspelt_key_names_path_and_suggests(tmp_path):
    lines = _errors(tmp_path, "critic:\n  temprature: 0.7\n")
    assert len(lines) == 1
    assert lines[0].startswith("critic.temprature: unknown key; did you mean 'temperature'?")


def test_wrong_type_and_out_of_range_one_line_each(tmp_path):
    lines = _errors(tmp_path, "learner:\n  critic:\n    lr: fast\ntrainer:\n  batch_size: 0\n")
    assert len(lines) == 2
    assert any(l.startswith("learner.critic.lr: got 'fast'") for l in lines)
    assert any(l.startswith("trainer.batch_size: got 0;") and "greater than or equal to 1" in l for l in lines)


def test_sync_section_names_bad_backends_and_bounds(tmp_path):
    lines = _errors(tmp_path, "sync:\n  backend: nccl2\n  bucket_mb: 0\n  bucket: 64\n")
    assert len(lines) == 3
    assert any(l.startswith("sync.backend: got 'nccl2'") and "'collective'" in l for l in lines)
    assert any(l.startswith("sync.bucket_mb: got 0;") for l in lines)
    assert any(l.startswith("sync.bucket: unknown key; did you mean 'bucket_mb'?") for l in lines)
    assert load_config(None, ["sync.backend=object_store"]).sync.backend == "object_store"


def test_unknown_section_lists_sections(tmp_path):
    (line,) = _errors(tmp_path, "critc: {}\n")
    assert "did you mean 'critic'" in line


def test_invalid_yaml_reports_line(tmp_path):
    (line,) = _errors(tmp_path, "critic:\n  model: [unclosed\n")
    assert "line" in line and "not valid YAML" in line


def test_overrides_apply_and_validate(tmp_path):
    config = load_config(None, ["learner.critic.lr=2e-5", "trainer.train_critic=false", "critic.group_size=8"])
    assert config.learner.critic.lr == 2e-5 and config.trainer.train_critic is False
    assert config.critic.group_size == 8
    with pytest.raises(ConfigError) as info:
        load_config(None, ["critic.group_size=0"])
    assert info.value.lines[0].startswith("critic.group_size: got 0")


def test_override_values_are_data_not_code():
    # A YAML tag that would construct a Python object is refused by safe_load, never executed.
    with pytest.raises(ConfigError):
        load_config(None, ["tracking.experiment=!!python/object/apply:os.system ['echo pwned']"])


def test_cross_section_rules(tmp_path):
    (line,) = _errors(tmp_path, "data:\n  source: manifest\n")
    assert "data.train_manifest is required" in line


def test_every_field_is_documented():
    def walk(model, prefix=""):
        for name, info in model.model_fields.items():
            assert info.description, f"{prefix}{name} has no docstring"
            sub = info.annotation
            if isinstance(sub, type) and hasattr(sub, "model_fields"):
                walk(sub, f"{prefix}{name}.")
    walk(TrainConfig)


def test_plan_fails_clearly_when_gpus_are_missing():
    config = load_config(PROJECT_ROOT / "configs" / "cluster-8gpu.yaml", ["cluster.num_gpus=4"])
    plan = plan_resources(config)
    assert not plan.ok
    assert any("need 8 GPUs but cluster.num_gpus is 4" in p for p in plan.problems)


def test_check_config_cli_exit_codes(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "rollout.commands.cli", "check-config", "--quiet"],
                        capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([sys.executable, "-m", "rollout.commands.cli", "check-config", "--set",
                          "critic.tempreature=1"],
                         capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert bad.returncode == 1
    assert bad.stderr.strip().count("\n") == 0 and "critic.tempreature: unknown key" in bad.stderr


def test_config_reference_is_current():
    from rollout.commands.config_reference import OUTPUT, render

    assert OUTPUT.read_text() == render(), "docs/config.md is stale: run python -m rollout.commands.config_reference"
