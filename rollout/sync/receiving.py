"""The receiving side of weight sync: buckets in, whole tensors out, transfer overlapped with loading.

Owns :func:`receive_tensors`, the loop every receiver runs over the bucket plan of
:mod:`rollout.sync.weight_transport`, whatever plane each sender's bucket arrives by
(:mod:`rollout.sync.data_planes`):

- **pipelined**: with ``pipeline_depth`` ≥ 2 the broadcast of bucket k+1 (from every sender on a broadcast
  plane) is posted before bucket k is verified, assembled and handed to the consumer, so the wire and the
  loading overlap; senders on an in-place plane pack bucket k+1 into their other slot meanwhile. With depth 1
  every bucket is received, loaded and released before the next is asked for;
- **verified**: each (bucket, sender) part ends with its checksum trailer, recomputed here on the device that
  holds the bytes; a mismatch names the bucket and the sender;
- **assembled**: the pieces of each tensor (rows from every sender) are copied into the full tensor, or handed
  out as a view when a tensor arrived whole in a buffer of its own; each tensor is yielded once its last rows
  arrived, in manifest order; a delta sync patches the receiver's ``mirror`` in place.

``owned`` (default) yields tensors the consumer may keep (vLLM's layerwise reload holds them until a layer is
complete); ``owned=False`` yields views valid until the next tensor is asked for, and reuses two buffers per
sender instead of allocating each bucket (for consumers that copy at once: samplers, the transformers engine).

Imports torch inside functions only; no Ray, no vLLM.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rollout.sync.buffers import receive_buffers
from rollout.sync.data_planes import InPlacePlane
from rollout.sync.transfer_group import TransferGroup
from rollout.sync.weight_transport import (
    ALIGN, Bucket, SyncManifest, WeightTransferError, combine_checksums, device_checksum, layout_from_header,
    padded_bytes, plan_buckets, row_layout,
)


@dataclass(slots=True)
class Receipt:
    """What one receiver got: the digest of every bucket trailer, the bytes that crossed to it, and by which planes."""

    checksums: dict[tuple[int, int], int] = field(default_factory=dict)
    bytes_received: int = 0
    tensors: int = 0
    links: dict[str, int] = field(default_factory=dict)
    """Links to the senders by plane (``ipc``, ``nccl``, ``gloo``)."""

    @property
    def digest(self) -> str:
        return combine_checksums(self.checksums)


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


class _Inbox:
    """Per (bucket, sender): the posted header and data operations, taken in order, released after loading."""

    def __init__(self, group: TransferGroup, manifest: SyncManifest, plan: list[Bucket], receipt: Receipt,
                 owned: bool):
        self.group, self.manifest, self.plan, self.receipt, self.owned = group, manifest, plan, receipt, owned
        self.plane = {sender: planes[0] for sender, planes in group.planes.items()}
        self.posted: dict[tuple[int, int], dict[str, Any]] = {}
        self.releases: list[tuple[Any, Any, str]] = []
        self._reusable: dict[int, list[Any]] = {}

    def senders(self, k: int) -> list[int]:
        return [s for s, pieces in enumerate(self.plan[k].pieces) if pieces]

    def post(self, k: int, *, in_place: bool | None = None) -> None:
        """Post bucket ``k``'s operations of every sender (only in-place or only broadcast ones when given)."""
        for sender in self.senders(k):
            plane = self.plane[sender]
            if in_place is not None and isinstance(plane, InPlacePlane) != in_place or (k, sender) in self.posted:
                continue
            entry: dict[str, Any] = {}
            if self.manifest.delta_from is not None:
                entry["header"] = plane.receive_header(len(self.plan[k].pieces[sender]))
            if isinstance(plane, InPlacePlane):
                entry["ready"] = plane.post()
            else:
                layout = self._layout(k, sender, entry)
                into = None
                if not self.owned:
                    if sender not in self._reusable:
                        self._reusable[sender] = receive_buffers(sender, self.group.endpoint.pipeline_depth,
                                                                 self.group.capacity_of[sender], plane.device)
                    buffers = self._reusable[sender]
                    into = buffers[k % len(buffers)]
                entry["data"] = plane.post(layout[1] + ALIGN, into)
            self.posted[(k, sender)] = entry

    def _layout(self, k: int, sender: int, entry: dict[str, Any]) -> tuple[list[tuple[str, int, int]], int]:
        """(mode, offset, count) per piece and the payload length: from the plan for a dense sync, from the
        sender's header (received here) for a delta sync."""
        if "layout" in entry:
            return entry["layout"]
        pieces = self.plan[k].pieces[sender]
        if self.manifest.delta_from is None:
            layout = ([("dense", p.offset, p.numel) for p in pieces], self.plan[k].dense_bytes[sender])
        else:
            tensor, work = entry["header"]
            self.plane[sender].wait(work, f"header of bucket {k} from sender {sender}")
            self.receipt.bytes_received += tensor.numel() * 8
            layout = layout_from_header(pieces, tensor.tolist())
        entry["layout"] = layout
        return layout

    def take(self, k: int, sender: int):
        """Bucket ``k``'s bytes from ``sender`` (payload and trailer) and their layout, once they are here."""
        entry = self.posted[(k, sender)]
        plane = self.plane[sender]
        layout = self._layout(k, sender, entry)
        what = f"bucket {k} from sender {sender}"
        if isinstance(plane, InPlacePlane):
            signal, work = entry["ready"]
            plane.wait(work, what)
            buffer = plane.view(signal, layout[1] + ALIGN, what)
        else:
            buffer, work = entry["data"]
            plane.wait(work, what)
        return buffer, layout

    def release(self, k: int) -> None:
        """Bucket ``k`` is loaded: free the senders' in-place slots it was read from."""
        for sender in self.senders(k):
            plane = self.plane[sender]
            self.posted.pop((k, sender), None)
            if isinstance(plane, InPlacePlane):
                self.releases.append((plane, plane.release(), f"release of bucket {k} to sender {sender}"))

    def finish(self) -> None:
        for plane, work, what in self.releases:
            plane.wait(work, what)
        self.releases.clear()


def receive_tensors(group: TransferGroup, manifest: SyncManifest, receipt: Receipt,
                    mirror: dict[str, Any] | None = None, *, owned: bool = True) -> Iterator[tuple[str, Any]]:
    """Yield ``(name, full tensor in the wire dtype)`` in manifest order as each tensor's last rows arrive.

    Tensors live where the bytes arrived (the GPU for NCCL and CUDA IPC planes, host memory otherwise), except
    that ``mirror`` (name → host tensor), when given, is where tensors are assembled and kept for the next delta
    sync: a delta manifest patches it in place and needs it to hold every tensor of version ``delta_from``.
    Every bucket trailer is verified; a mismatch raises :class:`WeightTransferError` naming the bucket and the
    sender.
    """
    import torch

    if group.is_sender:
        raise ValueError("receive_tensors is for receivers; senders use learner.weight_sender")
    _check_mirror(manifest, mirror)
    receipt.links = group.link_counts
    remaining = {spec.name: row_layout(spec.shape)[0] for spec in manifest.tensors}
    assembling: dict[int, Any] = {}
    next_to_yield = 0
    plan = plan_buckets(manifest)
    inbox = _Inbox(group, manifest, plan, receipt, owned)
    pipelined = group.endpoint.pipeline_depth > 1
    if plan:
        inbox.post(0)
    for k, bucket in enumerate(plan):
        if pipelined and k + 1 < len(plan):
            inbox.post(k + 1, in_place=False)  # the wire carries bucket k+1 while bucket k is loaded
        for sender in inbox.senders(k):
            buffer, (layout, _) = inbox.take(k, sender)
            in_place = isinstance(inbox.plane[sender], InPlacePlane)
            payload, trailer = buffer[:-ALIGN], buffer[-ALIGN:]
            got, sent = torch.stack([device_checksum(payload), trailer.view(torch.int64)[0]]).tolist()
            if sent != got:
                raise WeightTransferError(f"bucket {bucket.index} from sender {sender}: checksum {got} != {sent} "
                                          f"sent; the bytes were corrupted in transit")
            receipt.checksums[(bucket.index, sender)] = got
            receipt.bytes_received += buffer.numel()
            for piece, (mode, offset, count) in zip(bucket.pieces[sender], layout):
                spec = manifest.tensors[piece.index]
                dtype, itemsize = _torch_dtype(manifest.dtype_of(spec)), piece.itemsize
                rows_total = row_layout(spec.shape)[0]
                if piece.row_stop - piece.row_start == rows_total and mode == "dense" and mirror is None:
                    # The tensor arrived in one piece: hand out the bytes where they are, when they stay valid
                    # long enough (a bucket of its own, or the consumer copies before asking for more).
                    view = payload[offset:offset + piece.numel * itemsize].view(dtype).view(spec.shape)
                    assembling[piece.index] = view.clone() if in_place and owned else view
                    remaining[spec.name] = 0
                    continue
                full = assembling.get(piece.index)
                if full is None:
                    full = mirror[spec.name] if manifest.delta_from is not None else torch.empty(
                        spec.shape, dtype=dtype, device="cpu" if mirror is not None else payload.device)
                    assembling[piece.index] = full
                rows = full.reshape(rows_total, -1)[piece.row_start:piece.row_stop].reshape(-1)
                if mode == "dense":
                    rows.copy_(payload[offset:offset + piece.numel * itemsize].view(dtype))
                elif mode == "sparse":
                    index = payload[offset:offset + count * 4].view(torch.int32).long().to(rows.device)
                    values_at = offset + padded_bytes(count * 4)
                    rows[index] = payload[values_at:values_at + count * itemsize].view(dtype).to(rows.device)
                remaining[spec.name] -= piece.row_stop - piece.row_start
        while next_to_yield < len(manifest.tensors) and remaining[manifest.tensors[next_to_yield].name] == 0:
            spec = manifest.tensors[next_to_yield]
            tensor = assembling.pop(next_to_yield)
            if mirror is not None:
                mirror[spec.name] = tensor
            receipt.tensors += 1
            yield spec.name, tensor
            next_to_yield += 1
        inbox.release(k)
        if k + 1 < len(plan):
            inbox.post(k + 1, in_place=True if pipelined else None)
    inbox.finish()
    if next_to_yield != len(manifest.tensors):
        raise WeightTransferError(f"sync ended with {len(manifest.tensors) - next_to_yield} tensors incomplete")


def _check_mirror(manifest: SyncManifest, mirror: dict[str, Any] | None) -> None:
    if manifest.delta_from is None:
        return
    if mirror is None:
        raise WeightTransferError(f"delta sync from version {manifest.delta_from} but this receiver keeps no "
                                  f"copy of the weights to apply it to")
    wrong = [t.name for t in manifest.tensors if t.name not in mirror or tuple(mirror[t.name].shape) != t.shape
             or mirror[t.name].dtype != _torch_dtype(manifest.dtype_of(t))]
    if wrong:
        raise WeightTransferError(f"delta sync from version {manifest.delta_from}: this receiver's copy lacks "
                                  f"{len(wrong)} tensors (e.g. {wrong[:2]})")


__all__ = ["Receipt", "receive_tensors"]
