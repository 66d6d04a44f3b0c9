"""A simulated multi-node GPU cluster on this machine, driven through the real start-up, placement and loop.

Run by tests/e2e/test_multinode.py in its own process (a driver can join one Ray cluster per process, and the
test session's other tests share a single-node local cluster). ``ray.cluster_utils.Cluster`` starts a CPU-only
head and GPU nodes that advertise 4 GPUs each, which do not exist; ``cluster.cpu_fallback`` lets the actors
granted them compute on CPU, saying so in their logs. ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray resolve
every node's address to 127.0.0.1, so all traffic between the simulated nodes stays on loopback.

The run, in order (each phase's observations go to ``<out>/report.json``, the console to stdout/stderr):

1. one GPU node: the plan (7 GPUs) is refused before any actor starts;
2. the same plan with ``cluster.wait_for_autoscaler``: start-up waits with progress lines until two more GPU
   nodes join (added here once a placement group has been pending for two progress intervals);
3. where every actor landed; one training step; a checkpoint;
4. the GPU node that holds replicas but no learner is removed: its replicas restart on surviving nodes and a
   second step completes; a checkpoint;
5. the learner's node is removed: the next step ends with ``LearnerLost`` naming the learner and the newest
   complete checkpoint, and the run shuts down.

With ``--placement colocated`` it runs the other placement instead: two GPU nodes, both models colocated (each
GPU holds a learner rank and the replica or sampler that takes turns with it); where every actor landed and which
GPU Ray gave it, two training steps with the changes of turn each model went through and the memory its actors
gave back, and a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: tests/ for run_sizes
from run_sizes import PLUMBING  # noqa: E402

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every node address resolves to 127.0.0.1
# Four raylets and their agents start on two shared cores: give each node's agent longer to report its ports
# than Ray's default, or a busy machine makes the raylet abort at start.
os.environ.setdefault("RAY_agent_register_timeout_ms", "120000")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

GPUS_PER_NODE = 4
PROGRESS_EVERY_S = 2.0
NAMESPACE = "sim"

# The critic replicas use the transformers engine: placement and failure handling do not depend on the engine,
# and a vLLM replica's restart took minutes on a busy two-core machine (the e2e tests run vLLM already).
OVERRIDES = [
    "critic.engine=transformers", "critic.num_replicas=2", "critic.gpus_per_replica=1", "critic.cpus_per_replica=1",
    "critic.group_size=2",
    "artist.num_samplers=2", "artist.gpus_per_sampler=1", "artist.cpus_per_sampler=1",
    "artist.resolution=32", *PLUMBING,
    "rewards.num_workers=1", "learner.critic.gpus=2", "learner.artist.gpus=1",
    "trainer.batch_size=2", "trainer.steps=100", "data.num_train=4", "data.num_eval=2",
    "tracking.sample_grid_every=0",
    "cluster.cpu_fallback=true", "cluster.num_gpus=7", f"cluster.progress_every_s={PROGRESS_EVERY_S}",
    "cluster.placement_timeout_s=180", "cluster.model_load_timeout_s=240", "cluster.actor_max_restarts=3",
]


COLOCATED = [
    "critic.engine=transformers", "critic.num_replicas=2", "critic.gpus_per_replica=1", "critic.cpus_per_replica=1",
    "critic.group_size=2", "learner.critic.gpus=2", "placement.critic=colocated",
    "artist.num_samplers=2", "artist.gpus_per_sampler=1", "artist.cpus_per_sampler=1", "learner.artist.gpus=2",
    "placement.artist=colocated", "artist.resolution=32", *PLUMBING,
    "rewards.num_workers=1", "trainer.batch_size=2", "trainer.steps=100", "data.num_train=4", "data.num_eval=2",
    "tracking.sample_grid_every=0", "cluster.cpu_fallback=true", "cluster.num_gpus=4",
    f"cluster.progress_every_s={PROGRESS_EVERY_S}", "cluster.placement_timeout_s=180",
    "cluster.model_load_timeout_s=240",
]
"""Both models colocated on 2 GPUs each: 4 GPUs where the disaggregated plan above asks for 7."""


def log(message: str) -> None:
    print(f"[simulated-cluster] {message}", flush=True)


def actor_nodes() -> dict[str, str]:
    """Name → node id of every alive named actor this driver's job created (from the GCS actor table: the state
    API needs a dashboard, which the simulated head does not run)."""
    import ray
    from ray._private.state import actors

    job = ray.get_runtime_context().get_job_id()
    return {info["Name"]: info["Address"]["NodeID"] for info in actors().values()
            if info["Name"] and info["JobID"] == job and info["State"] == "ALIVE"}


def start_in_background(controller) -> tuple[threading.Thread, list[BaseException]]:
    """``controller.start()`` on a thread: nodes can only be added from the main thread (Ray installs signal
    handlers there), and the main thread plays the autoscaler while start-up waits."""
    errors: list[BaseException] = []

    def start() -> None:
        try:
            controller.start()
        except BaseException as error:  # noqa: BLE001 - handed to the main thread
            errors.append(error)

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    return thread, errors


def grow_when_pending(cluster, labels: dict[str, str], starting: threading.Thread) -> bool:
    """Add two GPU nodes once a placement group has waited for two progress intervals (an autoscaler's job).
    False when start-up finished without ever waiting."""
    from ray.util import placement_group_table

    pending_since = None
    while starting.is_alive():
        pending = [pg for pg in placement_group_table().values() if pg["state"] == "PENDING"]
        now = time.monotonic()
        pending_since = (pending_since or now) if pending else None
        if pending_since is not None and now - pending_since >= 2 * PROGRESS_EVERY_S:
            for name in ("gpu-2", "gpu-3"):
                node = cluster.add_node(num_cpus=8, num_gpus=GPUS_PER_NODE)
                labels[node.node_id] = name
            log("added gpu-2 and gpu-3")
            return True
        time.sleep(0.5)
    return False


def colocated(cluster, labels: dict, out: Path, mark) -> None:
    """Both models colocated on two GPU nodes: placement, two steps with their changes of turn, a checkpoint."""
    from rollout.config import load_config
    from rollout.controller import Controller
    from rollout.train import init_ray

    for name in ("gpu-1", "gpu-2"):
        labels[cluster.add_node(num_cpus=8, num_gpus=GPUS_PER_NODE).node_id] = name
    mark("cluster_started", nodes=sorted(labels.values()))
    config = load_config(None, COLOCATED + [f"cluster.address={cluster.address}", f"trainer.output_dir={out}",
                                            "trainer.run_name=colocated"])
    init_ray(config, NAMESPACE)
    run_dir = out / "colocated"
    run_dir.mkdir(parents=True)
    controller = Controller(config, run_dir=run_dir, run_name="colocated")
    controller.start()
    comp = controller.components
    mark("placement", actors={name: labels.get(node, node) for name, node in actor_nodes().items()},
         same_placement_group={"critic": comp.critic_rollout.placement_group == comp.critic_learner.placement_group,
                               "artist": comp.artist_samplers.placement_group == comp.artist_learner.placement_group},
         shared_bundles={"critic": list(comp.critic_rollout.shared.bundle_indices),
                         "artist": list(comp.artist_samplers.shared.bundle_indices)},
         bundles={"critic": comp.critic_learner.placement_group.bundle_specs,
                  "artist": comp.artist_learner.placement_group.bundle_specs},
         turns={"critic": comp.critic_gpus.turn, "artist": comp.artist_gpus.turn})
    comp.colocation_metrics()  # the start-up sync's changes of turn are not a step's
    for step in (1, 2):
        comp.critic_gpus.history.clear()
        comp.artist_gpus.history.clear()
        metrics = controller.train_step()
        controller.step += 1
        mark(f"step_{step}", edits=metrics["count/edits"], critiques=metrics["count/critiques"],
             critic_version=metrics["policy/critic_version"], artist_version=metrics["policy/artist_version"],
             grpo_loss=metrics.get("learner/grpo/loss"), nft_loss=metrics.get("learner/nft/loss"),
             colocation={k: v for k, v in metrics.items() if k.startswith("colocation/")},
             critic_turns=list(comp.critic_gpus.history), artist_turns=list(comp.artist_gpus.history))
    controller.checkpoint()
    mark("checkpoint", newest=str(controller.run_dir))
    shutdown_started = time.monotonic()
    controller.shutdown()
    mark("shutdown", seconds=round(time.monotonic() - shutdown_started, 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--placement", choices=("disaggregated", "colocated"), default="disaggregated")
    args = parser.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    from rollout.checkpoint import latest_checkpoint, verify_checkpoint
    from rollout.config import load_config
    from rollout.controller import Controller, LearnerLost
    from rollout.env import apply_runtime_defaults
    from rollout.cluster.preflight import PlanRefused
    from rollout.train import init_ray

    apply_runtime_defaults()
    report: dict = {"t0": time.monotonic(), "phases": {}}

    def mark(phase: str, **facts) -> None:
        report["phases"][phase] = {"at_s": round(time.monotonic() - report["t0"], 1), **facts}
        log(f"{phase}: {facts}")

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0, "include_dashboard": False})
    labels = {cluster.head_node.node_id: "head"}
    if args.placement == "colocated":
        try:
            colocated(cluster, labels, args.out, mark)
        finally:
            report["total_s"] = round(time.monotonic() - report.pop("t0"), 1)
            (args.out / "report.json").write_text(json.dumps(report, indent=1))
            ray.shutdown()
            cluster.shutdown()
        return 0
    nodes = {"gpu-1": cluster.add_node(num_cpus=8, num_gpus=GPUS_PER_NODE)}
    labels[nodes["gpu-1"].node_id] = "gpu-1"
    mark("cluster_started", nodes=sorted(labels.values()))

    out = args.out
    overrides = OVERRIDES + [f"cluster.address={cluster.address}", f"trainer.output_dir={out}"]
    try:
        # 1. Refused before any actor starts.
        refused_config = load_config(None, overrides + ["trainer.run_name=refused"])
        init_ray(refused_config, NAMESPACE)
        (out / "refused").mkdir(parents=True)
        controller = Controller(refused_config, run_dir=out / "refused", run_name="refused")
        try:
            controller.start()
            mark("refusal", refused=False)
        except PlanRefused as refused:
            from ray.util import placement_group_table

            mark("refusal", refused=True, lines=refused.lines, actors=len(actor_nodes()),
                 placement_groups=len(placement_group_table()))

        # 2. Wait for the "autoscaler" with progress lines.
        config = load_config(None, overrides + ["trainer.run_name=sim", "cluster.wait_for_autoscaler=true"])
        run_dir = out / "sim"
        run_dir.mkdir()
        controller = Controller(config, run_dir=run_dir, run_name="sim")
        started = time.monotonic()
        starting, errors = start_in_background(controller)
        grown = grow_when_pending(cluster, labels, starting)
        mark("grown", grown=grown)
        starting.join()
        if errors:
            raise errors[0]
        for node in cluster.worker_nodes:
            nodes[labels[node.node_id]] = node
        mark("started", seconds=round(time.monotonic() - started, 1))

        # 3. Placement, one step, a checkpoint.
        placement = {name: labels.get(node, node) for name, node in actor_nodes().items()}
        mark("placement", actors=placement)
        metrics = controller.train_step()
        controller.step += 1
        controller.checkpoint()
        mark("step_1", edits=metrics["count/edits"], restarts=metrics["faults/actor_restarts"])

        # 4. Lose a node that holds replicas but no learner.
        learner_nodes = {placement[name] for name in placement if "learner" in name}
        replica_nodes = {}
        for name, node in placement.items():
            if node != "head" and node not in learner_nodes and not name.startswith("reward"):
                replica_nodes.setdefault(node, []).append(name)
        victim = max(replica_nodes, key=lambda n: len(replica_nodes[n]))
        cluster.remove_node(nodes.pop(victim), allow_graceful=False)
        mark("replica_node_removed", node=victim, actors=sorted(replica_nodes[victim]))
        removed_at = time.monotonic()
        metrics = controller.train_step()
        controller.step += 1
        controller.checkpoint()
        placement_after = {name: labels.get(node, node) for name, node in actor_nodes().items()}
        mark("step_2", seconds=round(time.monotonic() - removed_at, 1), edits=metrics["count/edits"],
             critiques=metrics["count/critiques"], restarts=metrics["faults/actor_restarts"],
             retried=metrics["faults/retried_items"], artist_version=metrics["policy/artist_version"],
             critic_version=metrics["policy/critic_version"], actors=placement_after)

        # 5. Lose the learners' node.
        learner_node = next(node for name, node in placement_after.items() if name.startswith("critic-learner"))
        cluster.remove_node(nodes.pop(learner_node), allow_graceful=False)
        removed_at = time.monotonic()
        try:
            controller.train_step()
            mark("learner_lost", raised=False)
        except LearnerLost as lost:
            newest = latest_checkpoint(run_dir)
            mark("learner_lost", raised=True, node=learner_node, role=lost.role, message=str(lost),
                 checkpoint=str(lost.checkpoint), seconds=round(time.monotonic() - removed_at, 1),
                 newest_step=newest.step if newest else None,
                 newest_verifies=bool(newest and verify_checkpoint(newest.path).step == newest.step))
        shutdown_started = time.monotonic()
        controller.shutdown()
        mark("shutdown", seconds=round(time.monotonic() - shutdown_started, 1))
    finally:
        report["total_s"] = round(time.monotonic() - report.pop("t0"), 1)
        (out / "report.json").write_text(json.dumps(report, indent=1))
        ray.shutdown()
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
