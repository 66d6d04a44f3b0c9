"""The two learners as Ray actors: what the controller adds around ``CriticLearner`` and ``ArtistLearner``.

Owns the actor-side glue that keeps weights and hidden states out of the controller process:

- ``prepare`` keeps the prepared batch (old/reference log-probs) inside the critic learner for the update that
  follows, and puts each H_c into the object store, returning only ``Conditioning`` records whose ``hidden``
  is an ObjectRef the samplers fetch directly;
- weights for sync are put into the object store by the learner and handed out as ObjectRefs;
- checkpoints are written by the learner process itself into the checkpoint directory (shared storage on a
  cluster) with the learner's own ``save_state`` files, plus the process's RNG states so a resumed CPU run
  reproduces the uninterrupted one;
- compute time inside each call is reported, so the controller can measure its own orchestration overhead.

The learning math stays in ``learner/``; this module only wraps it.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from learner.artist_learner import ArtistLearner
from learner.critic_learner import CriticLearner
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


class CheckpointedLearner:
    """Checkpoint I/O for a learner actor: the learner's own ``save_state`` files (weights or adapters,
    optimizer, version) plus this process's RNG states as ``<checkpoint_name>_rng``, written by the learner
    process itself into the checkpoint directory."""

    checkpoint_name = ""

    def save_checkpoint(self, directory: str) -> None:
        from rollout.checkpoint import save_state_tree

        self.save_state(directory)
        save_state_tree(_rng_state(), directory, f"{self.checkpoint_name}_rng")

    def load_checkpoint(self, directory: str) -> None:
        from rollout.checkpoint import load_state_tree

        self.load_state(directory)
        _set_rng_state(load_state_tree(directory, f"{self.checkpoint_name}_rng"))


class CriticLearnerActor(CheckpointedLearner, CriticLearner):
    """``CriticLearner`` with object-store plumbing; the controller applies ``ray.remote`` to it."""

    checkpoint_name = "critic_learner"

    def __init__(self, model_path: str, config: Any, *args: Any, cpu_fallback: bool = False, **kwargs: Any):
        kwargs.setdefault("device", actor_device("critic-learner", config.gpus, cpu_fallback))
        super().__init__(model_path, config, *args, **kwargs)
        self._prepared = None
        self.last_compute_s = 0.0

    def prepare_for_update(self, critiques) -> tuple[list, dict[str, float]]:
        """Prepare the batch, keep its log-probs here, return (conditionings with H_c refs, metrics)."""
        import ray

        start = time.perf_counter()
        prepared = self.prepare(critiques)
        conditionings = [replace(c, hidden=ray.put(c.hidden)) for c in prepared.conditionings]
        self._prepared = replace(prepared, conditionings=[])
        self.last_compute_s = time.perf_counter() - start
        metrics = dict(prepared.metrics)
        metrics["time/actor/prepare_s"] = self.last_compute_s
        return conditionings, metrics

    def update_prepared(self, groups) -> dict[str, float]:
        """GRPO update on the batch the last ``prepare_for_update`` saw."""
        if self._prepared is None:
            raise RuntimeError("update_prepared called before prepare_for_update")
        start = time.perf_counter()
        metrics = self.update(groups, self._prepared)
        self._prepared = None
        metrics["time/actor/critic_update_s"] = time.perf_counter() - start
        return metrics

    def version(self) -> int:
        return self.policy_version

    def weights_ref(self) -> tuple[int, Any, str]:
        """(version, ObjectRef of the weights the rollout replicas load, their checksum)."""
        import ray

        from critic_actor.engines import state_checksum

        weights = self.get_weights()
        return self.policy_version, ray.put(weights), state_checksum(weights)


class ArtistLearnerActor(CheckpointedLearner, ArtistLearner):
    """``ArtistLearner`` with object-store plumbing; the controller applies ``ray.remote`` to it."""

    checkpoint_name = "artist_learner"

    def __init__(self, artist_path: str, config: Any, *args: Any, cpu_fallback: bool = False, **kwargs: Any):
        kwargs.setdefault("device", actor_device("artist-learner", config.gpus, cpu_fallback))
        super().__init__(artist_path, config, *args, **kwargs)

    def update_timed(self, groups) -> dict[str, float]:
        start = time.perf_counter()
        metrics = self.update(groups)
        metrics["time/actor/artist_update_s"] = time.perf_counter() - start
        return metrics

    def current_version(self) -> int:
        return self.version

    def sampler_weights_ref(self) -> tuple[int, Any, int]:
        """(version, ObjectRef of the sampling-adapter tensors, their size in bytes)."""
        import ray

        version, tensors = self.get_sampler_weights()
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        return version, ray.put(tensors), nbytes
