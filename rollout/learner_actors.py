"""One rank of a learner as a Ray actor: what a learner group adds around ``CriticLearner`` and ``ArtistLearner``.

Owns the actor-side glue of one rank, so weights and hidden states stay out of the controller process:

- joining the learner's process group (:meth:`LearnerRank.setup`, given rank 0's rendezvous address) and
  building the learner on this rank's device: its GPU, or the CPU (gloo) when it has none;
- ``prepare`` keeps this rank's prepared critiques (old/reference log-probs, images) for the update that
  follows, and puts each H_c into the object store, returning only ``Conditioning`` records whose ``hidden``
  is an ObjectRef the samplers fetch directly;
- weights for sync are gathered by every rank and put into the object store by rank 0;
- checkpoints are written by the ranks themselves into the checkpoint directory (shared storage on a cluster):
  each its shards of the learner state, rank 0 the small metadata and this process's RNG states (a resumed CPU
  run reproduces the uninterrupted one);
- compute time inside each call is reported, so the controller can measure its own orchestration overhead.

The learning math stays in ``learner/``; placement and fan-out are the groups' (:mod:`rollout.learner_groups`).
Every method that touches the model is called on every rank by the group (collectives inside).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import replace
from typing import Any

from learner.artist_learner import ArtistLearner
from learner.critic_learner import CriticLearner
from learner.distributed import ParallelContext, Rendezvous, free_port
from rollout.startup import actor_device


def _rng_state() -> dict:
    import random

    import numpy as np
    import torch

    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
            "numpy": {"keys": keys, "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}}


def _set_rng_state(state: dict) -> None:
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    legacy = state["numpy"]
    np.random.set_state(("MT19937", legacy["keys"], legacy["pos"], legacy["has_gauss"], legacy["cached"]))
    random.setstate((3, tuple(state["python"]), None))


class LearnerRank(ABC):
    """One rank of a learner group. Subclasses say which learner it builds (:meth:`_build`)."""

    role = ""
    """Dashboard name prefix of the group's actors, e.g. ``critic-learner``."""

    def __init__(self, rank: int, world_size: int, gpus: float, *, cpu_fallback: bool = False,
                 num_threads: int | None = None):
        self.rank = rank
        self.world_size = world_size
        self.gpus = gpus
        self.cpu_fallback = cpu_fallback
        self.num_threads = num_threads
        self.learner: Any = None
        self.last_compute_s = 0.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.role}-{self.rank}, world={self.world_size}, learner={self.learner!r})"

    def rendezvous_address(self) -> tuple[str, int]:
        """This node's address and a free port on it: where the other ranks meet rank 0."""
        import ray

        return ray.util.get_node_ip_address(), free_port()

    def setup(self, rendezvous: Rendezvous) -> dict[str, Any]:
        """Join the process group and build the learner on this rank's device; returns its ``ready()`` facts."""
        import torch

        if self.num_threads:
            torch.set_num_threads(int(self.num_threads))
        device = torch.device(actor_device(f"{self.role}-{self.rank}", self.gpus, self.cpu_fallback))
        if device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        context = ParallelContext.join(self.rank, rendezvous, device)
        self.learner = self._build(context)
        return {"rank": self.rank, **self.learner.ready()}

    @abstractmethod
    def _build(self, context: ParallelContext):
        """The learner this rank runs, on ``context``."""

    def save_checkpoint(self, directory: str) -> None:
        from rollout.checkpoint import save_state_tree

        self.learner.save_state(directory)
        if self.rank == 0:
            save_state_tree(_rng_state(), directory, f"{self.role.replace('-', '_')}_rng")

    def load_checkpoint(self, directory: str) -> None:
        from rollout.checkpoint import load_state_tree

        self.learner.load_state(directory)
        # Rank 0's RNG states, on every rank: nothing rank-specific is drawn from them (per-sample noise has
        # its own seeds), and a resumed run may have another number of ranks.
        _set_rng_state(load_state_tree(directory, f"{self.role.replace('-', '_')}_rng"))

    def shutdown(self) -> None:
        if self.learner is not None:
            self.learner.parallel.close()


class CriticLearnerRank(LearnerRank):
    """A rank of the critic learner group (``critic-learner-<rank>``)."""

    role = "critic-learner"

    def __init__(self, rank: int, world_size: int, gpus: float, model_path: str, config, *,
                 cpu_fallback: bool = False, num_threads: int | None = None, **learner_kwargs: Any):
        super().__init__(rank, world_size, gpus, cpu_fallback=cpu_fallback, num_threads=num_threads)
        self._model_path = model_path
        self._config = config
        self._learner_kwargs = learner_kwargs
        self._prepared = None

    def _build(self, context: ParallelContext) -> CriticLearner:
        return CriticLearner(self._model_path, self._config, parallel=context, **self._learner_kwargs)

    def prepare(self, critiques, padding) -> tuple[list, dict[str, float]]:
        """Prepare this rank's critiques, keep them here, return (conditionings with H_c refs, metrics)."""
        import ray

        start = time.perf_counter()
        prepared = self.learner.prepare(critiques, padding=padding)
        conditionings = [replace(c, hidden=ray.put(c.hidden)) for c in prepared.conditionings]
        self._prepared = replace(prepared, conditionings=[])
        self.last_compute_s = time.perf_counter() - start
        metrics = dict(prepared.metrics)
        metrics["time/actor/prepare_s"] = self.last_compute_s
        return conditionings, metrics

    def update(self, groups) -> dict[str, float]:
        """GRPO update of every group on the critiques the last ``prepare`` gave this rank."""
        if self._prepared is None:
            raise RuntimeError("update called before prepare")
        start = time.perf_counter()
        metrics = self.learner.update(groups, self._prepared)
        self._prepared = None
        metrics["time/actor/critic_update_s"] = time.perf_counter() - start
        return metrics

    def version(self) -> int:
        return self.learner.policy_version

    def weights_ref(self) -> tuple[int, Any, str] | None:
        """(version, ObjectRef of the weights the rollout replicas load, their checksum) from rank 0; None from
        the other ranks (they take part in gathering the weights)."""
        import ray

        from critic_actor.engines import state_checksum

        weights = self.learner.get_weights()
        if self.rank != 0:
            return None
        return self.learner.policy_version, ray.put(weights), state_checksum(weights)


class ArtistLearnerRank(LearnerRank):
    """A rank of the artist learner group (``artist-learner-<rank>``)."""

    role = "artist-learner"

    def __init__(self, rank: int, world_size: int, gpus: float, artist_path: str, config, artist_config, *,
                 cpu_fallback: bool = False, num_threads: int | None = None, **learner_kwargs: Any):
        super().__init__(rank, world_size, gpus, cpu_fallback=cpu_fallback, num_threads=num_threads)
        self._artist_path = artist_path
        self._config = config
        self._artist_config = artist_config
        self._learner_kwargs = learner_kwargs

    def _build(self, context: ParallelContext) -> ArtistLearner:
        return ArtistLearner(self._artist_path, self._config, self._artist_config, parallel=context,
                             **self._learner_kwargs)

    def update(self, groups) -> dict[str, float]:
        start = time.perf_counter()
        metrics = self.learner.update(groups)
        metrics["time/actor/artist_update_s"] = time.perf_counter() - start
        return metrics

    def version(self) -> int:
        return self.learner.version

    def sampler_weights_ref(self) -> tuple[int, Any, int] | None:
        """(version, ObjectRef of the sampling-adapter tensors, their size in bytes) from rank 0; None from the
        other ranks (they take part in gathering the adapter)."""
        import ray

        version, tensors = self.learner.get_sampler_weights()
        if self.rank != 0:
            return None
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        return version, ray.put(tensors), nbytes
