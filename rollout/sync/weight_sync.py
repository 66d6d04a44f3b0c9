"""Weight sync, driver side: for each model, one owner that gets the learner's weights into every serving replica.

```
  collective (sync.backend: collective)                       object store (sync.backend: object_store)

  every learner rank ── begin_weight_sync            every learner rank ── gather; rank 0 ray.put ─► ObjectRef
        │  (rank 0 answers: endpoint, manifest)                                              + digest
        │                                                                        │
  every learner rank ── send_weights ──┐  one deadline,           every replica ── ray.get + load ◄┘
  every replica ── receive_weights ────┴─ stalled ones named       (one copy fetched per replica)
        │
  bucket digests: every replica == union of the ranks' checksums; probe: replica log-probs == learner's
```

Owns: which path runs (``sync.backend``, ``auto`` resolved and logged once), the order of a collective sync (rank 0
hosts the rendezvous and describes the payload, then every rank sends while every replica receives), one deadline
for all of them with the replicas that never finished named in the error, the cross-check that each replica
received exactly the bytes the ranks sent, which replicas still need the LoRA base tensors and whether a delta
may be sent, re-syncing a replica that Ray restarted (the groups call :meth:`WeightSync.resync`), and the
figures each sync reports. It moves no tensor itself and never imports torch.

The learner is its group (:class:`rollout.cluster.learner_groups.LearnerGroup`), whose ranks serve two calls here, every
rank both: ``begin_weight_sync(SyncRequest) -> (TransferEndpoint, SyncManifest, full_model_bytes)`` from rank 0
(None from the others, which describe the same payload and keep their rows of it) and ``send_weights(endpoint,
manifest) -> SendReport``. A rank that dies during a sync raises the group's ``LearnerRankLost``, which ends the run
with the checkpoint to resume from, as a rank lost during an update does. Replica groups expose their ``actors``
(each serving ``receive_weights``) and ``names``, and keep ``version`` and ``resync``.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, Literal

from rollout.config import SyncConfig
from rollout.sync.weight_transport import SyncManifest, TransferEndpoint, combine_checksums

logger = logging.getLogger(__name__)

GRACE_S = 5.0
"""Beyond the sync timeout, the time the driver allows for the calls themselves to be scheduled and return."""
BEGIN_TIMEOUT_S = 3600.0
"""How long ``begin_weight_sync`` may wait: re-syncing a restarted sampler can queue behind a running update."""


@dataclass(kw_only=True, slots=True)
class SyncRequest:
    """What the driver asks learner rank 0 to describe and open a rendezvous for."""

    num_receivers: int
    timeout_s: float
    bucket_bytes: int
    wire_dtype: str
    """The replicas' serving dtype."""
    version: int | None = None
    """None: the learner's current weights; a number: re-send that published version (restarted replica)."""
    lora_adapter: bool = True
    """A LoRA learner sends its adapter (False: the merged model)."""
    lora_base: bool = False
    """Include every base tensor (some receiver has not received this adapter before)."""
    delta_from: int | None = None
    """Version every receiver holds a copy of: encode against it if the learner's snapshot is of it too."""
    delta_keep: bool = False
    """Receivers keep a copy (and the learner a snapshot) for the next delta."""
    probe_tokens: int = 0
    probe_tolerance: float = 0.05
    shared_memory: bool = True
    """Receivers on a sender's machine may take its buckets through shared memory."""


@dataclass(kw_only=True, slots=True)
class SyncReport:
    """One sync as the run logs it."""

    version: int
    path: Literal["collective", "object_store"]
    seconds: float
    replicas: int
    bytes_per_replica: int
    """Bytes each replica received (collective: buckets, headers and trailers; object store: the state)."""
    full_model_bytes: int
    """Bytes of the whole model in the serving dtype: the reference for :attr:`sent_fraction`."""
    probe_abs_diff: float | None = None
    """Largest mean |Δ log p| over the replicas on the served-output probe (critic, collective path)."""

    @property
    def sent_fraction(self) -> float:
        return self.bytes_per_replica / self.full_model_bytes if self.full_model_bytes else 1.0

    def metrics(self, model: str) -> dict[str, float]:
        metrics = {f"sync/{model}_s": self.seconds, f"sync/{model}_bytes": float(self.bytes_per_replica),
                   f"sync/{model}_sent_fraction": self.sent_fraction}
        if self.probe_abs_diff is not None:
            metrics[f"sync/{model}_probe_abs_diff"] = self.probe_abs_diff
        return metrics


class WeightSyncError(RuntimeError):
    """A sync that failed on some participant, or whose replicas did not receive what the learner sent."""


def resolve_backend(config: SyncConfig) -> tuple[str, str]:
    """(``collective`` | ``object_store``, why): ``auto`` takes the collective wherever gloo is available."""
    if config.backend != "auto":
        return config.backend, "set by sync.backend"
    try:
        import torch.distributed as dist

        usable = dist.is_available() and dist.is_gloo_available()
    except ImportError:
        usable = False
    if usable:
        return "collective", "auto: torch.distributed has gloo"
    return "object_store", "auto: torch.distributed has no gloo backend here"


def start_receivers(replicas: Any, version: int, endpoint: TransferEndpoint, manifest: SyncManifest,
                    indices: list[int] | None = None) -> list[tuple[str, Any]]:
    """Start ``receive_weights`` on the replica group's chosen actors (all by default), in order, as receivers
    0..R-1 of ``endpoint``; returns ``(replica name, ObjectRef of its report)`` to wait on with the senders."""
    indices = list(range(len(replicas.actors))) if indices is None else list(indices)
    if endpoint.num_receivers != len(indices):
        raise ValueError(f"the endpoint expects {endpoint.num_receivers} receivers, not {len(indices)}")
    manifest_data = manifest.to_dict()
    return [(replicas.names[replica],
             replicas.actors[replica].receive_weights.remote(version, endpoint, index, manifest_data))
            for index, replica in enumerate(indices)]


class WeightSync:
    """Moves one model's weights from its learner group's ranks to its replica group, by the configured path."""

    def __init__(self, model: str, learner: Any, replicas: Any, *, config: SyncConfig, timeout_s: float,
                 backend: str, wire_dtype: str, delta: bool = False, probe_tokens: int = 0,
                 lora_learner: bool = False):
        if backend not in ("collective", "object_store"):
            raise ValueError(f"weight sync backend must be collective or object_store, got {backend!r}")
        if not learner.ranks:
            raise ValueError("weight sync needs at least one learner rank")
        self.model, self.learner, self.replicas = model, learner, replicas
        self.config, self.timeout_s, self.backend, self.wire_dtype = config, float(timeout_s), backend, wire_dtype
        self.delta, self.probe_tokens, self.lora_learner = delta, probe_tokens, lora_learner
        self._lora_base_holders: set[int] = set()
        """Replicas that hold the LoRA base tensors (sent on their first adapter sync)."""
        self._delta_version: int | None = None
        """Version every replica and the learner hold a copy of, for delta syncs."""
        if backend == "collective":
            replicas.resync = self.resync

    @property
    def num_replicas(self) -> int:
        return len(self.replicas.actors)

    # ----------------------------------------------------------------------------------------------- verbs
    def sync(self, version: int) -> SyncReport:
        """Every replica serves the learner's current weights, which must be ``version``, or this raises."""
        if self.backend == "object_store":
            return self._through_object_store(version)
        report = self._collective(version, list(range(self.num_replicas)), resend=False)
        self.replicas.version = version
        return report

    def resync(self, replica: int) -> None:
        """Bring one (restarted) replica to the group's current version over the collective."""
        self._lora_base_holders.discard(replica)
        version = self.replicas.version
        report = self._collective(version, [replica], resend=True)
        logger.warning("%s weight sync: re-sent version %d to replica %d in %.2f s", self.model, version, replica,
                       report.seconds)

    # ------------------------------------------------------------------------------------ object store
    def _through_object_store(self, version: int) -> SyncReport:
        started = time.perf_counter()
        # Every rank takes part in gathering a sharded learner's weights; rank 0 puts them into the store.
        method = "weights_ref" if self.model == "critic" else "sampler_weights_ref"
        gathered = self.learner.call(method, timeout_s=self.timeout_s, what="weight gather")[0]
        if self.model == "critic":
            learner_version, ref, digest, nbytes = gathered
            self._check_version(learner_version, version)
            self.replicas.set_weights(learner_version, ref, digest)
        else:
            learner_version, ref, nbytes = gathered
            self._check_version(learner_version, version)
            self.replicas.set_weights(learner_version, ref)
        return SyncReport(version=version, path="object_store", seconds=time.perf_counter() - started,
                          replicas=self.num_replicas, bytes_per_replica=int(nbytes), full_model_bytes=int(nbytes))

    # -------------------------------------------------------------------------------------- collective
    def _collective(self, version: int, replicas: list[int], *, resend: bool) -> SyncReport:
        started = time.perf_counter()
        cfg = self.config
        request = SyncRequest(
            num_receivers=len(replicas), timeout_s=self.timeout_s, bucket_bytes=cfg.bucket_mb << 20,
            wire_dtype=self.wire_dtype, version=version if resend else None,
            lora_adapter=cfg.critic_lora == "adapter",
            lora_base=self.lora_learner and not set(replicas) <= self._lora_base_holders,
            delta_from=self._delta_version if self.delta and not resend else None, delta_keep=self.delta,
            probe_tokens=self.probe_tokens, probe_tolerance=cfg.probe_tolerance, shared_memory=cfg.shared_memory)
        # Every rank describes the same payload (a sharded learner's probe is a forward pass they all run);
        # rank 0 also hosts the rendezvous and answers with it.
        endpoint, manifest, full_bytes = self.learner.call(
            "begin_weight_sync", request, timeout_s=max(self.timeout_s, BEGIN_TIMEOUT_S), what="weight sync start")[0]
        self._check_version(manifest.version, version)
        participants = list(zip(self.learner.names, self.learner.launch("send_weights", endpoint, manifest)))
        receivers = start_receivers(self.replicas, version, endpoint, manifest, replicas)
        try:
            results = self._await(participants + receivers, version)
        except BaseException:
            self._forget(replicas)
            raise
        sent = [results[name] for name, _ in participants]
        received = {name: results[name] for name, _ in receivers}
        expected = combine_checksums({key: value for report in sent for key, value in report.checksums.items()})
        wrong = {name: r["digest"] for name, r in received.items() if r["digest"] != expected}
        if wrong:
            self._forget(replicas)
            raise WeightSyncError(f"{self.model} weight sync to version {version}: {sorted(wrong)} received "
                                  f"{sorted(set(wrong.values()))}, the learner sent {expected}")
        if manifest.kind == "lora":
            self._lora_base_holders.update(replicas)
        if manifest.kind == "full" and manifest.delta_keep:
            self._delta_version = version
        probes = [r.get("probe_abs_diff") for r in received.values() if r.get("probe_abs_diff") is not None]
        return SyncReport(version=version, path="collective", seconds=time.perf_counter() - started,
                          replicas=len(replicas), bytes_per_replica=sum(r.bytes_sent for r in sent),
                          full_model_bytes=int(full_bytes), probe_abs_diff=max(probes) if probes else None)

    def _await(self, calls: list[tuple[str, Any]], version: int) -> dict[str, Any]:
        """Results of every participant's call, or an error naming those that failed or never finished.

        Every participant bounds its own waits by the sync timeout, so by ``timeout + GRACE_S`` each call has
        returned or failed — except one that never started (a replica busy elsewhere, or hung): that is the
        replica the error names as having never joined.
        """
        import ray

        from rollout.cluster.learner_groups import LearnerRankLost  # imports the learners (torch): only when syncing

        deadline = time.monotonic() + self.timeout_s + GRACE_S
        pending = dict(calls)
        names = {ref: name for name, ref in calls}
        results: dict[str, Any] = {}
        failures: list[tuple[str, BaseException]] = []
        while pending and time.monotonic() < deadline:
            ready, _ = ray.wait(list(pending.values()), num_returns=1,
                                timeout=max(0.0, deadline - time.monotonic()))
            for ref in ready:
                name = names[ref]
                del pending[name]
                try:
                    results[name] = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - reported below, with every other participant's
                    failures.append((name, exc))
        # A learner rank that died ends the run (its peers and the receivers fail waiting for it).
        lost = [(name, exc) for name, exc in failures
                if name in self.learner.names and isinstance(exc, ray.exceptions.RayActorError)]
        if lost:
            name, exc = lost[0]
            raise LearnerRankLost.during(self.learner.role, name, f"the {self.model} weight sync to version {version}",
                                         exc) from exc
        if pending:
            cause = f"; the others failed waiting for them ({_first_line(failures[0][1])})" if failures else ""
            raise TimeoutError(f"{self.model} weight sync to version {version}: {', '.join(pending)} did not join "
                               f"or finish within the {self.timeout_s:.0f} s sync timeout{cause}")
        if failures:
            listed = "; ".join(f"{name}: {_first_line(exc)}" for name, exc in failures)
            raise WeightSyncError(f"{self.model} weight sync to version {version} failed: {listed}") from failures[0][1]
        return results

    def _forget(self, replicas: list[int]) -> None:
        """Replicas that took part in a failed sync may hold half a payload: they refuse work until a later sync,
        which must then send everything (LoRA base, dense)."""
        self._lora_base_holders.difference_update(replicas)
        self._delta_version = None

    def _check_version(self, learner_version: int, version: int) -> None:
        if learner_version != version:
            raise WeightSyncError(f"{self.model} weight sync: asked for version {version}, the learner holds "
                                  f"{learner_version}")


def _first_line(exc: BaseException) -> str:
    """The message of the innermost error Ray wrapped (its tracebacks span dozens of lines)."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    message = next((line for line in reversed(text) if line.strip()), type(cause).__name__)
    return message.strip()


def announce(backend: str, reason: str) -> None:
    """Say once, at start, which path weights take."""
    line = f"[photocrafter] weight sync: {backend} ({reason})"
    logger.info(line)
    print(line, file=sys.stderr)


__all__ = ["SyncReport", "SyncRequest", "WeightSync", "WeightSyncError", "announce", "resolve_backend"]
