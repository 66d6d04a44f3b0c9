"""One rank of a learner as a Ray actor: what a learner group adds around ``CriticLearner`` and ``ArtistLearner``.

Owns the actor-side glue of one rank, so weights and hidden states stay out of the controller process:

- joining the learner's process group (:meth:`LearnerRank.setup`, given rank 0's rendezvous address) and
  building the learner on this rank's device: its GPU, or the CPU (gloo) when it has none;
- ``prepare`` keeps this rank's prepared critiques (old/reference log-probs, images) for the update that
  follows, and puts each H_c into the object store, returning only ``Conditioning`` records whose ``hidden``
  is an ObjectRef the samplers fetch directly;
- weight sync: on the collective path every rank sends its own dim-0 shard of each tensor bucket by bucket
  (``learner.weight_sender``), rank 0 hosting the sync's rendezvous and describing the payload (full model, LoRA
  adapter, sampling adapter); on the object-store path every rank takes part in gathering the weights and rank 0
  puts them into the object store;
- checkpoints are written by the ranks themselves into the checkpoint directory (shared storage on a cluster):
  each its shards of the learner state, rank 0 the small metadata and this process's RNG states (a resumed CPU
  run reproduces the uninterrupted one);
- compute time inside each call is reported, so the controller can measure its own orchestration overhead.

The learning math stays in ``learner/``; placement and fan-out are the groups' (:mod:`rollout.cluster.learner_groups`).
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
from rollout.cluster.startup import actor_device


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
        self._sender = None
        self._payload: dict[str, Any] | None = None

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

    # ---------------------------------------------------------------------------------------- weight sync
    def _open_weight_sync(self, request, shapes: dict[str, tuple[int, ...]], local: dict[str, Any], *,
                          version: int, kind: str = "full", lora=None, probe=None,
                          dtypes: dict[str, str] | None = None,
                          model_shapes: dict[str, tuple[int, ...]] | None = None):
        """Describe a sync of ``shapes`` (whole shapes, in sending order) and keep this rank's rows of each
        (``local``) for :meth:`send_weights`; rank 0 also hosts the rendezvous. Returns, from rank 0, (endpoint,
        manifest, bytes of the whole served model in the serving dtype: ``model_shapes``, by default the payload
        itself); None from the other ranks."""
        import math

        import ray

        from learner.weight_sender import WeightSender
        from rollout.sync.weight_transport import ITEMSIZE, SyncManifest, TensorSpec

        if self._sender is None or self._sender.keep_snapshot != request.delta_keep:
            self._sender = WeightSender(self.rank, self.world_size, keep_snapshot=request.delta_keep)
        full = kind == "full"
        dtypes = dtypes or {}
        manifest = SyncManifest(
            version=version, tensors=tuple(TensorSpec(n, tuple(shape), dtypes.get(n)) for n, shape in shapes.items()),
            wire_dtype=request.wire_dtype, num_senders=self.world_size, bucket_bytes=request.bucket_bytes,
            kind=kind, lora=lora, delta_from=self._sender.delta_base(request.delta_from) if full else None,
            delta_keep=request.delta_keep and full, probe=probe)
        self._payload = local
        if self.rank != 0:
            return None
        endpoint = self._sender.open_endpoint(ray.util.get_node_ip_address(), request.num_receivers,
                                              request.timeout_s, shared_memory=request.shared_memory)
        model_shapes = shapes if model_shapes is None else model_shapes
        full_bytes = sum(math.prod(shape) for shape in model_shapes.values()) * ITEMSIZE[request.wire_dtype]
        return endpoint, manifest, full_bytes

    def send_weights(self, endpoint, manifest):
        """Send this rank's rows of the payload the last ``begin_weight_sync`` described (blocks until every
        bucket is out)."""
        local, self._payload = self._payload, None
        if local is None:
            raise RuntimeError("send_weights called before begin_weight_sync")
        return self._sender.send(endpoint, manifest, ((spec.name, local[spec.name]) for spec in manifest.tensors))


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
        metrics = dict(prepared.metrics)
        metrics["time/actor/prepare_s"] = time.perf_counter() - start
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

    def weights_ref(self) -> tuple[int, Any, str, int] | None:
        """(version, ObjectRef of the weights the rollout replicas load, their digest, their bytes) from rank 0;
        None from the other ranks (they take part in gathering the weights)."""
        import ray

        from rollout.sync.weight_transport import tensor_digest

        weights = self.learner.get_weights()
        if self.rank != 0:
            return None
        nbytes = sum(t.numel() * t.element_size() for t in weights.values())
        return self.learner.policy_version, ray.put(weights), tensor_digest(weights), nbytes

    def begin_weight_sync(self, request):
        """Describe a collective sync of the current weights: the LoRA adapter when training one (with every base
        tensor when some replica has not received it yet), else the full model; with the served-output probe.
        Every rank takes part (the probe is a forward pass); rank 0 returns the sync's endpoint and manifest."""
        from learner.distributed import local_rows
        from learner.lora import adapter_sync_state
        from rollout.sync.weight_transport import LoraSpec, ProbeSpec

        learner = self.learner
        if request.version is not None and request.version != learner.policy_version:
            raise RuntimeError(f"critic learner holds version {learner.policy_version}, cannot re-send "
                               f"{request.version}")
        probe = None
        if request.probe_tokens:
            from critic_actor.grammar import CRITIC_INSTRUCTION

            ids = learner.processor.tokenizer(CRITIC_INSTRUCTION, add_special_tokens=False)["input_ids"]
            ids = ids[:request.probe_tokens]
            probe = ProbeSpec(tuple(ids), tuple(learner.probe_log_probs(ids).tolist()), request.probe_tolerance)
        kind, lora, dtypes = "full", None, None
        if learner.peft_model is not None and request.lora_adapter:
            tensors, modules, scaling = adapter_sync_state(learner.model, "default", include_base=request.lora_base)
            # The factors stay float32 on the wire: they are small, and the merge then matches the learner's.
            kind, lora = "lora", LoraSpec(scaling, tuple(modules), request.lora_base)
            dtypes = {n: "float32" for n in tensors if ".lora_" in n}
        else:
            # A full fine-tune sends its own shards; a merged LoRA model is gathered by every rank first.
            tensors = learner.get_weights() if learner.peft_model is not None else learner.model.state_dict()
        shapes = {name: tuple(t.shape) for name, t in tensors.items()}
        local = {name: local_rows(t, self.rank, self.world_size) for name, t in tensors.items()}
        # What the replicas serve is the base model (adapters merged in): the measure of what a sync sent.
        served = {n: tuple(t.shape) for n, t in learner.model.state_dict().items() if ".lora_" not in n}
        return self._open_weight_sync(request, shapes, local, version=learner.policy_version, kind=kind, lora=lora,
                                      probe=probe, dtypes=dtypes, model_shapes=served)


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

    def begin_weight_sync(self, request):
        """Describe a collective sync of the sampling adapter: the current one, or the published version
        ``request.version`` names (a restarted sampler during an overlapped update gets the version the others
        serve). Rank 0 returns the sync's endpoint and manifest."""
        learner = self.learner
        version = learner.version if request.version is None else request.version
        shapes, local = learner.published_sampling_adapter(version)
        return self._open_weight_sync(request, shapes, local, version=version)
