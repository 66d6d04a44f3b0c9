"""Pre-flight: the resource plan laid onto a live cluster's nodes, refused with the role and the knob to change."""

from __future__ import annotations

import pytest

from rollout.config import PROJECT_ROOT, load_config
from rollout.cluster.placement import plan_resources
from rollout.cluster.preflight import LiveCluster, LiveNode, PlanRefused, check_live_cluster, place_plan

CLUSTER_CONFIG = PROJECT_ROOT / "configs" / "cluster-8gpu.yaml"


def node(name: str, gpus: float, cpus: float = 96, *, head: bool = False, accelerator: str = "H100") -> LiveNode:
    return LiveNode(node_id=name, address=name, is_head=head, gpus=gpus, cpus=cpus, memory_gib=900, free_gpus=gpus,
                    free_cpus=cpus, accelerator=accelerator if gpus else "")


def plan(*overrides: str):
    return plan_resources(load_config(CLUSTER_CONFIG, list(overrides)))


def test_shipped_plan_fits_one_8_gpu_node():
    result = place_plan(plan(), LiveCluster([node("head", 0, 32, head=True), node("gpu-a", 8, 192)]),
                        gpu_memory_gib=80)
    assert result.ok, result.problems
    assert set(result.placement("critic-rollout").nodes) == {"gpu-a"}
    assert result.placement("critic-learner").nodes == ["gpu-a"]


def test_samplers_spread_over_nodes_and_learner_ranks_packed_on_one():
    cluster = LiveCluster([node("gpu-a", 4), node("gpu-b", 4), node("gpu-c", 4)])
    result = place_plan(plan("learner.critic.gpus=2", "cluster.num_gpus=12"), cluster)
    assert result.ok, result.problems
    learner = result.placement("critic-learner")
    assert learner.strategy == "STRICT_PACK" and len(learner.bundles) == 2 and len(set(learner.nodes)) == 1
    assert len(set(result.placement("artist-sampler").nodes)) == 3


def test_learner_larger_than_any_node_is_packed_over_as_few_nodes_as_possible():
    cluster = LiveCluster([node("gpu-a", 4), node("gpu-b", 4), node("gpu-c", 4)])
    result = place_plan(plan("learner.critic.gpus=6", "critic.num_replicas=1", "artist.num_samplers=1",
                             "cluster.num_gpus=12"), cluster)
    assert result.ok, result.problems
    learner = result.placement("critic-learner")
    assert learner.strategy == "PACK" and len(learner.bundles) == 6 and len(set(learner.nodes)) == 2


def test_more_gpus_than_the_cluster_has_is_refused_naming_the_role_and_knob():
    cluster = LiveCluster([node("head", 0, 32, head=True), node("gpu-a", 4)])
    result = place_plan(plan(), cluster)
    assert not result.ok
    rollout = next(p for p in result.problems if p.startswith("critic-rollout:"))
    assert "3 × {CPU: 4, GPU: 1} (PACK)" in rollout and "critic.num_replicas" in rollout
    assert "2 GPUs and" in rollout  # what the learners left free
    assert any(p.startswith("artist-sampler:") and "artist.num_samplers" in p for p in result.problems)
    assert not any(p.startswith("critic-learner:") for p in result.problems)  # the learners fit


def test_a_replica_wider_than_every_node_is_named():
    result = place_plan(plan("critic.gpus_per_replica=8", "critic.num_replicas=1", "cluster.num_gpus=13"),
                        LiveCluster([node("gpu-a", 4), node("gpu-b", 4), node("gpu-c", 4), node("gpu-d", 4)]))
    (problem,) = [p for p in result.problems if p.startswith("critic-rollout")]
    assert "one bundle needs 8 GPUs but the largest node has 4" in problem and "critic.gpus_per_replica" in problem


def test_cpus_count_too():
    result = place_plan(plan(), LiveCluster([node("gpu-a", 8, cpus=16)]))
    assert any(p.startswith("reward:") and "rewards.num_workers" in p for p in result.problems)


def test_gpus_with_less_memory_than_configured_are_refused():
    result = place_plan(plan(), LiveCluster([node("gpu-a", 8, 192, accelerator="A10G")]), gpu_memory_gib=80)
    assert any("cluster.gpu_memory_gib is 80" in p and "A10G" in p for p in result.problems)
    assert place_plan(plan(), LiveCluster([node("gpu-a", 8, 192, accelerator="H200")]), gpu_memory_gib=80).ok


def test_check_refuses_before_any_actor_or_waits_for_the_autoscaler():
    config = load_config(CLUSTER_CONFIG)
    small = LiveCluster([node("gpu-a", 4, 192)])
    lines: list[str] = []
    with pytest.raises(PlanRefused) as refused:
        check_live_cluster(plan_resources(config), config.cluster, small, report=lines.append)
    assert any(line.startswith("critic-rollout:") for line in refused.value.lines)
    assert "cluster.wait_for_autoscaler: true" in refused.value.lines[-1]
    assert any("GPU 4/4 H100 free" in line for line in lines)  # the live nodes were shown

    waiting = load_config(CLUSTER_CONFIG, ["cluster.wait_for_autoscaler=true"])
    lines.clear()
    result = check_live_cluster(plan_resources(waiting), waiting.cluster, small, report=lines.append)
    assert not result.ok
    assert any("not yet placeable: critic-rollout:" in line for line in lines)
    assert any("waiting for the autoscaler" in line for line in lines)


def test_resources_held_by_other_work_are_waited_for_not_refused():
    config = load_config(CLUSTER_CONFIG)
    busy = node("gpu-a", 8, 192)
    busy.free_gpus = 2  # another job holds 6 GPUs for now
    lines: list[str] = []
    result = check_live_cluster(plan_resources(config), config.cluster, LiveCluster([busy]), report=lines.append)
    assert not result.ok
    assert any(line.startswith("pre-flight: busy now: critic-rollout:") for line in lines)
    assert any("other work holds part of it" in line and "cluster.placement_timeout_s" in line for line in lines)
