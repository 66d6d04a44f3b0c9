"""The two learners as Ray actors: what the controller adds around ``CriticLearner`` and ``ArtistLearner``.

Owns the actor-side glue that keeps weights and hidden states out of the controller process:

- ``prepare`` keeps the prepared batch (old/reference log-probs) inside the critic learner for the update that
  follows, and puts each H_c into the object store, returning only ``Conditioning`` records whose ``hidden``
  is an ObjectRef the samplers fetch directly;
- weight sync: the learner either puts its weights into the object store and hands out an ObjectRef, or, on the
  collective path, hosts the sync's rendezvous, describes the payload (full model, LoRA adapter, sampling
  adapter) and sends it bucket by bucket as rank 0 of a world of one learner rank (``learner.weight_sender``);
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


class CollectiveWeightSource:
    """The learner side of a collective weight sync, as rank 0 of a world of one learner rank: open the sync's
    rendezvous and manifest for a payload (``begin``), then send that payload (``send_weights``)."""

    _sender = None
    _payload: dict[str, Any] | None = None

    def _open_weight_sync(self, request, tensors: dict[str, Any], *, version: int, full_bytes: int,
                          kind: str = "full", lora=None, probe=None, dtypes: dict[str, str] | None = None):
        import ray

        from learner.weight_sender import WeightSender
        from rollout.weight_transport import SyncManifest, TensorSpec

        if self._sender is None:
            self._sender = WeightSender(0, 1, keep_snapshot=request.delta_keep)
        full = kind == "full"
        dtypes = dtypes or {}
        manifest = SyncManifest(
            version=version, tensors=tuple(TensorSpec(n, tuple(t.shape), dtypes.get(n)) for n, t in tensors.items()),
            wire_dtype=request.wire_dtype, num_senders=1, bucket_bytes=request.bucket_bytes, kind=kind, lora=lora,
            delta_from=self._sender.delta_base(request.delta_from) if full else None,
            delta_keep=request.delta_keep and full, probe=probe)
        endpoint = self._sender.open_endpoint(ray.util.get_node_ip_address(), request.num_receivers,
                                              request.timeout_s, shared_memory=request.shared_memory)
        self._payload = tensors
        return endpoint, manifest, full_bytes

    def send_weights(self, endpoint, manifest):
        """Send the payload the last ``begin_weight_sync`` described (blocks until every bucket is out)."""
        tensors, self._payload = self._payload, None
        if tensors is None:
            raise RuntimeError("send_weights called before begin_weight_sync")
        return self._sender.send(endpoint, manifest, ((spec.name, tensors[spec.name]) for spec in manifest.tensors))


def _wire_bytes(tensors: dict[str, Any], dtype: str) -> int:
    from rollout.weight_transport import ITEMSIZE

    return sum(t.numel() for t in tensors.values()) * ITEMSIZE[dtype]


class CriticLearnerActor(CheckpointedLearner, CollectiveWeightSource, CriticLearner):
    """``CriticLearner`` with object-store and weight-sync plumbing; the controller applies ``ray.remote`` to it."""

    checkpoint_name = "critic_learner"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
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

    def weights_ref(self) -> tuple[int, Any, str, int]:
        """(version, ObjectRef of the weights the rollout replicas load, their digest, their size in bytes)."""
        import ray

        from rollout.weight_transport import tensor_digest

        weights = self.get_weights()
        nbytes = sum(t.numel() * t.element_size() for t in weights.values())
        return self.policy_version, ray.put(weights), tensor_digest(weights), nbytes

    def begin_weight_sync(self, request):
        """Open a collective sync of the current weights: the LoRA adapter when training one (with every base
        tensor when some replica has not received it yet), else the full model; with the served-output probe."""
        from learner.lora import adapter_sync_state
        from rollout.weight_transport import LoraSpec, ProbeSpec

        if request.version is not None and request.version != self.policy_version:
            raise RuntimeError(f"critic learner holds version {self.policy_version}, cannot re-send "
                               f"{request.version}")
        base = {n: t for n, t in self.model.state_dict().items() if ".lora_" not in n}
        full_bytes = _wire_bytes(base, request.wire_dtype)
        probe = None
        if request.probe_tokens:
            from critic_actor.grammar import CRITIC_INSTRUCTION

            ids = self.processor.tokenizer(CRITIC_INSTRUCTION, add_special_tokens=False)["input_ids"]
            ids = ids[:request.probe_tokens]
            probe = ProbeSpec(tuple(ids), tuple(self.probe_log_probs(ids).tolist()), request.probe_tolerance)
        if self.peft_model is not None and request.lora_adapter:
            tensors, modules, scaling = adapter_sync_state(self.model, "default", include_base=request.lora_base)
            # The factors stay float32 on the wire: they are small, and the merge then matches the learner's.
            factors = {n: "float32" for n in tensors if ".lora_" in n}
            return self._open_weight_sync(request, tensors, version=self.policy_version, full_bytes=full_bytes,
                                          kind="lora", lora=LoraSpec(scaling, tuple(modules), request.lora_base),
                                          probe=probe, dtypes=factors)
        tensors = self.get_weights() if self.peft_model is not None else self.model.state_dict()
        return self._open_weight_sync(request, tensors, version=self.policy_version, full_bytes=full_bytes,
                                      probe=probe)


class ArtistLearnerActor(CheckpointedLearner, CollectiveWeightSource, ArtistLearner):
    """``ArtistLearner`` with object-store and weight-sync plumbing; the controller applies ``ray.remote`` to it."""

    checkpoint_name = "artist_learner"
    _published: tuple[int, dict[str, Any]] | None = None
    """The sampling adapter as last sent: a restarted sampler gets that version back even after the learner
    moved on (with overlapped updates it is re-synced while the next update runs)."""

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

    def begin_weight_sync(self, request):
        """Open a collective sync of the sampling adapter (the published one when ``request.version`` names it)."""
        if request.version is None or request.version == self.version:
            self._published = self.get_sampler_weights()
        elif self._published is None or self._published[0] != request.version:
            raise RuntimeError(f"artist learner cannot re-send version {request.version}: it holds {self.version}, "
                               f"last sent {self._published[0] if self._published else None}")
        version, tensors = self._published
        return self._open_weight_sync(request, tensors, version=version,
                                      full_bytes=_wire_bytes(tensors, request.wire_dtype))
