"""The shipped launchers can host the shipped configs: every config in configs/ is laid onto the largest cluster
ray_cluster.yaml's autoscaler and kuberay_rayjob.yaml's worker group can reach (GPUs, CPUs, GPUs per node), and
both carry what multi-node NCCL needs (EFA devices and memory locking)."""

from __future__ import annotations

import math

import pytest
import yaml

from rollout.cluster.placement import plan_resources
from rollout.config import PROJECT_ROOT, load_config

CONFIGS = sorted((PROJECT_ROOT / "configs").glob("*.yaml"))
LAUNCHER = PROJECT_ROOT / "ray_cluster.yaml"
RAYJOB = PROJECT_ROOT / "kuberay_rayjob.yaml"


def launcher_nodes() -> list[dict]:
    """The largest set of nodes the autoscaler may run: the head, then worker types (most GPUs first) up to each
    type's ``max_workers`` and the cluster's ``max_workers``."""
    launcher = yaml.safe_load(LAUNCHER.read_text())
    types = launcher["available_node_types"]
    head = types[launcher["head_node_type"]]["resources"]
    workers = sorted(((name, t) for name, t in types.items() if name != launcher["head_node_type"]),
                     key=lambda item: -item[1]["resources"].get("GPU", 0))
    nodes, room = [head], launcher["max_workers"]
    for _, node_type in workers:
        count = min(node_type["max_workers"], room)
        nodes += [node_type["resources"]] * count
        room -= count
    return nodes


def rayjob_nodes() -> list[dict]:
    spec = yaml.safe_load(RAYJOB.read_text())["spec"]["rayClusterSpec"]

    def resources(template: dict, params: dict) -> dict:
        limits = template["spec"]["containers"][0]["resources"]["limits"]
        return {"CPU": float(limits["cpu"]),
                "GPU": float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))}

    head = spec["headGroupSpec"]
    nodes = [resources(head["template"], head["rayStartParams"])]
    for group in spec["workerGroupSpecs"]:
        nodes += [resources(group["template"], group["rayStartParams"])] * group["maxReplicas"]
    return nodes


@pytest.mark.parametrize("nodes_of", [launcher_nodes, rayjob_nodes], ids=["ray_cluster.yaml", "kuberay_rayjob.yaml"])
@pytest.mark.parametrize("config_path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_fits_the_shipped_launchers(config_path, nodes_of):
    config = load_config(config_path)
    if config.cluster.num_gpus == 0:
        pytest.skip("a local (embedded) config runs on the machine it starts on")
    plan = plan_resources(config)
    nodes = nodes_of()
    gpus, cpus = sum(n.get("GPU", 0) for n in nodes), sum(n.get("CPU", 0) for n in nodes)
    per_node = max(n.get("GPU", 0) for n in nodes)
    assert config.cluster.num_gpus <= gpus and plan.total_gpus <= gpus, (config_path.name, plan.total_gpus, gpus)
    assert plan.total_cpus <= cpus, (config_path.name, plan.total_cpus, cpus)
    for role in plan.roles:
        assert role.gpus <= per_node, f"{role.role} needs {role.gpus} GPUs in one bundle; nodes have {per_node}"
    # A learner placed on the fewest nodes its ranks need, each node taking at most its GPUs.
    for role in (r for r in plan.roles if r.role.endswith("learner") and r.gpus):
        assert math.ceil(role.count * role.gpus / per_node) <= sum(1 for n in nodes if n.get("GPU", 0))


def test_the_largest_shipped_config_needs_all_64_gpus_the_launchers_offer():
    largest = max((load_config(p) for p in CONFIGS), key=lambda c: c.cluster.num_gpus)
    assert largest.cluster.num_gpus == 64
    for nodes in (launcher_nodes(), rayjob_nodes()):
        assert sum(n.get("GPU", 0) for n in nodes) == 64


def test_launchers_pass_efa_devices_and_lock_memory_for_nccl():
    launcher = yaml.safe_load(LAUNCHER.read_text())
    docker = launcher["docker"]
    options = docker["run_options"] + docker["worker_run_options"]
    assert "--device=/dev/infiniband" in options and "--cap-add=IPC_LOCK" in options
    gpu_nodes = [t for t in launcher["available_node_types"].values() if t["resources"].get("GPU")]
    for node_type in gpu_nodes:
        interfaces = node_type["node_config"]["NetworkInterfaces"]
        assert {i["InterfaceType"] for i in interfaces} == {"efa"}
        assert sorted(i["NetworkCardIndex"] for i in interfaces) == list(range(len(interfaces)))
        assert all(i["SubnetId"] and i["Groups"] for i in interfaces)  # Ray copies them to the node config
    worker = yaml.safe_load(RAYJOB.read_text())["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    container = worker["template"]["spec"]["containers"][0]
    assert int(container["resources"]["limits"]["vpc.amazonaws.com/efa"]) == len(interfaces)
    assert "IPC_LOCK" in container["securityContext"]["capabilities"]["add"]
