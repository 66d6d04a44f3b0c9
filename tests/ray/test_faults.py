"""Fault tolerance of the loop: an artist sampler or critic rollout actor killed in the middle of a step.

The actor is killed (Ray restarts it, as ``max_restarts`` allows) right when the controller hands it work, so
the stage fails mid-step. The run must finish all its steps, log the restart, re-sync the restarted actor to the
current weights, and account for every sample exactly once. Weights travel over the collective (the default
``sync.backend: auto`` here); the critic case trains a LoRA critic, so the restarted replica is also re-sent the
adapted blocks' base weights that its first adapter sync needs. A sampler is also killed again while Ray is
restarting it (its constructor running), with the group already waiting for it: the step still completes.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest

from rollout.config import load_config
from rollout.controller import Controller
from run_sizes import PLUMBING

STEPS = 3


def _controller(tmp_path, name: str, overrides: list[str]) -> Controller:
    config = load_config(None, [f"trainer.steps={STEPS}", "data.num_train=4", "data.num_eval=2",
                                "tracking.sample_grid_every=0", f"trainer.output_dir={tmp_path}",
                                "critic.group_size=2", *PLUMBING, *overrides])
    run_dir = tmp_path / name
    run_dir.mkdir()
    return Controller(config, run_dir=run_dir, run_name=name)


def _kill_once(components, attribute: str, actors, calls: list):
    """Wrap ``components.<attribute>`` so its first call kills the stage's actor, then does the work."""
    import ray

    original = getattr(components, attribute)

    def wrapped(*args, **kwargs):
        if not calls:
            calls.append(True)
            ray.kill(actors()[0], no_restart=False)
        return original(*args, **kwargs)

    setattr(components, attribute, wrapped)


@pytest.mark.parametrize("stage, overrides", [
    ("sample", []),
    ("generate", ["learner.critic.lora.enabled=true", "learner.critic.lora.rank=8", "learner.critic.lora.alpha=16"]),
])
def test_killed_actor_mid_step_loses_no_sample(ray_local, tmp_path, stage, overrides):
    controller = _controller(tmp_path, f"fault-{stage}", overrides)
    controller.start()
    assert controller.components.sync_backend == "collective"
    try:
        comp = controller.components
        actors = (lambda: comp.artist_samplers.actors) if stage == "sample" else (lambda: comp.critic_rollout.actors)
        killed: list = []
        per_step = []
        while controller.step < STEPS:
            if controller.step == 1:
                _kill_once(comp, stage, actors, killed)
            metrics = controller.train_step()
            records = controller._last_records
            per_step.append((metrics, len(records.critiques), len(records.edits), len(records.edit_rewards),
                             {(e.task_id, e.critique_index, e.edit_index) for e in records.edits}))
            controller.step += 1
    finally:
        controller.components.shutdown()
        controller.components = None

    cfg = controller.config
    expected_critiques = cfg.trainer.batch_size * cfg.critic.group_size
    expected_edits = expected_critiques * cfg.artist.edits_per_critique
    assert killed, "the fault was never injected"
    for metrics, critiques, edits, rewards, keys in per_step:
        assert critiques == expected_critiques
        assert edits == rewards == expected_edits
        assert len(keys) == expected_edits  # no edit counted twice
    last = per_step[-1][0]
    assert last["faults/actor_restarts"] == 1
    lost = expected_edits if stage == "sample" else cfg.trainer.batch_size * cfg.critic.group_size
    assert last["faults/retried_items"] == lost
    # Every edit after the restart carried the samplers' current version (the controller refuses edits from any
    # other version), so the restarted replica was re-synced; both learners kept publishing.
    assert last["policy/artist_version"] == STEPS and last["policy/critic_version"] == STEPS


def _kill_twice(actor, after_s: float, outcome: dict) -> None:
    """SIGKILL ``actor``'s process ``after_s`` into its call, then its replacement while it is being created (Ray's
    control store names the new process while the actor is still restarting, before its constructor returns)."""
    from ray._private.state import state

    time.sleep(after_s)
    pid = state.actor_table(actor._actor_id.hex())["Pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 120.0
    while time.monotonic() < deadline:
        info = state.actor_table(actor._actor_id.hex())
        if info["State"] != "ALIVE" and info["Pid"] not in (0, pid) and psutil.pid_exists(info["Pid"]):
            os.kill(info["Pid"], signal.SIGKILL)
            outcome["restarting_pid"] = info["Pid"]
            return
        if info["State"] == "ALIVE" and info["Pid"] != pid:
            outcome["missed"] = "the restart finished before its process could be killed"
            return
        time.sleep(0.01)


def test_an_actor_killed_again_while_its_restart_is_under_way_comes_back_and_the_step_completes(ray_local, tmp_path):
    controller = _controller(tmp_path, "fault-restarting", [])
    controller.start()
    try:
        comp = controller.components
        original, outcome = comp.sample, {}

        def sample_while_killed_twice(*args, **kwargs):
            killer = threading.Thread(target=_kill_twice, args=(comp.artist_samplers.actors[0], 0.3, outcome))
            killer.start()
            try:
                return original(*args, **kwargs)
            finally:
                killer.join()

        comp.sample = sample_while_killed_twice
        metrics = controller.train_step()
        records = controller._last_records
    finally:
        controller.components.shutdown()
        controller.components = None
    cfg = controller.config
    assert outcome.get("restarting_pid"), outcome.get("missed", "the replacement was never caught being created")
    expected_edits = cfg.trainer.batch_size * cfg.critic.group_size * cfg.artist.edits_per_critique
    assert len(records.edits) == len(records.edit_rewards) == expected_edits
    assert len({(e.task_id, e.critique_index, e.edit_index) for e in records.edits}) == expected_edits
    assert metrics["faults/restarts/artist_sampler"] >= 1 and metrics["faults/retried_items/artist_sampler"] > 0
    # Made with the adapter the samplers served during the step (the step's own sync then published the next one).
    assert {e.artist_version for e in records.edits} == {controller.artist_version - 1}
