"""The placement planner: which models to colocate and how to split the GPUs so that a step is shortest.

Owns the search ``photocrafter check-config`` prints beside the configured plan (and ``photocrafter plan`` writes
as a config): for a cluster — GPU count, GPU memory, GPUs per node — and the work of one step in a config
(photos, critiques, edits, tokens, timesteps, all unchanged), every placement of the two models (each colocated
or disaggregated, :mod:`rollout.config`'s ``placement``) and a split of the GPUs between their pools (critic
replicas, critic learner, artist samplers, artist learner; a colocated model is one pool), scored by the modelled
step time of :mod:`rollout.cluster.capacity` for the configured ``trainer.max_staleness``. A split is only
proposed when every role fits in GPU memory (the resource plan of :mod:`rollout.cluster.placement`, turns of a
colocated model included) and its bundles can be laid on nodes of the given size (the pre-flight layout of
:mod:`rollout.cluster.preflight`).

Search: a colocated pair of pools has one free count, searched whole; the other placements are searched by
steepest descent from the split proportional to each pool's GPU-seconds (and from an even split), moving GPUs
between two pools in steps that halve down to one unit. The step time is close to convex in each pool's
share (a pool's stage time falls as 1/GPUs, the step takes the longest branch), so descent finds the grid's
optimum; tests/unit/test_planner.py holds it against an exhaustive search on small clusters. The planner keeps
the replicas' tensor-parallel size and each model's other knobs; it never changes the work of a step.

Every GPU of the cluster is given to some pool. Pure arithmetic on the config: no Ray, no GPU.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from rollout.cluster.capacity import Split, StepWork, TimePlan, plan_for, switch_seconds_of
from rollout.cluster.placement import ResourcePlan, plan_resources
from rollout.cluster.preflight import LiveCluster, LiveNode, place_plan
from rollout.config import TrainConfig

IDLE_CEILING = 0.30
"""A proposal whose GPUs wait more than this share of the step is reported as too large a cluster for the work."""

PLACEMENTS = tuple(itertools.product((False, True), repeat=2))
"""(critic colocated, artist colocated) for every placement the planner weighs."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """One scored split."""

    split: Split
    plan: TimePlan | None
    """None when the split does not fit (memory or nodes)."""
    problem: str = ""

    @property
    def step_s(self) -> float:
        return self.plan.step_s if self.plan is not None else math.inf

    def key(self) -> tuple[float, float]:
        """What the planner minimises: the step, then the idle share."""
        return (self.step_s, self.plan.idle if self.plan is not None else 1.0)


@dataclass(slots=True)
class Proposal:
    """What the planner proposes for a cluster, beside the best split of every placement."""

    best: Candidate
    per_placement: dict[tuple[bool, bool], Candidate]
    gpus: int
    evaluated: int
    notes: list[str] = field(default_factory=list)

    def format(self, current: TimePlan | None = None) -> str:
        lines = [f"planner: the step's work on {self.gpus} GPUs, each placement at its best split "
                 f"({self.evaluated} splits weighed; step of trainer.max_staleness)"]
        rows = [("placement", "split", "step s", "idle", "edits/GPU/s")]
        if current is not None:
            rows.append((f"configured ({current.total_gpus:g} GPUs)", _split_cells(current.split), f"{current.step_s:.1f}",
                         f"{100 * current.idle:.0f} %", f"{current.edits_per_gpu_second:.3f}"))
        for placement, candidate in sorted(self.per_placement.items()):
            name = _placement_name(*placement) + ("  <- proposed" if candidate is self.best else "")
            if candidate.plan is None:
                rows.append((name, candidate.problem or "does not fit", "-", "-", "-"))
                continue
            plan = candidate.plan
            rows.append((name, _split_cells(candidate.split), f"{plan.step_s:.1f}", f"{100 * plan.idle:.0f} %",
                         f"{plan.edits_per_gpu_second:.3f}"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def _placement_name(critic_colocated: bool, artist_colocated: bool) -> str:
    return (f"critic {'colocated' if critic_colocated else 'split'}, "
            f"artist {'colocated' if artist_colocated else 'split'}")


def _split_cells(split: Split) -> str:
    critic = (f"critic {split.critic_learner} shared" if split.critic_colocated else
              f"critic {split.replicas}×{split.gpus_per_replica:g} + {split.critic_learner}")
    artist = (f"artist {split.artist_learner} shared" if split.artist_colocated else
              f"artist {split.samplers}×{split.gpus_per_sampler:g} + {split.artist_learner}")
    return f"{critic} | {artist}"


# ------------------------------------------------------------------------------------------ candidates
def config_for(config: TrainConfig, split: Split, gpus: int | None = None) -> TrainConfig:
    """``config`` with ``split``'s placement and role counts (everything else unchanged), for ``gpus`` GPUs."""
    c = config.critic.model_copy(update={"num_replicas": split.replicas, "gpus_per_replica": split.gpus_per_replica})
    a = config.artist.model_copy(update={"num_samplers": split.samplers, "gpus_per_sampler": split.gpus_per_sampler})
    lc = config.learner.critic.model_copy(update={"gpus": split.critic_learner})
    la = config.learner.artist.model_copy(update={"gpus": split.artist_learner})
    placement = config.placement.model_copy(update={
        "critic": "colocated" if split.critic_colocated else "disaggregated",
        "artist": "colocated" if split.artist_colocated else "disaggregated"})
    cluster = config.cluster.model_copy(update={"num_gpus": int(gpus if gpus is not None else split.total_gpus)})
    return config.model_copy(update={
        "critic": c, "artist": a, "learner": config.learner.model_copy(update={"critic": lc, "artist": la}),
        "placement": placement, "cluster": cluster})


def synthetic_nodes(gpus: int, gpus_per_node: int) -> LiveCluster:
    """Nodes of ``gpus_per_node`` GPUs (the last one holding the rest), with CPUs to spare: what the planner lays
    a proposal on."""
    sizes = [gpus_per_node] * (gpus // gpus_per_node) + ([gpus % gpus_per_node] if gpus % gpus_per_node else [])
    return LiveCluster([LiveNode(node_id=f"node-{i}", address=f"node-{i}", is_head=False, gpus=float(n),
                                 cpus=1e6, memory_gib=1e6, free_gpus=float(n), free_cpus=1e6)
                        for i, n in enumerate(sizes)])


class Evaluator:
    """Scores splits of one config's work on one cluster, remembering each it has seen."""

    def __init__(self, config: TrainConfig, gpus: int, gpus_per_node: int):
        self.config, self.gpus, self.gpus_per_node = config, gpus, gpus_per_node
        self.work = StepWork.from_config(config)
        self.nodes = synthetic_nodes(gpus, gpus_per_node)
        self._seen: dict[Split, Candidate] = {}

    @property
    def evaluated(self) -> int:
        return len(self._seen)

    def __call__(self, split: Split) -> Candidate:
        if split not in self._seen:
            self._seen[split] = self._score(split)
        return self._seen[split]

    def _score(self, split: Split) -> Candidate:
        candidate_config = config_for(self.config, split, self.gpus)
        resources: ResourcePlan = plan_resources(candidate_config)
        memory = [p for p in resources.problems if "cluster.num_gpus" not in p]
        if memory:
            return Candidate(split, None, memory[0].split(";")[0])
        placed = place_plan(resources, self.nodes, free_only=False)
        if not placed.ok:
            return Candidate(split, None, placed.problems[0].split(":")[0] + ": cannot be laid on the nodes")
        cap = candidate_config.cluster.capacity
        return Candidate(split, plan_for(self.work, split, cap, self.config.trainer.max_staleness,
                                         switch_seconds_of(resources, cap)))


# -------------------------------------------------------------------------------------------- the search
def pools_to_split(placement: tuple[bool, bool], pools: tuple[int, ...], replica_gpus: int,
                   sampler_gpus: int) -> Split:
    """A split from pool sizes: (critic shared | replicas, critic learner) + (artist shared | samplers, artist
    learner), replicas and samplers counted in actors of ``replica_gpus`` / ``sampler_gpus`` GPUs."""
    values = list(pools)

    def model(colocated: bool, gpus_per_actor: int) -> tuple[int, float, int]:
        """(serving actors, GPUs each, learner GPUs) of one model, taking its pools from ``values``."""
        if colocated:
            shared = values.pop(0)
            return shared, 1.0, shared
        actors, learner = values.pop(0), values.pop(0)
        return actors, float(gpus_per_actor), learner

    replicas, per_replica, critic_learner = model(placement[0], replica_gpus)
    samplers, per_sampler, artist_learner = model(placement[1], sampler_gpus)
    return Split(critic_colocated=placement[0], artist_colocated=placement[1], replicas=replicas,
                 gpus_per_replica=per_replica, critic_learner=critic_learner, samplers=samplers,
                 gpus_per_sampler=per_sampler, artist_learner=artist_learner)


def pool_units(placement: tuple[bool, bool], replica_gpus: int, sampler_gpus: int) -> tuple[int, ...]:
    """GPUs per unit of each pool of ``placement`` (a replica or sampler pool moves a whole actor at a time)."""
    critic = (1,) if placement[0] else (replica_gpus, 1)
    artist = (1,) if placement[1] else (sampler_gpus, 1)
    return critic + artist


def all_pool_sizes(units: tuple[int, ...], gpus: int) -> Iterable[tuple[int, ...]]:
    """Every assignment of at least one unit to each pool that uses exactly ``gpus`` GPUs (the exhaustive
    search the tests compare the planner with)."""
    def fill(index: int, left: int) -> Iterable[tuple[int, ...]]:
        unit = units[index]
        if index == len(units) - 1:
            if left >= unit and left % unit == 0:
                yield (left // unit,)
            return
        reserve = sum(units[index + 1:])
        for count in range(1, (left - reserve) // unit + 1):
            for rest in fill(index + 1, left - count * unit):
                yield (count, *rest)

    yield from fill(0, gpus)


def descend(start: tuple[int, ...], units: tuple[int, ...], score: Callable[[tuple[int, ...]], Candidate]
            ) -> Candidate:
    """Steepest descent over moves of ``step`` units' worth of GPUs from one pool to another, the step halving
    to one unit once no move improves."""
    best_pools, best = start, score(start)
    step = max(1, max(start) // 2)
    while True:
        moves = []
        for giver, taker in itertools.permutations(range(len(units)), 2):
            gpus = step * units[giver]
            if gpus % units[taker]:
                continue
            pools = list(best_pools)
            pools[giver] -= step
            pools[taker] += gpus // units[taker]
            if pools[giver] >= 1:
                moves.append(tuple(pools))
        scored = [(score(pools), pools) for pools in moves]
        improving = [(c, pools) for c, pools in scored if c.key() < best.key()]
        if improving:
            best, best_pools = min(improving, key=lambda item: item[0].key())
            continue
        if step == 1:
            return best
        step //= 2


def proportional_start(units: tuple[int, ...], weights: list[float], gpus: int) -> tuple[int, ...]:
    """Pool sizes (in units) proportional to ``weights``, at least one unit each, using exactly ``gpus`` GPUs
    where the units allow (the remainder goes to the last pool of one-GPU units)."""
    total = sum(weights) or 1.0
    sizes = [max(1, int(gpus * w / total) // u) for w, u in zip(weights, units)]
    spare = gpus - sum(s * u for s, u in zip(sizes, units))
    ones = [i for i, u in enumerate(units) if u == 1]
    while spare < 0:
        index = max(range(len(sizes)), key=lambda i: sizes[i] * units[i])
        sizes[index] -= 1
        spare += units[index]
    sizes[ones[-1]] += spare
    return tuple(sizes)


def pool_weights(placement: tuple[bool, bool], plan: TimePlan) -> list[float]:
    """GPU-seconds of each pool's stages on the configured split: the proportional start of a search."""
    work = {s.name: s.gpus * s.seconds for s in plan.stages}
    critic_serve = work["critic_rollout"] + work["rescore"]
    critic_train = work["prepare"] + work["critic_update"]
    weights = [critic_serve + critic_train] if placement[0] else [critic_serve, critic_train]
    weights += [work["artist_sample"] + work["artist_update"]] if placement[1] else [work["artist_sample"],
                                                                                      work["artist_update"]]
    return weights


def propose(config: TrainConfig, *, gpus: int | None = None, gpus_per_node: int | None = None) -> Proposal:
    """The placement and split of ``gpus`` GPUs (default ``cluster.num_gpus``) that minimise the modelled step
    time of ``config``'s work, within GPU memory (``cluster.gpu_memory_gib``) on nodes of ``gpus_per_node``."""
    gpus = int(gpus if gpus is not None else config.cluster.num_gpus)
    gpus_per_node = int(gpus_per_node or config.cluster.gpus_per_node)
    replica_gpus = max(1, math.ceil(config.critic.gpus_per_replica))
    sampler_gpus = max(1, math.ceil(config.artist.gpus_per_sampler))
    if replica_gpus > gpus_per_node:
        raise ValueError(f"critic.gpus_per_replica ({replica_gpus}) exceeds cluster.gpus_per_node ({gpus_per_node})")
    evaluate = Evaluator(config, gpus, gpus_per_node)
    reference = plan_for(evaluate.work, Split.from_config(config_for(config, Split.from_config(config))),
                         config.cluster.capacity, config.trainer.max_staleness)
    per_placement: dict[tuple[bool, bool], Candidate] = {}
    for placement in PLACEMENTS:
        units = pool_units(placement, replica_gpus, sampler_gpus)
        if sum(units) > gpus:
            continue

        def score(pools: tuple[int, ...], placement=placement) -> Candidate:
            return evaluate(pools_to_split(placement, pools, replica_gpus, sampler_gpus))

        if len(units) == 2:  # one free count: search it whole
            found = [score(pools) for pools in all_pool_sizes(units, gpus)]
        else:
            starts = {proportional_start(units, pool_weights(placement, reference), gpus),
                      proportional_start(units, [1.0] * len(units), gpus)}
            found = [descend(start, units, score) for start in starts]
        per_placement[placement] = min(found, key=Candidate.key)
    best = min(per_placement.values(), key=Candidate.key)
    if best.plan is None:
        raise ValueError(f"no placement of the step's work fits {gpus} GPUs of {config.cluster.gpu_memory_gib:g} GiB: "
                         f"{best.problem}")
    proposal = Proposal(best=best, per_placement=per_placement, gpus=gpus, evaluated=evaluate.evaluated)
    if best.plan.idle > IDLE_CEILING:
        proposal.notes.append(
            f"even the best split leaves the GPUs idle {100 * best.plan.idle:.0f} % of the step: the step's work is "
            f"too small for {gpus} GPUs; raise trainer.batch_size (or use fewer GPUs)")
    return proposal


def brute_force(config: TrainConfig, *, gpus: int, gpus_per_node: int) -> Candidate:
    """The best split by trying every one (small clusters only): the reference the planner is tested against."""
    evaluate = Evaluator(config, gpus, gpus_per_node)
    replica_gpus = max(1, math.ceil(config.critic.gpus_per_replica))
    sampler_gpus = max(1, math.ceil(config.artist.gpus_per_sampler))
    found = [evaluate(pools_to_split(placement, pools, replica_gpus, sampler_gpus))
             for placement in PLACEMENTS
             for pools in all_pool_sizes(pool_units(placement, replica_gpus, sampler_gpus), gpus)]
    return min(found, key=Candidate.key)
