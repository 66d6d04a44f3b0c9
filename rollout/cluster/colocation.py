"""Turns on shared GPUs: a colocated model's learner ranks and serving replicas take turns on the same devices.

```
   serve ──(prepare / update)──► train ──(in-place sync)──► serve
   replicas awake,               replicas released (vLLM     replicas wake their weights, the learner sends
   learner released              sleeps, sampler caches),    them in place, releases, replicas wake their
   (offloaded when both          learner resident            KV cache
   do not fit)
```

Owns, for each model with ``placement.<model>: colocated``, the order of those changes — which role gives its
memory back before the other takes the GPU, and where the weight sync falls (after the replicas' weights are back
and before the learner lets go, so the sync is a copy on the device: CUDA IPC, or the shared-memory file on a
CPU) — the seconds each change takes, the memory each actor gave back (:mod:`rollout.cluster.residency`: resident
set size on CPUs, ``torch.cuda.memory_allocated`` on GPUs) and the record of changes tests read. A model on GPUs of
its own gets :class:`DedicatedGpus`, which changes nothing, so the run's components call the same verbs whatever
the placement.

What each role may release and whether it must offload comes from the resource plan
(:class:`rollout.cluster.placement.ColocatedTurns`). It creates no actor and moves no weight itself.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from rollout.cluster.residency import MIB, TurnReport

T = TypeVar("T")
HISTORY = 256
"""Changes of turn kept for inspection (a few steps' worth)."""


class DedicatedGpus:
    """A disaggregated model: its replicas and its learner never wait for each other's memory."""

    colocated = False

    def serve(self) -> None:
        """Nothing to change: the replicas always hold their GPUs."""

    def train(self) -> None:
        """Nothing to change: the learner always holds its GPUs."""

    def sync_in_place(self, sync: Callable[[], T]) -> T:
        return sync()

    def metrics(self) -> dict[str, float]:
        return {}


class ColocatedGpus:
    """One model whose replica ``i`` and learner rank ``i`` share bundle ``i`` (one GPU) and take turns."""

    colocated = True

    def __init__(self, model: str, learner: Any, replicas: Any, *, replica_offload: bool, learner_offload: bool,
                 timeout_s: float):
        """``learner``: its group (``call`` fans a method out to every rank); ``replicas``: its replica group
        (``actors`` and ``names``). ``replica_offload``: the replicas move their weights to host memory for the
        learner's turn (vLLM sleep, a sampler's DiT); otherwise they free caches only; ``learner_offload``: the learner's state goes to host memory for the
        replicas' turn. The replicas start serving and the learner released (the caller released it before the
        replicas loaded)."""
        self.model = model
        self.learner, self.replicas = learner, replicas
        self.replica_offload, self.learner_offload = replica_offload, learner_offload
        self.timeout_s = timeout_s
        self.turn = "serve"
        self.history: deque[str] = deque(maxlen=HISTORY)
        """Every change, in order: ``train``/``serve``/``sync`` and each role's ``<name> release|wake (how)``."""
        self._reports: list[TurnReport] = []
        self._switches = 0
        self._switch_s = 0.0

    def __repr__(self) -> str:
        return f"ColocatedGpus({self.model}, turn={self.turn})"

    # ------------------------------------------------------------------------------------------- turns
    def serve(self) -> None:
        """The replicas' turn: the learner releases, then the replicas wake."""
        if self.turn == "serve":
            return
        started = time.perf_counter()
        self._learner("release", self.learner_offload)
        self._replicas("wake", ("weights", "kv_cache"))
        self._changed("serve", started)

    def train(self) -> None:
        """The learner's turn: the replicas release (vLLM sleeps), then the learner comes back to the GPU."""
        if self.turn == "train":
            return
        started = time.perf_counter()
        self._replicas("release", self.replica_offload)
        self._learner("wake")
        self._changed("train", started)

    def sync_in_place(self, sync: Callable[[], T]) -> T:
        """Run ``sync`` (the weight sync) where it is a copy on the device: the learner resident with its new
        weights, the replicas' weights awake beside them, nothing else; then hand the GPU back to the replicas."""
        self.train()
        started = time.perf_counter()
        self._replicas("wake", ("weights",))
        self.history.append("sync")
        result = sync()
        self._learner("release", self.learner_offload)
        self._replicas("wake", ("kv_cache",))
        self._changed("serve", started)
        return result

    # ---------------------------------------------------------------------------------------- fan-out
    def _learner(self, verb: str, *args: Any) -> None:
        for report in self.learner.call(verb, *args, timeout_s=self.timeout_s, what=f"{verb} for a change of turn"):
            self._record(report)

    def _replicas(self, verb: str, *args: Any) -> None:
        import ray

        refs = [getattr(actor, verb).remote(*args) for actor in self.replicas.actors]
        done, pending = ray.wait(refs, num_returns=len(refs), timeout=self.timeout_s)
        if pending:
            stalled = [name for ref, name in zip(refs, self.replicas.names) if ref in pending]
            raise TimeoutError(f"{self.model} replicas did not {verb} within {self.timeout_s:.0f} s: "
                               f"{', '.join(stalled)}")
        for report in ray.get(refs):
            self._record(report)

    def _record(self, data: dict[str, Any]) -> None:
        report = TurnReport.from_dict(data)
        self._reports.append(report)
        self.history.append(f"{report.name} {report.action} ({report.how})")

    def _changed(self, turn: str, started: float) -> None:
        self.turn = turn
        self.history.append(turn)
        self._switches += 1
        self._switch_s += time.perf_counter() - started

    # ---------------------------------------------------------------------------------------- figures
    def metrics(self) -> dict[str, float]:
        """This model's changes of turn since the last call: how many, their seconds, and per role the memory
        given back at a release (mean over its actors and releases) and held after it (``colocation/<model>/…``)."""
        prefix = f"colocation/{self.model}"
        figures = {f"{prefix}/switches": float(self._switches), f"{prefix}/switch_s": self._switch_s}
        releases = [r for r in self._reports if r.action == "release"]
        for role in sorted({r.name.rsplit("-", 1)[0] for r in releases}):
            mine = [r for r in releases if r.name.rsplit("-", 1)[0] == role]
            key = f"{prefix}/{role.split('-', 1)[1]}"  # rollout, sampler, learner
            figures[f"{key}_released_mb"] = sum(r.released_bytes for r in mine) / len(mine) / MIB
            figures[f"{key}_rss_after_release_mb"] = sum(r.after.rss_bytes for r in mine) / len(mine) / MIB
            if any(r.before.cuda_allocated_bytes for r in mine):
                figures[f"{key}_cuda_released_mb"] = sum(r.released_cuda_bytes for r in mine) / len(mine) / MIB
        self._reports.clear()
        self._switches, self._switch_s = 0, 0.0
        return figures
