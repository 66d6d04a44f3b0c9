"""A simulated three-GPU-node cluster, driven through the real pre-flight, placement, loop and node losses.

The cluster runs in its own process (tests/e2e/simulated_cluster.py; the rest of the session shares one
single-node local cluster, and a driver joins one cluster per process). See that module for the phases.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rollout.config import PROJECT_ROOT

DRIVER = Path(__file__).with_name("simulated_cluster.py")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def simulation(tmp_path_factory, embedded_models):
    out = tmp_path_factory.mktemp("simulated-cluster")
    # RAY_DEDUP_LOGS=0: the driver would fold lines that differ only in a number (critic-learner-0/-1) into one.
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_DEDUP_LOGS": "0"}
    # The driver's own timeouts bound every wait; this one only turns a hang into a failure.
    result = subprocess.run([sys.executable, str(DRIVER), "--out", str(out)], cwd=PROJECT_ROOT, env=env,
                            capture_output=True, text=True, timeout=1200)
    report_path = out / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    phases = {name: phase["at_s"] for name, phase in report["phases"].items()}
    print(f"simulated cluster: {report.get('total_s')} s in all; phases end at (s): {phases}")
    return report["phases"], result.stdout + result.stderr


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
