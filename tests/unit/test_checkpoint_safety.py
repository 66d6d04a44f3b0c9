"""A checkpoint directory from elsewhere can hold wrong numbers, but reading it cannot run code.

The learners' sharded state is a ``torch.distributed.checkpoint`` directory whose ``.metadata`` file is a pickle
and whose non-tensor values (optimizer hyper-parameters) are pickles too. Here each is replaced by a pickle that
would create a file when unpickled, as anyone who can write the run directory could do (with the manifest's
digests updated to match): loading refuses it with an error naming the file and what it tried to load, and the
file is never created — also through ``photocrafter resume``, which refuses before starting anything.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from learner.checkpoint_reader import UnsafeCheckpointError, read_metadata, safe_load_planner
from learner.distributed import load_sharded, save_sharded
from rollout.checkpoint import commit_checkpoint, partial_dir, save_state_tree
from rollout.config import PROJECT_ROOT, dump_config, load_config


class CreatesAFile:
    """Unpickling this calls ``os.system`` (what a malicious checkpoint would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _learner_state():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optimizer_state}


@pytest.fixture
def learner_dir(tmp_path):
    directory = tmp_path / "critic_learner"
    save_sharded(_learner_state(), directory)
    return directory


def test_a_learner_checkpoint_round_trips_through_the_safe_reader(learner_dir):
    saved = _learner_state()
    target = {"model": {k: torch.zeros_like(v) for k, v in saved["model"].items()}, "optimizer": saved["optimizer"]}
    load_sharded(target, learner_dir)
    assert set(read_metadata(learner_dir / ".metadata").state_dict_metadata) >= {f"model.{k}" for k in saved["model"]}
    assert any(v.abs().sum() > 0 for v in target["model"].values())
    assert target["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)


def test_metadata_with_a_malicious_pickle_is_refused_and_runs_nothing(learner_dir, tmp_path):
    marker = tmp_path / "pwned"
    (learner_dir / ".metadata").write_bytes(pickle.dumps(CreatesAFile(marker)))
    state = _learner_state()
    with pytest.raises(UnsafeCheckpointError, match=r"\.metadata: refusing to load (posix|os)\.system"):
        load_sharded(state, learner_dir)
    assert not marker.exists()


def test_a_non_tensor_value_with_a_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    from torch.distributed.checkpoint.metadata import MetadataIndex
    from torch.distributed.checkpoint.planner import LoadItemType, ReadItem

    marker = tmp_path / "pwned"
    payload = io.BytesIO()
    torch.save(CreatesAFile(marker), payload)
    payload.seek(0)
    planner = safe_load_planner()
    item = ReadItem(type=LoadItemType.BYTE_IO, dest_index=MetadataIndex("optimizer.param_groups.0.lr"),
                    dest_offsets=torch.Size([0]), storage_index=MetadataIndex("optimizer.param_groups.0.lr"),
                    storage_offsets=torch.Size([0]), lengths=torch.Size([0]))
    with pytest.raises(UnsafeCheckpointError, match="optimizer.param_groups.0.lr"):
        planner.load_bytes(item, payload)
    assert not marker.exists()


def test_resume_refuses_a_checkpoint_whose_metadata_would_run_code(tmp_path):
    """The run directory as a user would receive it: config, run record, a committed checkpoint whose manifest
    matches the tampered file. ``photocrafter resume`` names the file and exits 1 before starting Ray."""
    run_dir = tmp_path / "copied-run"
    run_dir.mkdir()
    config = load_config(None, [f"trainer.output_dir={tmp_path}", "trainer.run_name=copied-run"])
    (run_dir / "config.yaml").write_text(dump_config(config))
    (run_dir / "run.json").write_text(json.dumps({"name": "copied-run", "config_source": "configs/embedded.yaml"}))
    partial = partial_dir(run_dir, 2)
    save_sharded(_learner_state(), partial / "critic_learner")
    save_state_tree({"step": 2}, partial, "controller")
    marker = tmp_path / "pwned"
    (partial / "critic_learner" / ".metadata").write_bytes(pickle.dumps(CreatesAFile(marker)))
    commit_checkpoint(partial, 2, {"run_name": "copied-run"})  # digests of the tampered file, as an attacker would

    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": ""}
    result = subprocess.run([sys.executable, "-m", "rollout.commands.cli", "resume", "--run", str(run_dir)],
                            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "critic_learner/.metadata: refusing to load" in result.stderr and "system" in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()
    assert "Started a local Ray instance" not in result.stdout + result.stderr
