"""The wire protocol of weight sync: how tensors travel from learner ranks to serving replicas over a collective.

Owns what both ends of a sync must agree on, and nothing else:

- :class:`TransferEndpoint`: the rendezvous of one sync (store address, sender and receiver counts, timeout);
- :class:`SyncManifest`: what one sync carries (names and full shapes in send order, wire dtype, bucket size,
  payload kind, LoRA scaling, delta base, served-output probe);
- the bucket plan (:func:`plan_buckets`): every tensor is cut along dim 0 into row ranges, each owned by the
  sender rank that holds those rows (rank r holds chunk r under ``torch.chunk`` semantics, as FSDP2 shards a
  parameter), and the pieces are packed in manifest order into buckets of at most ``bucket_bytes`` — so no rank
  ever gathers the whole model, and staging memory on every side is bounded by the bucket size;
- bucket checksums: the wrapping sum of a bucket's 32-bit words, carried in the bucket's 8-byte trailer and
  re-computed on receipt (one pass over the bytes, no hashing of the payload);
- delta encoding (:attr:`SyncManifest.delta_from`): each piece travels dense, sparse (int32 indices + values) or
  not at all when it did not change since the version both sides hold;
- the layout of a delta bucket (:func:`layout_from_header`).

How the bytes move (the groups senders and receivers join, and the receiving loop) is
:mod:`rollout.sync.transfer_group`.

Senders (:mod:`learner.weight_sender`) and receivers (``critic_actor``, ``artist_actor``) import this module. It
imports only torch (inside functions, so the driver can read manifests without it), numpy and the standard
library — never Ray or vLLM.
"""
from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

WIRE_DTYPES = ("float32", "bfloat16", "float16")
"""Dtypes tensors may travel in (the serving dtype of the receivers)."""
ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}
"""Bytes per element of each wire dtype."""
ALIGN = 8
"""Every region of a bucket starts on an 8-byte boundary, so any dtype view of it is aligned."""
MAX_BUCKET_BYTES = 1 << 31
"""Sparse indices are int32, so a piece (at most one bucket) must stay below 2**31 bytes."""


class WeightTransferError(RuntimeError):
    """A transfer failed: a rank never joined, a broadcast timed out, or a bucket arrived corrupted."""


@dataclass(frozen=True, slots=True)
class TransferEndpoint:
    """The rendezvous of one sync: senders are ranks ``[0, num_senders)``, receivers follow them."""

    host: str
    """Address of the TCP store, hosted by sender rank 0 (reachable from every receiver)."""
    port: int
    num_senders: int
    """Learner ranks that each send their own dim-0 shard of every tensor."""
    num_receivers: int
    """Serving replicas (processes) that receive every tensor."""
    timeout_s: float
    """Bound on every wait: the rendezvous, and each bucket's broadcast."""
    shared_memory: bool = True
    """Senders may offer their buckets through shared memory to receivers on their machine."""
    session: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    """Key prefix of this sync's groups in the store (a store may outlive a failed sync)."""

    def receiver_rank(self, index: int) -> int:
        """The global rank of receiver ``index``."""
        if not 0 <= index < self.num_receivers:
            raise ValueError(f"receiver index {index} is outside 0..{self.num_receivers - 1}")
        return self.num_senders + index


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One tensor of a sync: its name as the receiver loads it, its full (unsharded) shape, and its wire dtype
    when it differs from the manifest's (LoRA factors travel in float32 beside bfloat16 base weights)."""

    name: str
    shape: tuple[int, ...]
    dtype: str | None = None


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """The served-output probe: the learner's log-probs of a fixed token sequence under the weights it sends."""

    token_ids: tuple[int, ...]
    log_probs: tuple[float, ...]
    """log p(token_ids[i] | token_ids[:i]) for i ≥ 1, at temperature 1."""
    tolerance: float
    """Largest mean |Δ log p| between a replica and the learner that counts as serving the same weights."""


@dataclass(frozen=True, slots=True)
class LoraSpec:
    """What a LoRA payload adapts: receivers merge W = W_base + scaling · B·A into each named module."""

    scaling: float
    """α / r of the adapter."""
    modules: tuple[str, ...]
    """Adapted module names (``<module>.weight`` is the base weight); A and B travel as
    ``<module>.lora_A.weight`` ``[r, in]`` and ``<module>.lora_B.weight`` ``[out, r]``."""
    base_included: bool
    """Whether the payload also carries every base tensor of the model (sent when some replica has not received
    this adapter before: it loads the whole model once and keeps the adapted blocks' base for later merges)."""


@dataclass(frozen=True, slots=True)
class SyncManifest:
    """Everything a receiver must know before the first byte of a sync arrives."""

    version: int
    tensors: tuple[TensorSpec, ...]
    """In send order; the bucket plan follows this order."""
    wire_dtype: str
    num_senders: int
    bucket_bytes: int
    kind: Literal["full", "lora"] = "full"
    """``full``: the tensors are what the receiver loads; ``lora``: an adapter (and maybe base tensors) that the
    receiver merges before loading (see :class:`LoraSpec`)."""
    lora: LoraSpec | None = None
    delta_from: int | None = None
    """Version whose tensors every receiver already holds; pieces then travel as changes against it."""
    delta_keep: bool = False
    """Receivers keep a copy of what they receive, so the next sync can be a delta against it."""
    probe: ProbeSpec | None = None

    def __post_init__(self) -> None:
        for dtype in {self.wire_dtype, *(t.dtype for t in self.tensors if t.dtype)}:
            if dtype not in WIRE_DTYPES:
                raise ValueError(f"wire dtype {dtype!r} is not one of {WIRE_DTYPES}")
        if not 0 < self.bucket_bytes < MAX_BUCKET_BYTES:
            raise ValueError(f"bucket_bytes must be in (0, 2**31), got {self.bucket_bytes}")
        if self.num_senders < 1:
            raise ValueError(f"num_senders must be at least 1, got {self.num_senders}")
        if self.kind == "lora" and self.lora is None:
            raise ValueError("a lora manifest needs its LoraSpec")

    def dtype_of(self, spec: TensorSpec) -> str:
        return spec.dtype or self.wire_dtype

    def itemsize_of(self, spec: TensorSpec) -> int:
        return ITEMSIZE[self.dtype_of(spec)]

    @property
    def dense_bytes(self) -> int:
        """Bytes of every tensor in its wire dtype: what a dense sync moves to each receiver."""
        return sum(math.prod(t.shape) * self.itemsize_of(t) for t in self.tensors)

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (it crosses vLLM's ``update_weights`` and Ray as a dict)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SyncManifest":
        data = dict(data)
        data["tensors"] = tuple(TensorSpec(t["name"], tuple(t["shape"]), t.get("dtype")) for t in data["tensors"])
        if data.get("lora") is not None:
            lora = dict(data["lora"])
            data["lora"] = LoraSpec(float(lora["scaling"]), tuple(lora["modules"]), bool(lora["base_included"]))
        if data.get("probe") is not None:
            probe = dict(data["probe"])
            data["probe"] = ProbeSpec(tuple(probe["token_ids"]), tuple(probe["log_probs"]), float(probe["tolerance"]))
        return cls(**data)


# ---------------------------------------------------------------------------------------------------- plan
@dataclass(frozen=True, slots=True)
class Piece:
    """Rows ``[row_start, row_stop)`` of tensor ``index``, sent by ``sender`` at ``offset`` of its bucket buffer
    (dense layout; a delta sync lays pieces out from the bucket header instead)."""

    index: int
    sender: int
    row_start: int
    row_stop: int
    numel: int
    offset: int
    itemsize: int


@dataclass(frozen=True, slots=True)
class Bucket:
    index: int
    pieces: tuple[tuple[Piece, ...], ...]
    """One tuple per sender rank (possibly empty), in manifest order."""
    dense_bytes: tuple[int, ...]
    """Payload bytes (padded, trailer excluded) each sender sends densely."""


def shard_rows(rows: int, num_shards: int, shard: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of ``shard`` when ``rows`` are cut like ``torch.chunk`` (FSDP2's dim-0 sharding):
    chunks of ceil(rows / num_shards), the last ones short or empty."""
    size = -(-rows // num_shards) if rows else 0
    start = min(shard * size, rows)
    return start, min(start + size, rows)


def row_layout(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, elements per row); a 0-dim tensor is one row of one element, held whole by sender 0."""
    return (shape[0], math.prod(shape[1:])) if shape else (1, 1)


def padded_bytes(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def plan_buckets(manifest: SyncManifest) -> list[Bucket]:
    """The deterministic bucket plan both ends derive from the manifest.

    Pieces follow the manifest order, tensor by tensor, sender by sender; a shard larger than a bucket is cut
    into row ranges that fit (a single row larger than a bucket travels alone). A bucket closes when the next
    piece would push it past ``bucket_bytes``.
    """
    limit, senders = manifest.bucket_bytes, manifest.num_senders
    buckets: list[Bucket] = []
    current: list[list[Piece]] = [[] for _ in range(senders)]
    offsets = [0] * senders
    filled = 0

    def close() -> None:
        nonlocal current, offsets, filled
        if filled:
            buckets.append(Bucket(len(buckets), tuple(tuple(p) for p in current), tuple(offsets)))
        current, offsets, filled = [[] for _ in range(senders)], [0] * senders, 0

    for index, spec in enumerate(manifest.tensors):
        rows, row_numel = row_layout(spec.shape)
        itemsize = manifest.itemsize_of(spec)
        max_rows = max(1, limit // max(1, row_numel * itemsize))
        for sender in range(senders):
            start, stop = shard_rows(rows, senders, sender)
            while start < stop:
                take = min(stop - start, max_rows)
                numel = take * row_numel
                nbytes = padded_bytes(numel * itemsize)
                if filled and filled + nbytes > limit:
                    close()
                current[sender].append(Piece(index, sender, start, start + take, numel, offsets[sender], itemsize))
                offsets[sender] += nbytes
                filled += nbytes
                start += take
    close()
    return buckets


# ----------------------------------------------------------------------------------------------- checksums
def bucket_checksum(payload) -> int:
    """Wrapping sum of the payload's 32-bit words (the payload length is a multiple of 8)."""
    import torch

    if payload.numel() == 0:
        return 0
    return int(torch.sum(payload.view(torch.int32), dtype=torch.int64))


def combine_checksums(checksums: Mapping[tuple[int, int], int]) -> str:
    """One digest of a sync from its per-(bucket, sender) checksums: what every receiver and the senders
    together must report identically."""
    digest = hashlib.sha256()
    for key in sorted(checksums):
        digest.update(f"{key[0]}:{key[1]}:{checksums[key]};".encode())
    return digest.hexdigest()[:16]


def tensor_digest(state: Mapping[str, Any]) -> str:
    """Cheap content digest of a state dict (name, shape, dtype and the 32-bit word sum of each tensor): one
    pass over the bytes, used where weights travel through the object store instead of buckets."""
    import numpy as np
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        tensor = value.detach().cpu().contiguous() if isinstance(value, torch.Tensor) else \
            torch.from_numpy(np.ascontiguousarray(value))
        raw = tensor.reshape(-1).view(torch.uint8)
        padded = raw
        if raw.numel() % ALIGN:  # zero padding adds nothing to the word sum: copy only a tensor that needs it
            padded = torch.zeros(padded_bytes(raw.numel()), dtype=torch.uint8)
            padded[:raw.numel()] = raw
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|{bucket_checksum(padded)};".encode())
    return digest.hexdigest()[:16]


def layout_from_header(pieces: tuple[Piece, ...], counts: list[int]) -> tuple[list[tuple[str, int, int]], int]:
    """Where each piece's bytes sit in a delta bucket: dense pieces hold every element, sparse ones int32 indices
    then values (each region 8-byte aligned), unchanged ones nothing."""
    layout, offset = [], 0
    for piece, count in zip(pieces, counts, strict=True):
        itemsize = piece.itemsize
        if count < 0:
            layout.append(("dense", offset, piece.numel))
            offset += padded_bytes(piece.numel * itemsize)
        elif count == 0:
            layout.append(("unchanged", offset, 0))
        else:
            layout.append(("sparse", offset, count))
            offset += padded_bytes(count * 4) + padded_bytes(count * itemsize)
    return layout, offset
