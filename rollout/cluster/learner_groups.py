"""CriticLearnerGroup and ArtistLearnerGroup: the driver-side owners of a learner's ranks.

Each learner is N Ray actors, one per GPU (``learner.<role>.gpus``; one CPU rank when 0), joined by a
``torch.distributed`` process group and sharded with FSDP2 (:mod:`learner.distributed`). A group owns their
placement group (one bundle per rank, STRICT_PACK when the ranks fit on one node, else PACK so they spill over
as few nodes as possible), their names (``critic-learner-<rank>``), the rendezvous (rank 0's address and a free
port), and fanning each call out to every rank — every rank takes part in every call, since the model's
collectives run inside — and back in: the controller sees one handle per learner, like the rollout groups.

How work is split: the critic group gives each rank a share of the critiques to prepare, balanced by tokens;
each rank keeps what it prepared and later trains on it, given every group so that advantages and the
normalising token counts are those of the whole batch. The artist group gives every rank the same groups (one
object in the object store); the learner splits the edits itself. Results come back from rank 0, which holds the
reduced metrics.

Every wait has a deadline (placement and model load from the ``cluster`` section, with progress lines), and a rank
that fails or dies fails the call at once — the others would otherwise wait inside a collective. A rank that
dies raises :class:`LearnerRankLost` naming the learner, also when a surviving rank's collective reports the lost
peer before Ray does: learners do not restart in place; the run stops and is resumed from its last checkpoint. A
group must not hold weights or images: those travel as ObjectRefs.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from rollout.cluster.learner_actors import ArtistLearnerRank, CriticLearnerRank, LearnerRank
from rollout.cluster.placement import learner_strategy
from rollout.cluster.startup import StartupLimits, foreground_runtime_env, wait_for_placement, wait_until_ready

logger = logging.getLogger(__name__)


class LearnerRankLost(RuntimeError):
    """A rank of a learner died (its node was lost, or its process crashed) during a call."""

    def __init__(self, role: str, rank_name: str, message: str):
        self.role = role
        """``critic-learner`` or ``artist-learner``."""
        self.rank_name = rank_name
        super().__init__(message)

    @classmethod
    def during(cls, role: str, rank_name: str, what: str, error: BaseException) -> "LearnerRankLost":
        """The loss of ``rank_name`` during ``what``, from the error Ray raised for it (its first line quoted)."""
        cause = (str(error).strip().splitlines() or ["actor died"])[0]
        return cls(role, rank_name, f"{rank_name} died during {what} ({cause})")


def token_balanced_shares(lengths: Sequence[int], parts: int) -> list[list[int]]:
    """Split item indices into ``parts`` shares of near-equal total length (longest item to the lightest share
    first); each share lists its indices in their original order."""
    loads = [0] * parts
    shares: list[list[int]] = [[] for _ in range(parts)]
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        lightest = min(range(parts), key=lambda p: (loads[p], p))
        shares[lightest].append(index)
        loads[lightest] += lengths[index]
    return [sorted(share) for share in shares]


PEER_FAILURE_GRACE_S = 60.0
"""How long a rank's failure waits for the other ranks to show whether one of them died (Ray learns of a lost
node within about 30 s by default)."""


def wait_for_ranks(refs: list, names: Sequence[str], role: str, timeout_s: float, what: str, *,
                   peer_failure_grace_s: float = PEER_FAILURE_GRACE_S) -> list:
    """Every rank's result of ``refs`` (one ObjectRef per rank, in rank order), failing as soon as one rank fails.

    A rank that died raises :class:`LearnerRankLost`. A rank that raised is not always the cause: when a peer's
    node is lost, the survivors' collectives fail at once ("connection closed by peer" from gloo, an NCCL error)
    while Ray may take seconds to report the peer dead. So before reporting a raised error, the other ranks get up
    to ``peer_failure_grace_s`` to finish or die; a death among them is the failure reported, as a lost rank, which
    the controller turns into a stop with the checkpoint to resume from. ``TimeoutError`` names the ranks still
    running at ``timeout_s``."""
    import ray

    deadline = time.monotonic() + timeout_s
    pending = list(refs)
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            stalled = [name for ref, name in zip(refs, names) if ref in pending]
            raise TimeoutError(f"{role}: {what} did not finish within {timeout_s:.0f} s "
                               f"(waiting for {', '.join(stalled)})")
        done, pending = ray.wait(pending, num_returns=1, timeout=min(remaining, 30.0))
        for ref in done:
            name = names[refs.index(ref)]
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                raise LearnerRankLost.during(role, name, what, exc) from exc
            except ray.exceptions.RayTaskError as exc:
                lost = _first_lost_rank(refs, names, pending, role, what, min(peer_failure_grace_s, remaining))
                if lost is not None:
                    raise lost from exc
                raise RuntimeError(f"{role}: {name} failed during {what}: {exc.cause!r}") from exc.cause
    return ray.get(refs)


def _first_lost_rank(refs: list, names: Sequence[str], pending: list, role: str, what: str,
                     grace_s: float) -> LearnerRankLost | None:
    """The first of ``pending`` whose rank turns out dead within ``grace_s``; None when they all finish (with a
    result or an error of their own) or are still running when the grace ends."""
    import ray

    deadline = time.monotonic() + grace_s
    pending = list(pending)
    while pending and (remaining := deadline - time.monotonic()) > 0:
        done, pending = ray.wait(pending, num_returns=1, timeout=remaining)
        for ref in done:
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                return LearnerRankLost.during(role, names[refs.index(ref)], what, exc)
            except ray.exceptions.RayTaskError:
                continue  # a survivor's own collective failure: keep looking for the rank that died
    return None


class LearnerGroup:
    """N ranks of one learner behind one handle. Subclasses add the learner's verbs."""

    rank_class: type[LearnerRank] = LearnerRank

    def __init__(self, rank_args: tuple, rank_kwargs: dict[str, Any], *, gpus: int, ranks: int | None = None,
                 cpus_per_rank: float = 1.0, namespace: str | None = None, startup: StartupLimits | None = None,
                 call_timeout_s: float = 7200.0, collective_timeout_s: float = 1800.0,
                 peer_failure_grace_s: float = PEER_FAILURE_GRACE_S):
        """``gpus`` (the config's ``learner.<role>.gpus``) gives one rank per GPU, or one CPU rank when 0;
        ``ranks`` instead asks for that many CPU ranks (gloo), for machines without GPUs. ``startup`` bounds
        placement and model load (``cluster.*``)."""
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from learner.distributed import Rendezvous

        startup = startup or StartupLimits()
        self.role = self.rank_class.role
        if ranks is not None and gpus:
            raise ValueError(f"{self.role}: give either gpus or CPU ranks, not both")
        self.num_ranks = int(ranks) if ranks is not None else max(1, int(gpus))
        gpus_per_rank = 1.0 if gpus > 0 else 0.0
        self.call_timeout_s = call_timeout_s
        self.peer_failure_grace_s = peer_failure_grace_s
        bundle = {"CPU": float(cpus_per_rank), **({"GPU": gpus_per_rank} if gpus_per_rank else {})}
        node_gpus = [node["Resources"].get("GPU", 0.0) for node in ray.nodes() if node.get("Alive")]
        strategy = learner_strategy(self.num_ranks, gpus_per_rank, node_gpus)
        self.placement_group = placement_group([dict(bundle) for _ in range(self.num_ranks)], strategy=strategy)
        wait_for_placement(self.placement_group, self.role, startup)
        remote = ray.remote(self.rank_class)
        self.ranks = [
            remote.options(
                name=f"{self.role}-{rank}", namespace=namespace, num_cpus=cpus_per_rank, num_gpus=gpus_per_rank,
                max_restarts=0, max_task_retries=0, runtime_env=foreground_runtime_env(),
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement_group,
                                                                     placement_group_bundle_index=rank),
            ).remote(rank, self.num_ranks, gpus_per_rank, *rank_args, cpu_fallback=startup.cpu_fallback,
                     **rank_kwargs)
            for rank in range(self.num_ranks)
        ]
        self.names = [f"{self.role}-{rank}" for rank in range(self.num_ranks)]
        try:
            address, port = wait_until_ready([self.ranks[0].rendezvous_address.remote()], self.names[:1],
                                             startup)[0]
            rendezvous = Rendezvous(address=address, port=port, world_size=self.num_ranks,
                                    timeout_s=collective_timeout_s)
            self.info = wait_until_ready(self.launch("setup", rendezvous), self.names, startup)
        except BaseException:
            self.shutdown()
            raise

    # ----------------------------------------------------------------------------------------- fan-out
    def launch(self, method: str, *args: Any) -> list:
        """Start ``method`` on every rank; returns their ObjectRefs (see :meth:`collect`)."""
        return [getattr(rank, method).remote(*args) for rank in self.ranks]

    def collect(self, refs: list, *, timeout_s: float | None = None, what: str = "call") -> Any:
        """Rank 0's result of a launched call, once every rank has finished; fails at once when a rank fails."""
        return self._wait(refs, self.call_timeout_s if timeout_s is None else timeout_s, what)[0]

    def call(self, method: str, *args: Any, timeout_s: float | None = None, what: str | None = None) -> list:
        """Run ``method`` on every rank and return every rank's result."""
        refs = self.launch(method, *args)
        return self._wait(refs, self.call_timeout_s if timeout_s is None else timeout_s,
                          what or method)

    def _wait(self, refs: list, timeout_s: float, what: str) -> list:
        """Every rank's result of ``refs`` (one per rank, in rank order)."""
        return wait_for_ranks(refs, self.names, self.role, timeout_s, what,
                              peer_failure_grace_s=self.peer_failure_grace_s)

    # ------------------------------------------------------------------------------------- lifecycle
    def version(self) -> int:
        return int(self.call("version", timeout_s=60.0)[0])

    def save(self, directory: str) -> None:
        self.call("save_checkpoint", directory, what="checkpoint save")

    def load(self, directory: str) -> None:
        self.call("load_checkpoint", directory, what="checkpoint load")

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for rank in getattr(self, "ranks", []):
            try:
                ray.kill(rank)
            except Exception as exc:  # noqa: BLE001 - teardown must go on
                print(f"[photocrafter] shutdown of {self.role}: {exc}", file=sys.stderr)
        self.ranks = []
        remove_placement_group(self.placement_group)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.num_ranks} rank(s))"


class CriticLearnerGroup(LearnerGroup):
    """The critic's GRPO learner as N ranks: ``prepare`` (old/ref log-probs, H_c), ``update``, weights."""

    rank_class = CriticLearnerRank

    def __init__(self, model_path: str, config, *, learner_kwargs: dict[str, Any], num_threads: int | None = None,
                 **group_kwargs: Any):
        super().__init__((str(model_path), config), {"num_threads": num_threads, **learner_kwargs},
                         gpus=config.gpus, **group_kwargs)

    def prepare(self, critiques: Sequence) -> tuple[list, dict[str, float]]:
        """(one Conditioning per critique, in the given order, H_c as ObjectRefs; metrics reduced over ranks)."""
        critiques = list(critiques)
        if not critiques:
            raise ValueError("prepare: no critiques given")
        lengths = [len(c.prompt_token_ids) + len(c.completion_token_ids) for c in critiques]
        shares = token_balanced_shares(lengths, self.num_ranks)
        refs = [rank.prepare.remote([critiques[i] for i in share], critiques[0])
                for rank, share in zip(self.ranks, shares)]
        results = self._wait(refs, self.call_timeout_s, "prepare")
        ordered: list = [None] * len(critiques)
        for share, (conditionings, _) in zip(shares, results):
            for index, conditioning in zip(share, conditionings):
                ordered[index] = conditioning
        return ordered, results[0][1]

    def launch_update(self, groups: Sequence) -> list:
        """Start the GRPO update on every rank (each trains on the critiques it prepared); the groups travel
        once through the object store, without their images."""
        import ray

        light = [replace(group, critiques=[replace(c, image=None) for c in group.critiques]) for group in groups]
        groups_ref = ray.put(light)
        return self.launch("update", groups_ref)

    def weights_ref(self) -> tuple[int, Any, str, int]:
        """(version, ObjectRef of the full weights, digest, bytes), gathered from the ranks and put by rank 0."""
        return self.call("weights_ref", what="weight gather")[0]


class ArtistLearnerGroup(LearnerGroup):
    """The artist's DiffusionNFT learner as N ranks: ``update`` and the sampling adapter for the samplers."""

    rank_class = ArtistLearnerRank

    def __init__(self, artist_path: str, config, artist_config, *, learner_kwargs: dict[str, Any],
                 num_threads: int | None = None, **group_kwargs: Any):
        super().__init__((str(artist_path), config, artist_config), {"num_threads": num_threads, **learner_kwargs},
                         gpus=config.gpus, **group_kwargs)

    def launch_update(self, groups: Sequence) -> list:
        """Start the DiffusionNFT update on every rank; the groups travel once through the object store."""
        import ray

        groups_ref = ray.put(list(groups))
        return self.launch("update", groups_ref)

    def sampler_weights_ref(self) -> tuple[int, Any, int]:
        """(version, ObjectRef of the sampling adapter, its bytes), gathered from the ranks, put by rank 0."""
        return self.call("sampler_weights_ref", what="adapter gather")[0]


__all__ = ["ArtistLearnerGroup", "CriticLearnerGroup", "LearnerGroup", "LearnerRankLost", "token_balanced_shares",
           "wait_for_ranks"]
