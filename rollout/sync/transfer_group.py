"""How weight-sync bytes move: the groups a sync's senders and receivers join, and the receiving loop.

Owns, over the protocol of :mod:`rollout.sync.weight_transport`:

- :func:`open_store`: the rendezvous store sender rank 0 hosts for one sync;
- :class:`TransferGroup`: this process's membership in the sync's gloo groups, one per sender rank (that sender
  and every receiver), made from a TCP store of their own — never the default process group, which a sharded
  learner's FSDP owns. Every wait has the endpoint's timeout, so a rank that never joins fails the sync loudly.
  When every receiver of a sender's group sees that sender's shared-memory file (same machine), bucket bytes go
  through it and the group carries only a ready signal and a release barrier (what CUDA IPC is to NCCL for a
  replica on the learner's GPU); otherwise the bucket itself is broadcast;
- :func:`receive_tensors`: posts every sender's broadcast for a bucket, verifies the trailers, reassembles full
  tensors from the pieces and yields each as soon as its last rows arrive.

Like the protocol it imports only torch (inside functions), numpy and the standard library — never Ray or vLLM.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rollout.sync.weight_transport import (
    ALIGN, Bucket, SyncManifest, TransferEndpoint, WeightTransferError, bucket_checksum, combine_checksums,
    layout_from_header, padded_bytes, plan_buckets, row_layout,
)


# ---------------------------------------------------------------------------------------------- the groups
def local_address_towards(host: str) -> str:
    """This machine's address on the route to ``host`` (what peers must use to reach this process)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect((host, 9))  # UDP connect sends nothing; it only picks the outgoing interface
        return probe.getsockname()[0]
    except OSError:
        return host
    finally:
        probe.close()


def open_store(host: str, num_senders: int, num_receivers: int, timeout_s: float, shared_memory: bool = True):
    """Host the rendezvous store of a new sync in this process (sender rank 0); returns (endpoint, store).

    The store listens on a free port chosen by the OS; keep the returned store alive until the sync is over.
    """
    import datetime

    from torch.distributed import TCPStore

    store = TCPStore("0.0.0.0", 0, None, True, timeout=datetime.timedelta(seconds=timeout_s),
                     wait_for_workers=False)
    endpoint = TransferEndpoint(host=host, port=int(store.port), num_senders=num_senders,
                                num_receivers=num_receivers, timeout_s=float(timeout_s), shared_memory=shared_memory)
    return endpoint, store


SHM_DIR = "/dev/shm"
"""Where a sender's bucket file lives when its receivers share its machine."""


class TransferGroup:
    """This process's membership in one sync's groups: a sender joins its own group, a receiver joins all.

    Group ``s`` holds sender ``s`` (group rank 0) and every receiver (group ranks 1..R). Joining blocks until
    every member has arrived, or raises :class:`WeightTransferError` after the endpoint's timeout. Bucket bytes
    move by :meth:`stage` / :meth:`publish` / :meth:`complete` on the sender and :meth:`fetch` on receivers,
    through the group's shared-memory file when :attr:`shared` says every member can map it, else by broadcast.
    """

    def __init__(self, endpoint: TransferEndpoint, rank: int, store=None, capacity: int = 0):
        """Join as ``rank``; a sender passes the ``capacity`` (bytes of its largest bucket) its shared-memory
        file would need, and offers the file only when the endpoint allows it and the space is free."""
        import datetime

        from torch.distributed import PrefixStore, TCPStore
        from torch.distributed import ProcessGroupGloo

        world = endpoint.num_senders + endpoint.num_receivers
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside the sync's {world} ranks")
        self.endpoint, self.rank = endpoint, rank
        self.is_sender = rank < endpoint.num_senders
        timeout = datetime.timedelta(seconds=endpoint.timeout_s)
        try:
            self._store = store if store is not None else TCPStore(
                endpoint.host, endpoint.port, None, False, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - torch raises several types for an unreachable store
            raise WeightTransferError(f"rank {rank} could not reach the sync's store at {endpoint.host}:"
                                      f"{endpoint.port}: {exc}") from exc
        device = ProcessGroupGloo.create_device(hostname=local_address_towards(endpoint.host))
        self.groups: dict[int, Any] = {}
        self.shared: dict[int, bool] = {}
        """Per sender group: do bucket bytes go through shared memory (every receiver maps the sender's file)?"""
        self._shm_paths: dict[int, str] = {}
        self._shm: dict[int, Any] = {}
        members = [rank] if self.is_sender else range(endpoint.num_senders)
        if self.is_sender:
            self._offer_shared_memory(capacity)
        for sender in members:
            group_rank = 0 if self.is_sender else rank - endpoint.num_senders + 1
            options = ProcessGroupGloo._Options()
            options._devices = [device]
            options._timeout = timeout
            prefix = PrefixStore(f"{endpoint.session}/sender{sender}", self._store)
            try:
                self.groups[sender] = ProcessGroupGloo(prefix, group_rank, endpoint.num_receivers + 1, options)
            except Exception as exc:  # noqa: BLE001 - a missing peer surfaces as a store timeout
                self.close()
                raise WeightTransferError(
                    f"rank {rank}: not every rank joined the group of sender {sender} within "
                    f"{endpoint.timeout_s:.0f} s ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
            self.shared[sender] = self._agree_on_shared_memory(sender)

    # ------------------------------------------------------------------------------- shared memory
    def _shm_key(self, sender: int, receiver: int | None = None) -> str:
        base = f"{self.endpoint.session}/shm/sender{sender}"
        return base if receiver is None else f"{base}/receiver{receiver}"

    def _offer_shared_memory(self, capacity: int) -> None:
        """Sender: create an empty bucket file in shared memory and publish its path ("" when there is none, or
        too little room: writing past a full tmpfs kills the process with SIGBUS)."""
        path = ""
        if self.endpoint.shared_memory and os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK):
            stat = os.statvfs(SHM_DIR)
            if stat.f_bavail * stat.f_frsize < 2 * capacity:  # headroom for the other jobs on the machine
                self._store.set(self._shm_key(self.rank), "")
                return
            path = os.path.join(SHM_DIR, f"photocrafter-sync-{self.endpoint.session}-sender{self.rank}")
            with open(path, "wb"):
                pass
            self._shm_paths[self.rank] = path
        self._store.set(self._shm_key(self.rank), path)

    def _agree_on_shared_memory(self, sender: int) -> bool:
        """Every member of group ``sender`` reaches the same answer: all receivers see the sender's file."""
        receivers = range(self.endpoint.num_receivers)
        if not self.is_sender:
            path = self._store.get(self._shm_key(sender)).decode()
            visible = bool(path) and os.path.exists(path)
            if visible:
                self._shm_paths[sender] = path
            self._store.set(self._shm_key(sender, self.rank - self.endpoint.num_senders), "1" if visible else "0")
        return all(self._store.get(self._shm_key(sender, r)) == b"1" for r in receivers)

    def _mapped(self, sender: int, nbytes: int):
        import torch

        mapped = self._shm.get(sender)
        if mapped is None or mapped.numel() < nbytes:
            path = self._shm_paths[sender]
            if self.is_sender:
                os.truncate(path, nbytes)
            mapped = torch.from_file(path, shared=True, size=os.path.getsize(path), dtype=torch.uint8)
            self._shm[sender] = mapped
        return mapped

    # --------------------------------------------------------------------------------- data plane
    def stage(self, nbytes: int, capacity: int):
        """Sender: a buffer of ``nbytes`` to pack a bucket into (a view of the shared file of ``capacity`` bytes,
        the largest bucket of the sync, when shared). Its previous contents must be :meth:`complete` first."""
        import torch

        if self.shared[self.rank]:
            return self._mapped(self.rank, capacity)[:nbytes]
        return torch.empty(nbytes, dtype=torch.uint8)

    def publish(self, buffer) -> Any:
        """Sender: start delivering a packed bucket; returns the work to :meth:`complete`."""
        import torch

        if self.shared[self.rank]:  # the bytes are in place: only say they are ready
            return self.broadcast(self.rank, torch.tensor([buffer.numel()], dtype=torch.int64))
        return self.broadcast(self.rank, buffer)

    def complete(self, work, what: str) -> None:
        """Sender: wait until every receiver has the bucket (shared: has copied it out, so it may be rewritten)."""
        self.wait(work, what)
        if self.shared[self.rank]:
            self.wait(self.groups[self.rank].barrier(), f"release of {what}")

    def fetch(self, sender: int, nbytes: int, what: str):
        """Receiver: the next bucket of ``nbytes`` from ``sender``, in memory of its own."""
        import torch

        if not self.shared[sender]:
            buffer = torch.empty(nbytes, dtype=torch.uint8)
            self.wait(self.broadcast(sender, buffer), what)
            return buffer
        ready = torch.empty(1, dtype=torch.int64)
        self.wait(self.broadcast(sender, ready), what)
        if int(ready[0]) != nbytes:
            raise WeightTransferError(f"rank {self.rank}: {what} has {int(ready[0])} bytes, expected {nbytes}")
        buffer = self._mapped(sender, nbytes)[:nbytes].clone()
        self.wait(self.groups[sender].barrier(), f"release of {what}")
        return buffer

    def broadcast(self, sender: int, buffer) -> Any:
        """Start broadcasting ``buffer`` from ``sender`` to every receiver; returns the work handle."""
        from torch.distributed import BroadcastOptions

        options = BroadcastOptions()
        options.rootRank = 0
        return self.groups[sender].broadcast([buffer], options)

    def wait(self, work, what: str) -> None:
        try:
            work.wait()
        except Exception as exc:  # noqa: BLE001 - gloo reports timeouts and lost peers as RuntimeError
            raise WeightTransferError(f"rank {self.rank}: {what} failed within {self.endpoint.timeout_s:.0f} s "
                                      f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc

    def close(self) -> None:
        self.groups.clear()
        self._shm.clear()
        own = self._shm_paths.get(self.rank) if self.is_sender else None
        if own:
            try:
                os.unlink(own)
            except FileNotFoundError:
                pass
        self._shm_paths.clear()
        self._store = None

    def __enter__(self) -> "TransferGroup":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------ receiving
@dataclass(slots=True)
class Receipt:
    """What one receiver got: the digest of every bucket trailer, and the bytes that crossed the wire."""

    checksums: dict[tuple[int, int], int] = field(default_factory=dict)
    bytes_received: int = 0
    tensors: int = 0

    @property
    def digest(self) -> str:
        return combine_checksums(self.checksums)


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def receive_tensors(group: TransferGroup, manifest: SyncManifest, receipt: Receipt,
                    mirror: dict[str, Any] | None = None) -> Iterator[tuple[str, Any]]:
    """Yield ``(name, full tensor in the wire dtype)`` in manifest order as each tensor's last rows arrive.

    ``mirror`` (name → tensor), when given, is where tensors are assembled and kept for the next delta sync: a
    delta manifest patches it in place and needs it to hold every tensor of version ``delta_from``. Every bucket
    trailer is verified; a mismatch raises :class:`WeightTransferError` naming the bucket and the sender.
    """
    import torch

    if group.is_sender:
        raise ValueError("receive_tensors is for receivers; senders use learner.weight_sender")
    if manifest.delta_from is not None:
        if mirror is None:
            raise WeightTransferError(f"delta sync from version {manifest.delta_from} but this receiver keeps no "
                                      f"copy of the weights to apply it to")
        wrong = [t.name for t in manifest.tensors if t.name not in mirror or tuple(mirror[t.name].shape) != t.shape
                 or mirror[t.name].dtype != _torch_dtype(manifest.dtype_of(t))]
        if wrong:
            raise WeightTransferError(f"delta sync from version {manifest.delta_from}: this receiver's copy lacks "
                                      f"{len(wrong)} tensors (e.g. {wrong[:2]})")
    remaining = {}
    for spec in manifest.tensors:
        remaining[spec.name] = row_layout(spec.shape)[0]
    assembling: dict[int, Any] = {}
    next_to_yield = 0
    for bucket in plan_buckets(manifest):
        senders = [s for s, pieces in enumerate(bucket.pieces) if pieces]
        layouts = _receive_layouts(group, manifest, bucket, senders, receipt)
        buffers = _fetch_bucket(group, bucket, senders, {s: layouts[s][1] + ALIGN for s in senders})
        for sender in senders:
            buffer = buffers[sender]
            payload, trailer = buffer[:-ALIGN], buffer[-ALIGN:]
            sent = int(trailer.view(torch.int64)[0])
            got = bucket_checksum(payload)
            if sent != got:
                raise WeightTransferError(f"bucket {bucket.index} from sender {sender}: checksum {got} != {sent} "
                                          f"sent; the bytes were corrupted in transit")
            receipt.checksums[(bucket.index, sender)] = got
            receipt.bytes_received += buffer.numel()
            for piece, (mode, offset, count) in zip(bucket.pieces[sender], layouts[sender][0]):
                spec = manifest.tensors[piece.index]
                dtype, itemsize = _torch_dtype(manifest.dtype_of(spec)), piece.itemsize
                whole = piece.row_stop - piece.row_start == row_layout(spec.shape)[0]
                if whole and mode == "dense" and mirror is None:
                    # The tensor arrived in one piece: hand out a view of the bucket (the consumer copies it
                    # into the model anyway), which saves a copy of every byte on the receiving side.
                    assembling[piece.index] = payload[offset:offset + piece.numel * itemsize].view(dtype).view(
                        spec.shape)
                    remaining[spec.name] = 0
                    continue
                full = assembling.get(piece.index)
                if full is None:
                    delta = manifest.delta_from is not None
                    full = mirror[spec.name] if delta else torch.empty(spec.shape, dtype=dtype)
                    assembling[piece.index] = full
                rows = full.reshape(row_layout(spec.shape)[0], -1)[piece.row_start:piece.row_stop].reshape(-1)
                if mode == "dense":
                    rows.copy_(payload[offset:offset + piece.numel * itemsize].view(dtype))
                elif mode == "sparse":
                    index = payload[offset:offset + count * 4].view(torch.int32).long()
                    values_at = offset + padded_bytes(count * 4)
                    rows[index] = payload[values_at:values_at + count * itemsize].view(dtype)
                remaining[spec.name] -= piece.row_stop - piece.row_start
        while next_to_yield < len(manifest.tensors) and remaining[manifest.tensors[next_to_yield].name] == 0:
            spec = manifest.tensors[next_to_yield]
            tensor = assembling.pop(next_to_yield)
            if mirror is not None:
                mirror[spec.name] = tensor
            receipt.tensors += 1
            yield spec.name, tensor
            next_to_yield += 1
    if next_to_yield != len(manifest.tensors):
        raise WeightTransferError(f"sync ended with {len(manifest.tensors) - next_to_yield} tensors incomplete")


def _fetch_bucket(group: TransferGroup, bucket: Bucket, senders: list[int], sizes: dict[int, int]) -> dict[int, Any]:
    """Every sender's part of a bucket: broadcasts posted together (each sender's group is independent), bytes
    in shared memory copied out one sender at a time."""
    import torch

    buffers, works = {}, []
    for sender in senders:
        if group.shared[sender]:
            buffers[sender] = group.fetch(sender, sizes[sender], f"bucket {bucket.index} from sender {sender}")
        else:
            buffers[sender] = torch.empty(sizes[sender], dtype=torch.uint8)
            works.append((sender, group.broadcast(sender, buffers[sender])))
    for sender, work in works:
        group.wait(work, f"bucket {bucket.index} from sender {sender}")
    return buffers


def _receive_layouts(group: TransferGroup, manifest: SyncManifest, bucket: Bucket, senders: list[int],
                     receipt: Receipt) -> dict[int, tuple[list[tuple[str, int, int]], int]]:
    """Per sender: [(mode, offset, count) per piece] and the payload length. Dense syncs know it from the plan;
    delta syncs first receive each sender's header (one int64 per piece: -1 dense, 0 unchanged, n sparse)."""
    import torch

    if manifest.delta_from is None:
        return {s: ([("dense", p.offset, p.numel) for p in bucket.pieces[s]], bucket.dense_bytes[s]) for s in senders}
    headers = {s: torch.empty(len(bucket.pieces[s]), dtype=torch.int64) for s in senders}
    works = [(s, group.broadcast(s, headers[s])) for s in senders]
    for sender, work in works:
        group.wait(work, f"header of bucket {bucket.index} from sender {sender}")
    layouts = {}
    for sender in senders:
        receipt.bytes_received += headers[sender].numel() * 8
        layouts[sender] = layout_from_header(bucket.pieces[sender], headers[sender].tolist())
    return layouts
