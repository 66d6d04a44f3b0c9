"""The sending side of weight sync, as one learner rank runs it.

Owns, for one rank: joining a sync's transfer group, walking the bucket plan of :mod:`rollout.sync.weight_transport`,
casting each of this rank's pieces to the wire (serving) dtype into a bucket-sized staging buffer (the shared
bucket file when every receiver is on this machine), the per-bucket checksum trailer, publishing the bucket,
and — when delta sync is on — the snapshot of what this rank last sent, against which the next sync encodes only
the elements that changed.

The API is narrow on purpose: a rank calls :meth:`WeightSender.send` with the sync's endpoint and manifest and an
iterable of ``(name, local_shard)`` in manifest order, where ``local_shard`` is the rank's own dim-0 chunk of the
tensor (``torch.chunk`` semantics, as an FSDP2 ``DTensor.to_local()`` holds it; a one-rank learner passes whole
tensors). No rank gathers the model. Rank 0 also hosts the sync's rendezvous store (:meth:`open_endpoint`).

It must not decide what to send (the learner builds the manifest) nor talk to the receivers' control plane (the
controller launches both sides).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from rollout.sync.weight_transport import (
    ALIGN, SyncManifest, TransferEndpoint, WeightTransferError, bucket_checksum, layout_from_header, padded_bytes,
    plan_buckets, row_layout, shard_rows,
)
from rollout.sync.transfer_group import TransferGroup, open_store


@dataclass(slots=True)
class SendReport:
    """What one sender rank sent in one sync."""

    rank: int
    version: int
    checksums: dict[tuple[int, int], int] = field(default_factory=dict)
    """Trailer checksum of each (bucket, this rank) this rank broadcast."""
    bytes_sent: int = 0
    """Payload, headers and trailers this rank put on the wire (each receiver gets all of it)."""
    dense_bytes: int = 0
    """What a dense sync of this rank's pieces would have sent."""
    buckets: int = 0
    seconds: float = 0.0
    pieces: dict[str, int] = field(default_factory=lambda: {"dense": 0, "sparse": 0, "unchanged": 0})
    shared_memory: bool = False
    """Whether the buckets went through shared memory (every receiver on this rank's machine)."""

class WeightSender:
    """One learner rank's sender; keeps the delta snapshot between syncs."""

    def __init__(self, rank: int = 0, num_ranks: int = 1, *, keep_snapshot: bool = False):
        if not 0 <= rank < num_ranks:
            raise ValueError(f"sender rank {rank} is outside 0..{num_ranks - 1}")
        self.rank, self.num_ranks = rank, num_ranks
        self.keep_snapshot = keep_snapshot
        self._snapshot: dict[str, torch.Tensor] = {}
        """This rank's rows of every tensor, in the wire dtype, as last sent (for delta encoding)."""
        self.snapshot_version: int | None = None
        self._store = None
        self._endpoint: TransferEndpoint | None = None

    # ------------------------------------------------------------------------------------------ rank 0
    def open_endpoint(self, host: str, num_receivers: int, timeout_s: float,
                      shared_memory: bool = True) -> TransferEndpoint:
        """Rank 0: host the rendezvous store of a new sync (replacing any earlier one) and describe it."""
        if self.rank != 0:
            raise RuntimeError("only sender rank 0 hosts the sync's store")
        self._endpoint, self._store = open_store(host, self.num_ranks, num_receivers, timeout_s, shared_memory)
        return self._endpoint

    def delta_base(self, requested: int | None) -> int | None:
        """The version a new sync may encode against: ``requested`` when this rank's snapshot is of it."""
        if requested is None or not self.keep_snapshot or self.snapshot_version != requested:
            return None
        return requested

    # ------------------------------------------------------------------------------------------- every rank
    def send(self, endpoint: TransferEndpoint, manifest: SyncManifest,
             named_shards: Iterable[tuple[str, torch.Tensor]]) -> SendReport:
        """Join the sync's group and broadcast this rank's pieces of every bucket; blocks until all are sent.

        ``named_shards`` yields ``(name, local_shard)`` for every tensor of the manifest, in its order. A name,
        shape or count that disagrees with the manifest raises before anything is sent for that bucket.
        """
        if manifest.num_senders != self.num_ranks or endpoint.num_senders != self.num_ranks:
            raise ValueError(f"manifest is for {manifest.num_senders} senders, endpoint for {endpoint.num_senders}, "
                             f"this learner has {self.num_ranks} ranks")
        if manifest.delta_from is not None and self.snapshot_version != manifest.delta_from:
            raise WeightTransferError(f"sender rank {self.rank}: asked for a delta against version "
                                      f"{manifest.delta_from} but holds a snapshot of {self.snapshot_version}")
        started = time.perf_counter()
        report = SendReport(rank=self.rank, version=manifest.version)
        store = self._store if self.rank == 0 and self._endpoint == endpoint else None
        shards = _ShardCursor(manifest, self.rank, named_shards)
        snapshot = self._snapshot if self.keep_snapshot else None
        fresh: dict[str, torch.Tensor] = {}
        buckets = [b for b in plan_buckets(manifest) if b.pieces[self.rank]]
        capacity = max((b.dense_bytes[self.rank] for b in buckets), default=0) + ALIGN
        try:
            with TransferGroup(endpoint, self.rank, store=store, capacity=capacity) as group:
                shared = group.shared[self.rank]
                in_flight = None  # over broadcast, packing the next bucket overlaps the previous one's transfer
                for bucket in buckets:
                    pieces = bucket.pieces[self.rank]
                    rows_of = [shards.rows(piece) for piece in pieces]
                    if shared:  # the file is rewritten in place: every receiver must have copied it out
                        in_flight = self._finish(group, in_flight)
                    if manifest.delta_from is not None:
                        counts, parts = self._delta_parts(manifest, pieces, rows_of, snapshot)
                        _, nbytes = layout_from_header(pieces, counts)
                        buffer = group.stage(nbytes + ALIGN, capacity)
                        self._write_delta(buffer, manifest, pieces, parts)
                        header = torch.tensor(counts, dtype=torch.int64)
                        in_flight = self._finish(group, in_flight)
                        group.wait(group.broadcast(self.rank, header), f"header of bucket {bucket.index}")
                        report.bytes_sent += header.numel() * 8
                        for count in counts:
                            report.pieces["dense" if count < 0 else "sparse" if count else "unchanged"] += 1
                    else:
                        buffer = group.stage(bucket.dense_bytes[self.rank] + ALIGN, capacity)
                        self._pack_dense(buffer, manifest, pieces, rows_of)
                        report.pieces["dense"] += len(pieces)
                    checksum = bucket_checksum(buffer[:-ALIGN])
                    buffer[-ALIGN:].view(torch.int64)[0] = checksum
                    work = group.publish(buffer)
                    self._finish(group, in_flight)
                    in_flight = (work, buffer, bucket.index)
                    report.checksums[(bucket.index, self.rank)] = checksum
                    report.bytes_sent += buffer.numel()
                    report.dense_bytes += bucket.dense_bytes[self.rank] + ALIGN
                    report.buckets += 1
                    if self.keep_snapshot:
                        for piece, rows in zip(pieces, rows_of):
                            self._remember(fresh, manifest, piece, rows)
                self._finish(group, in_flight)
                shards.finish()
                report.shared_memory = shared
        finally:
            if self.rank == 0:  # a sync's store serves that sync only; a late joiner then finds nobody
                self._store, self._endpoint = None, None
        if self.keep_snapshot:
            self._snapshot, self.snapshot_version = fresh, manifest.version
        report.seconds = time.perf_counter() - started
        return report

    # ---------------------------------------------------------------------------------------- internals
    @staticmethod
    def _finish(group: TransferGroup, in_flight) -> None:
        """Wait until a bucket published earlier has reached every receiver (its buffer stays referenced until
        then); returns None, the new in-flight state."""
        if in_flight is not None:
            work, _, index = in_flight
            group.complete(work, f"bucket {index}")
        return None

    @staticmethod
    def _pack_dense(buffer: torch.Tensor, manifest: SyncManifest, pieces, rows_of) -> None:
        for piece, rows in zip(pieces, rows_of):
            dtype = _wire_dtype(manifest, piece)
            region = buffer[piece.offset:piece.offset + piece.numel * piece.itemsize].view(dtype)
            region.copy_(rows.reshape(-1))  # the cast to the wire dtype happens in this copy

    def _delta_parts(self, manifest: SyncManifest, pieces, rows_of, snapshot) -> tuple[list[int], list]:
        """Per piece: -1 (dense), 0 (unchanged) or the count of changed elements (sparse), and what to write."""
        parts: list[tuple[str, Any, Any]] = []
        counts: list[int] = []
        for piece, rows in zip(pieces, rows_of):
            dtype, itemsize = _wire_dtype(manifest, piece), piece.itemsize
            new = rows.reshape(-1).to("cpu", dtype)
            old = self._previous(snapshot, manifest, piece)
            # Compare bit patterns: a NaN that stayed NaN is unchanged, and -0.0 → +0.0 is a change.
            changed = (new.view(_int_view(dtype)) != old.view(_int_view(dtype))).nonzero().flatten()
            count = int(changed.numel())
            if count == 0:
                counts.append(0)
                parts.append(("unchanged", None, None))
            elif padded_bytes(count * 4) + padded_bytes(count * itemsize) < padded_bytes(piece.numel * itemsize):
                counts.append(count)
                parts.append(("sparse", changed.to(torch.int32), new[changed]))
            else:
                counts.append(-1)
                parts.append(("dense", new, None))
        return counts, parts

    @staticmethod
    def _write_delta(buffer: torch.Tensor, manifest: SyncManifest, pieces, parts) -> None:
        offset = 0
        for piece, (mode, first, second) in zip(pieces, parts):
            dtype, itemsize = _wire_dtype(manifest, piece), piece.itemsize
            if mode == "dense":
                buffer[offset:offset + piece.numel * itemsize].view(dtype).copy_(first)
                offset += padded_bytes(piece.numel * itemsize)
            elif mode == "sparse":
                count = first.numel()
                buffer[offset:offset + count * 4].view(torch.int32).copy_(first)
                offset += padded_bytes(count * 4)
                buffer[offset:offset + count * itemsize].view(dtype).copy_(second)
                offset += padded_bytes(count * itemsize)

    def _previous(self, snapshot, manifest: SyncManifest, piece) -> torch.Tensor:
        spec = manifest.tensors[piece.index]
        held = snapshot.get(spec.name) if snapshot is not None else None
        start, _ = shard_rows(row_layout(spec.shape)[0], self.num_ranks, self.rank)
        if held is None:
            raise WeightTransferError(f"sender rank {self.rank}: no snapshot of {spec.name} to encode a delta against")
        return held.reshape(held.shape[0] if held.dim() else 1, -1)[
            piece.row_start - start:piece.row_stop - start].reshape(-1)

    def _remember(self, fresh: dict, manifest: SyncManifest, piece, rows: torch.Tensor) -> None:
        spec = manifest.tensors[piece.index]
        start, stop = shard_rows(row_layout(spec.shape)[0], self.num_ranks, self.rank)
        row_numel = row_layout(spec.shape)[1]
        held = fresh.get(spec.name)
        if held is None:
            held = fresh[spec.name] = torch.empty((stop - start, row_numel), dtype=_wire_dtype(manifest, piece))
        held[piece.row_start - start:piece.row_stop - start].copy_(rows.reshape(-1, row_numel))


def _wire_dtype(manifest: SyncManifest, piece) -> torch.dtype:
    return getattr(torch, manifest.dtype_of(manifest.tensors[piece.index]))


def _int_view(dtype: torch.dtype) -> torch.dtype:
    return {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[dtype]


class _ShardCursor:
    """Walks the caller's ``(name, local_shard)`` iterable alongside the plan, checking each against the manifest,
    and hands out the rows of each piece. Only the tensors of the current bucket are referenced at a time."""

    def __init__(self, manifest: SyncManifest, rank: int, named_shards: Iterable[tuple[str, torch.Tensor]]):
        self.manifest, self.rank = manifest, rank
        self._source: Iterator = iter(named_shards)
        self._index = -1
        self._current: torch.Tensor | None = None

    def rows(self, piece) -> torch.Tensor:
        """Rows ``[piece.row_start, piece.row_stop)`` of the piece's tensor, taken from this rank's shard."""
        while self._index < piece.index:
            self._advance()
        spec = self.manifest.tensors[piece.index]
        start, _ = shard_rows(row_layout(spec.shape)[0], self.manifest.num_senders, self.rank)
        shard = self._current.reshape(1, -1) if not spec.shape else self._current
        return shard[piece.row_start - start:piece.row_stop - start].detach()

    def _advance(self) -> None:
        self._index += 1
        spec = self.manifest.tensors[self._index]
        try:
            name, shard = next(self._source)
        except StopIteration:
            raise ValueError(f"sender rank {self.rank}: the shards ended before {spec.name!r} "
                             f"(tensor {self._index} of {len(self.manifest.tensors)})") from None
        if name != spec.name:
            raise ValueError(f"sender rank {self.rank}: got {name!r} where the manifest has {spec.name!r} "
                             f"(tensor {self._index}); shards must follow the manifest order")
        start, stop = shard_rows(row_layout(spec.shape)[0], self.manifest.num_senders, self.rank)
        expected = spec.shape if not spec.shape else (stop - start, *spec.shape[1:])
        if tuple(shard.shape) != tuple(expected):
            raise ValueError(f"sender rank {self.rank}: {name} has local shape {tuple(shard.shape)}, expected "
                             f"{tuple(expected)} (rows {start}:{stop} of {spec.shape})")
        self._current = shard

    def finish(self) -> None:
        """Every tensor of the manifest must have been consumed (also those this rank holds no rows of)."""
        while self._index + 1 < len(self.manifest.tensors):
            self._advance()
        if next(self._source, None) is not None:
            raise ValueError(f"sender rank {self.rank}: more shards than the manifest's "
                             f"{len(self.manifest.tensors)} tensors")


__all__ = ["SendReport", "WeightSender"]
