"""Pre-flight: the run's resource plan against the live Ray cluster, before any actor of the run exists.

Owns reading the live nodes (GPUs, CPUs, memory and accelerator type per node, and what is free on each), laying
the plan's bundles onto them the way each role's placement group will ask for them (learners packed,
vLLM replicas packed, samplers and reward workers spread), and the verdict: a plan that cannot be placed is
refused with one line per role that does not fit, naming the knob to change — or, with
``cluster.wait_for_autoscaler``, reported as missing while start-up waits for new nodes. Only the nodes' whole
capacity decides a refusal: resources that other work holds right now are reported, and start-up waits for them.

The layout is a feasibility check, not a prediction of Ray's scheduler: bundles are laid greedily (best fit for
packed groups, fewest bundles per node for spread ones), which can only miss a fit Ray would find in rare
fragmented cases, never claim one that does not exist node by node. It creates no actor or placement group;
``place_plan`` is pure, so unit tests drive it with hand-built clusters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rollout.cluster.placement import GIB, ResourcePlan, RolePlan, learner_strategy
from rollout.cluster.startup import ROLE_KNOBS, describe_bundles, print_progress

# Roles in the order the run creates their placement groups (earlier roles take resources first).
CREATION_ORDER = ("critic-learner", "artist-learner", "critic-rollout", "artist-sampler", "reward")

GPU_MEMORY_GIB = {"H100": 80.0, "H200": 141.0, "B200": 180.0, "A100-80G": 80.0, "A100-40G": 40.0, "L40S": 48.0,
                  "L4": 24.0, "A10G": 24.0}
"""Memory of the accelerator types Ray advertises (``accelerator_type:<name>``), from NVIDIA's datasheets."""

_EPS = 1e-9


@dataclass(slots=True)
class LiveNode:
    """One alive node as Ray reports it."""

    node_id: str
    address: str
    is_head: bool
    gpus: float
    cpus: float
    memory_gib: float
    """Host memory Ray may hand out on the node (its ``memory`` resource)."""
    free_gpus: float
    free_cpus: float
    accelerator: str = ""
    """Ray's ``accelerator_type`` of the node's GPUs (e.g. ``H100``), empty when not detected."""

    def format(self) -> str:
        kind = f" {self.accelerator}" if self.accelerator else ""
        head = " (head)" if self.is_head else ""
        return (f"{self.address} [{self.node_id[:8]}]{head}: GPU {self.free_gpus:g}/{self.gpus:g}{kind} free, "
                f"CPU {self.free_cpus:g}/{self.cpus:g} free, memory {self.memory_gib:.0f} GiB")


@dataclass(slots=True)
class LiveCluster:
    """The alive nodes of the cluster the driver is connected to."""

    nodes: list[LiveNode]

    @classmethod
    def from_ray(cls) -> LiveCluster:
        """Read the alive nodes and what is free on each (Ray's per-node availability, as verl's resource
        pool check reads it; the totals when this Ray build lacks it)."""
        import ray

        try:
            from ray._private.state import available_resources_per_node

            free = available_resources_per_node()
        except (ImportError, AttributeError):
            free = {}
        nodes = []
        for info in ray.nodes():
            if not info.get("Alive"):
                continue
            total = info.get("Resources", {})
            available = free.get(info["NodeID"], total)
            accelerator = next((key.split(":", 1)[1] for key in total if key.startswith("accelerator_type:")), "")
            nodes.append(LiveNode(
                node_id=info["NodeID"], address=info.get("NodeManagerAddress", "?"),
                is_head="node:__internal_head__" in total, gpus=total.get("GPU", 0.0), cpus=total.get("CPU", 0.0),
                memory_gib=total.get("memory", 0.0) / GIB, free_gpus=available.get("GPU", 0.0),
                free_cpus=available.get("CPU", 0.0), accelerator=accelerator))
        return cls(nodes)

    @property
    def gpus(self) -> float:
        return sum(n.gpus for n in self.nodes)

    @property
    def free_gpus(self) -> float:
        return sum(n.free_gpus for n in self.nodes)

    @property
    def free_cpus(self) -> float:
        return sum(n.free_cpus for n in self.nodes)

    def format(self, max_nodes: int = 16) -> list[str]:
        lines = [f"live cluster: {len(self.nodes)} node(s), GPU {self.free_gpus:g}/{self.gpus:g} free, "
                 f"CPU {self.free_cpus:g}/{sum(n.cpus for n in self.nodes):g} free"]
        shown = sorted(self.nodes, key=lambda n: (not n.is_head, n.address, n.node_id))
        lines += [f"  {n.format()}" for n in shown[:max_nodes]]
        if len(shown) > max_nodes:
            lines.append(f"  … and {len(shown) - max_nodes} more")
        return lines


@dataclass(slots=True)
class RolePlacement:
    """Where one role's bundles would go on the live cluster."""

    role: str
    bundles: list[dict[str, float]]
    strategy: str
    nodes: list[str] = field(default_factory=list)
    """Node id per bundle, in bundle order; empty when the role does not fit."""


@dataclass(slots=True)
class PreflightResult:
    placements: list[RolePlacement]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def placement(self, role: str) -> RolePlacement:
        return next(p for p in self.placements if p.role == role)


class PlanRefused(RuntimeError):
    """The plan cannot be placed on the live cluster; ``lines`` names each role that does not fit."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        super().__init__("\n".join(lines))


def role_bundles(role: RolePlan, cluster: LiveCluster) -> tuple[list[dict[str, float]], str]:
    """The bundles and strategy the role's placement group asks for.

    A learner is one bundle per rank actor (one GPU each, or CPU ranks), STRICT_PACK when some node has a GPU for
    every rank and PACK (as few nodes as possible) otherwise (``rollout.cluster.placement.learner_strategy``, as the
    learner groups ask). Every other role asks for one bundle per actor; a replica's GPUs (its tensor-parallel
    ranks) always share one bundle, hence one node.
    """
    if role.role.endswith("-learner"):
        bundle = {"CPU": role.cpus, **({"GPU": role.gpus} if role.gpus > 0 else {})}
        return [dict(bundle) for _ in range(role.count)], learner_strategy(role.count, role.gpus,
                                                                           [n.gpus for n in cluster.nodes])
    bundle = {"CPU": role.cpus, **({"GPU": role.gpus} if role.gpus > 0 else {})}
    return [dict(bundle) for _ in range(role.count)], role.strategy


def _fits(bundle: dict[str, float], free: dict[str, float]) -> bool:
    return all(free.get(key, 0.0) + _EPS >= value for key, value in bundle.items())


def _take(bundle: dict[str, float], free: dict[str, float]) -> None:
    for key, value in bundle.items():
        free[key] = free.get(key, 0.0) - value


def _total(bundles: list[dict[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for bundle in bundles:
        for key, value in bundle.items():
            total[key] = total.get(key, 0.0) + value
    return total


def _lay_out(bundles: list[dict[str, float]], strategy: str,
             free: dict[str, dict[str, float]]) -> list[str] | None:
    """Node id per bundle, taking the resources from ``free``; None (``free`` untouched) when it cannot fit."""
    trial = {node: dict(resources) for node, resources in free.items()}

    def tightness(node: str) -> tuple[float, float]:
        return trial[node].get("GPU", 0.0), trial[node].get("CPU", 0.0)

    nodes: list[str] = []
    if strategy in ("STRICT_PACK", "PACK"):
        whole = _total(bundles)
        candidates = sorted((n for n in trial if _fits(whole, trial[n])), key=tightness)
        if candidates:  # best fit: the tightest node that holds the whole group
            nodes = [candidates[0]] * len(bundles)
            _take(whole, trial[candidates[0]])
        elif strategy == "PACK":  # as few nodes as possible: fill the roomiest node first
            for bundle in bundles:
                used = [n for n in dict.fromkeys(nodes) if _fits(bundle, trial[n])]
                roomy = sorted((n for n in trial if _fits(bundle, trial[n])), key=tightness, reverse=True)
                choice = (used or roomy or [None])[0]
                if choice is None:
                    return None
                nodes.append(choice)
                _take(bundle, trial[choice])
        else:
            return None
    else:  # SPREAD: each bundle to the fitting node holding the fewest of this group's bundles
        for bundle in bundles:
            fitting = [n for n in trial if _fits(bundle, trial[n])]
            if not fitting:
                return None
            choice = min(fitting, key=lambda n: (nodes.count(n), *(-v for v in tightness(n))))
            nodes.append(choice)
            _take(bundle, trial[choice])
    free.update(trial)
    return nodes


def _why_not(role: str, bundles: list[dict[str, float]], strategy: str, cluster: LiveCluster,
             free: dict[str, dict[str, float]]) -> str:
    needed = _total(bundles)
    largest_gpus = max((n.gpus for n in cluster.nodes), default=0.0)
    free_gpus = sum(f.get("GPU", 0.0) for f in free.values())
    free_cpus = sum(f.get("CPU", 0.0) for f in free.values())
    gpu_per_bundle = max((b.get("GPU", 0.0) for b in bundles), default=0.0)
    if gpu_per_bundle > largest_gpus + _EPS:
        reason = f"one bundle needs {gpu_per_bundle:g} GPUs but the largest node has {largest_gpus:g}"
    elif strategy == "STRICT_PACK":
        reason = (f"they must share one node, and no node has {needed.get('GPU', 0.0):g} GPUs and "
                  f"{needed.get('CPU', 0.0):g} CPUs free")
    else:
        reason = (f"it needs {needed.get('GPU', 0.0):g} GPUs and {needed.get('CPU', 0.0):g} CPUs; after the roles "
                  f"placed before it the cluster has {free_gpus:g} GPUs and {free_cpus:g} CPUs free")
    knobs = ROLE_KNOBS.get(role, "the role's size")
    return (f"{role}: {describe_bundles(bundles)} ({strategy}) cannot be placed on the live cluster: {reason}; "
            f"lower {knobs}, or add nodes")


def place_plan(plan: ResourcePlan, cluster: LiveCluster, *, gpu_memory_gib: float | None = None,
               free_only: bool = True) -> PreflightResult:
    """Lay every role of ``plan`` onto ``cluster`` in creation order; one problem line per role that does not
    fit. ``free_only`` lays it onto what is free now, else onto the nodes' whole capacity. With
    ``gpu_memory_gib`` (the config's figure), GPUs of a known type with less memory are a problem too: the plan's
    memory checks were made for GPUs that are not there."""
    free = {n.node_id: {"GPU": n.free_gpus if free_only else n.gpus, "CPU": n.free_cpus if free_only else n.cpus}
            for n in cluster.nodes}
    order = {role: i for i, role in enumerate(CREATION_ORDER)}
    placements, problems = [], []
    for role in sorted(plan.roles, key=lambda r: order.get(r.role, len(order))):
        bundles, strategy = role_bundles(role, cluster)
        nodes = _lay_out(bundles, strategy, free)
        placements.append(RolePlacement(role.role, bundles, strategy, nodes or []))
        if nodes is None:
            problems.append(_why_not(role.role, bundles, strategy, cluster, free))
    if gpu_memory_gib is not None:
        for node in cluster.nodes:
            actual = GPU_MEMORY_GIB.get(node.accelerator)
            if node.gpus and actual is not None and actual < 0.95 * gpu_memory_gib:
                problems.append(f"cluster.gpu_memory_gib is {gpu_memory_gib:g} but node {node.address} has "
                                f"{node.accelerator} GPUs (~{actual:g} GiB): the memory plan assumed GPUs that are "
                                f"not there; set cluster.gpu_memory_gib: {actual:g} and rerun check-config")
                break
    return PreflightResult(placements, problems)


def check_live_cluster(plan: ResourcePlan, cluster_config: Any, live: LiveCluster | None = None, *,
                       report: Callable[[str], None] = print_progress) -> PreflightResult:
    """Compare ``plan`` with the live cluster and print the verdict.

    A plan that does not fit the nodes' whole capacity raises :class:`PlanRefused`, unless
    ``cluster_config.wait_for_autoscaler``: then the missing resources are printed and start-up goes on to wait
    for new nodes. A plan that fits the capacity but not what is free right now (other work holds part of it) is
    reported and start-up waits for those resources. Each role's wait is bounded by
    ``cluster.placement_timeout_s``.
    """
    live = live if live is not None else LiveCluster.from_ray()
    result = place_plan(plan, live, gpu_memory_gib=cluster_config.gpu_memory_gib, free_only=False)
    for line in live.format():
        report(f"pre-flight: {line}")
    if result.ok:
        now = place_plan(plan, live)
        if now.ok:
            report(f"pre-flight: the plan fits ({plan.total_gpus:g} GPUs, {plan.total_cpus:g} CPUs)")
        else:
            for problem in now.problems:
                report(f"pre-flight: busy now: {problem}")
            report(f"pre-flight: the nodes can hold the plan but other work holds part of it; each role waits up to "
                   f"{cluster_config.placement_timeout_s:.0f} s for its resources (cluster.placement_timeout_s)")
        return now
    if cluster_config.wait_for_autoscaler:
        for problem in result.problems:
            report(f"pre-flight: not yet placeable: {problem}")
        report(f"pre-flight: waiting for the autoscaler to add nodes (cluster.wait_for_autoscaler); each role waits "
               f"up to {cluster_config.placement_timeout_s:.0f} s (cluster.placement_timeout_s)")
        return result
    raise PlanRefused(result.problems + ["no actor was started; to wait for an autoscaler to add nodes instead, "
                                         "set cluster.wait_for_autoscaler: true"])
