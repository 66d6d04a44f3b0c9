"""Checkpoint directories: state trees round-trip exactly, incomplete or damaged checkpoints are never loaded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rollout.checkpoint import (commit_checkpoint, latest_checkpoint, load_state_tree, partial_dir,
                                prune_checkpoints, save_state_tree, verify_checkpoint)


def _optimizer_state():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return model, opt


def test_state_tree_round_trips_optimizer_and_mixed_values(tmp_path):
    model, opt = _optimizer_state()
    tree = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 7, "version": (3, 4),
            "rng": np.random.default_rng(1).bit_generator.state, "mask": np.array([True, False]), "none": None}
    save_state_tree(tree, tmp_path, "learner")
    back = load_state_tree(tmp_path, "learner")
    assert back["step"] == 7 and back["version"] == (3, 4) and back["none"] is None
    assert torch.equal(back["model"]["weight"], model.state_dict()["weight"])
    assert set(back["optimizer"]["state"]) == {0, 1}  # int keys survive
    fresh = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=1e-3)
    fresh.load_state_dict(back["optimizer"])  # loads into a real optimizer
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert back["mask"].dtype == np.bool_ and back["mask"].tolist() == [True, False]
    rng = np.random.default_rng(0)
    rng.bit_generator.state = back["rng"]
    assert rng.random() == np.random.default_rng(1).random()


def test_state_tree_refuses_objects_it_cannot_store_safely(tmp_path):
    with pytest.raises(TypeError, match="cannot checkpoint a object"):
        save_state_tree({"x": object()}, tmp_path, "bad")


def test_commit_is_atomic_and_latest_skips_incomplete(tmp_path):
    for step in (2, 4):
        part = partial_dir(tmp_path, step)
        save_state_tree({"step": step}, part, "controller")
        commit_checkpoint(part, step, {"run_id": "abc"})
    # A crash while writing step 6: shards but no manifest, never renamed into place.
    crashed = partial_dir(tmp_path, 6)
    save_state_tree({"step": 6}, crashed, "controller")
    info = latest_checkpoint(tmp_path)
    assert info.step == 4 and info.manifest["run_id"] == "abc"
    # A damaged newest checkpoint (truncated shard) is skipped for the previous good one.
    shard = info.path / "controller.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1])
    with pytest.raises(ValueError, match="bytes, manifest says"):
        verify_checkpoint(info.path)
    assert latest_checkpoint(tmp_path).step == 2


def test_prune_keeps_newest(tmp_path):
    for step in (1, 2, 3):
        commit_checkpoint(partial_dir(tmp_path, step), step)
    prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in sorted((tmp_path / "checkpoints").glob("step_*"))] == ["step_00000002", "step_00000003"]
    assert json.loads((tmp_path / "checkpoints" / "step_00000003" / "manifest.json").read_text())["step"] == 3
