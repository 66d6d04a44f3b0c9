"""A simulated multi-GPU-node cluster, driven through the real pre-flight, placement, loop and node losses, once
per placement: every role on GPUs of its own (three GPU nodes, node losses), and both models colocated (two GPU
nodes, each GPU shared by a learner rank and the replica or sampler that takes turns with it).

Each cluster runs in its own process (tests/e2e/simulated_cluster.py; the rest of the session shares one
single-node local cluster, and a driver joins one cluster per process). See that module for the phases.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rollout.config import PROJECT_ROOT

DRIVER = Path(__file__).with_name("simulated_cluster.py")
pytestmark = pytest.mark.slow


def simulate(out: Path, placement: str) -> tuple[dict, str]:
    # RAY_DEDUP_LOGS=0: the driver would fold lines that differ only in a number (critic-learner-0/-1) into one.
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_DEDUP_LOGS": "0"}
    # The driver's own timeouts bound every wait; this one only turns a hang into a failure.
    result = subprocess.run([sys.executable, str(DRIVER), "--out", str(out), "--placement", placement],
                            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=1200)
    report_path = out / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    phases = {name: phase["at_s"] for name, phase in report["phases"].items()}
    print(f"simulated cluster ({placement}): {report.get('total_s')} s in all; phases end at (s): {phases}")
    return report["phases"], result.stdout + result.stderr


@pytest.fixture(scope="module")
def simulation(tmp_path_factory, embedded_models):
    return simulate(tmp_path_factory.mktemp("simulated-cluster"), "disaggregated")


@pytest.fixture(scope="module")
def colocated_simulation(tmp_path_factory, embedded_models):
    return simulate(tmp_path_factory.mktemp("simulated-colocated"), "colocated")


def test_a_plan_larger_than_the_live_cluster_is_refused_before_any_actor(simulation):
    phases, _ = simulation
    refusal = phases["refusal"]
    assert refusal["refused"] and refusal["actors"] == 0 and refusal["placement_groups"] == 0
    rollout = [line for line in refusal["lines"] if line.startswith("critic-rollout:")]
    assert rollout and "cannot be placed on the live cluster" in rollout[0] and "critic.num_replicas" in rollout[0]
    assert "cluster.wait_for_autoscaler: true" in refusal["lines"][-1]


def test_start_up_waits_for_new_nodes_with_progress_lines(simulation):
    phases, console = simulation
    assert "pre-flight: not yet placeable: critic-rollout:" in console
    waiting = [line for line in console.splitlines() if "placement: waiting for" in line]
    assert waiting and "GPU: 1" in waiting[0] and "cluster.placement_timeout_s" in waiting[0]
    assert phases["started"]["at_s"] > phases["cluster_started"]["at_s"]


def test_actors_granted_fake_gpus_say_they_run_on_cpu(simulation):
    _, console = simulation
    for actor in ("critic-rollout-0", "artist-sampler-1", "critic-learner-0", "critic-learner-1"):
        assert f"{actor} was granted" in console and "running on CPU because cluster.cpu_fallback is true" in console


def test_roles_land_where_the_plan_says(simulation):
    phases, _ = simulation
    actors = phases["placement"]["actors"]
    samplers = {node for name, node in actors.items() if name.startswith("artist-sampler")}
    critic_learner = {node for name, node in actors.items() if name.startswith("critic-learner")}
    assert len(samplers) == 2, actors  # SPREAD: one replica per node
    assert len(critic_learner) == 1, actors  # STRICT_PACK: every rank on one node
    # Learners were placed while gpu-1 was the only GPU node; nothing that holds a GPU is on the CPU head.
    assert {node for name, node in actors.items() if "learner" in name} == {"gpu-1"}
    assert all(node != "head" for name, node in actors.items() if not name.startswith("reward"))


def test_losing_a_replica_node_restarts_its_replicas_elsewhere_and_the_run_goes_on(simulation):
    phases, _ = simulation
    removed = phases["replica_node_removed"]
    step = phases["step_2"]
    assert phases["step_1"]["edits"] == step["edits"] == 8 and step["critiques"] == 4
    assert step["restarts"] >= 1
    assert step["artist_version"] == step["critic_version"] == 2
    for name in removed["actors"]:
        assert step["actors"][name] not in (removed["node"],), (name, step["actors"])


def test_losing_the_learners_node_ends_the_run_clearly_with_a_resumable_checkpoint(simulation):
    phases, _ = simulation
    lost = phases["learner_lost"]
    assert lost["raised"], "the step after the learners' node was lost did not fail"
    assert lost["role"] in ("critic-learner", "artist-learner")
    assert lost["message"].startswith(f"{lost['role']} was lost during step 3")
    assert "photocrafter resume --run" in lost["message"] and lost["checkpoint"] in lost["message"]
    assert lost["newest_step"] == 2 and lost["newest_verifies"]
    assert phases["shutdown"]["seconds"] < 120


# ------------------------------------------------------------------------------------------------ colocated
def granted_gpus(console: str) -> dict[str, str]:
    """Name → the ``CUDA_VISIBLE_DEVICES`` Ray gave each actor granted (fake) GPUs, from the line such an actor logs
    when it falls back to the CPU: two actors sharing a GPU were given the same device."""
    return dict(re.findall(r"(\S+-\d+) was granted [\d.]+ GPU\(s\) \(CUDA_VISIBLE_DEVICES=(\S+)\)", console))


def test_colocated_roles_share_each_gpu_bundle(colocated_simulation):
    phases, console = colocated_simulation
    placement = phases["placement"]
    actors = placement["actors"]
    gpus = granted_gpus(console)
    for model, replica in (("critic", "critic-rollout"), ("artist", "artist-sampler")):
        assert placement["same_placement_group"][model] and placement["shared_bundles"][model] == [0, 1]
        # one GPU and the CPUs of both roles per bundle
        assert all(b["GPU"] == 1 and b["CPU"] == 2 for b in placement["bundles"][model])
        for i in range(2):
            learner = f"{model}-learner-{i}"
            assert actors[f"{replica}-{i}"] == actors[learner] != "head"
            assert gpus[f"{replica}-{i}"] == gpus[learner], (replica, i, gpus)  # the same device
    # four GPUs in all: the plan that asked for seven disaggregated asks for four colocated
    assert len({(actors[name], gpu) for name, gpu in gpus.items()}) == 4


def test_colocated_steps_take_turns_phase_by_phase(colocated_simulation):
    phases, _ = colocated_simulation
    assert phases["placement"]["turns"] == {"critic": "serve", "artist": "serve"}
    for step in ("step_1", "step_2"):
        record = phases[step]
        assert record["edits"] == 8 and record["critiques"] == 4
        turns = [t for t in record["critic_turns"] if t in ("train", "serve", "sync")]
        # generate (serving) → prepare → re-score → update → in-place sync → serving again
        assert turns == ["train", "serve", "train", "sync", "serve"], record["critic_turns"]
        assert [t for t in record["artist_turns"] if t in ("train", "serve", "sync")] == ["train", "sync", "serve"]
        # before the learner takes a GPU, the replica on it released it; the learner lets go before the replica
        # wakes to serve
        history = record["critic_turns"]
        first_train = history.index("train")
        assert any(e.startswith("critic-rollout-0 release") for e in history[:first_train])
        assert any(e.startswith("critic-learner-0 wake") for e in history[:first_train])
        after_sync = history[history.index("sync"):]
        learner_release = next(i for i, e in enumerate(after_sync) if e.startswith("critic-learner-0 release"))
        kv_wake = next(i for i, e in enumerate(after_sync) if e.startswith("critic-rollout-0 wake"))
        assert learner_release < kv_wake
    assert phases["step_2"]["critic_version"] == phases["step_2"]["artist_version"] == 2
    assert phases["checkpoint"] and phases["shutdown"]["seconds"] < 120


def test_colocated_memory_released_between_phases_is_measured(colocated_simulation):
    phases, _ = colocated_simulation
    figures = phases["step_2"]["colocation"]
    assert figures["colocation/critic/switches"] == 4 and figures["colocation/artist/switches"] == 2
    for key in ("critic/rollout", "critic/learner", "artist/sampler", "artist/learner"):
        # resident set size of each role after it released (fake GPUs: the actors run on CPU, so host memory)
        assert figures[f"colocation/{key}_rss_after_release_mb"] > 50
        assert f"colocation/{key}_released_mb" in figures
    assert np.isfinite(phases["step_2"]["grpo_loss"]) and np.isfinite(phases["step_2"]["nft_loss"])
