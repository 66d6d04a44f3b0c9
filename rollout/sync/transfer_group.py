"""How a sync's members meet and which data planes they build: this process's membership in one weight sync.

Owns, over the protocol of :mod:`rollout.sync.weight_transport`:

- :func:`open_store`: the rendezvous store sender rank 0 hosts for one sync;
- :class:`TransferGroup`: joining a sync as a sender or a receiver. Every member publishes where its bytes live
  (:class:`~rollout.sync.links.MemberDevice`; a sender also its bucket capacity and the shared-memory file it
  offers), every member applies :func:`~rollout.sync.links.plan_links` to the same descriptors, and then the
  groups of each sender are built in one global order (sender by sender, the in-place plane before the
  broadcast plane), each from a prefix of the sync's store — never the default process group, which a sharded
  learner's FSDP owns. Every wait has the endpoint's timeout: a member that never joins fails the sync, named;
- the sender's bucket slots (``pipeline_depth`` of them) and their reuse: a slot is packed again only once the
  bucket it last held has reached every receiver of every plane.

The planes themselves are :mod:`rollout.sync.data_planes`; the receiving loop is :mod:`rollout.sync.receiving`.
Like the protocol it imports only torch (inside functions), numpy and the standard library — never Ray or vLLM.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import threading
from collections import Counter
from contextlib import contextmanager
from typing import Any

from rollout.sync.buffers import SenderMemory, SenderSlots, keep_mappings, map_shared_file, open_ipc_handles
from rollout.sync.data_planes import BroadcastPlane, InPlacePlane, Plane, wait_bounded
from rollout.sync.links import MemberDevice, describe_device, plan_links, stages_on_cuda
from rollout.sync.weight_transport import TransferEndpoint, WeightTransferError

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


def open_store(host: str, num_senders: int, num_receivers: int, timeout_s: float, shared_memory: bool = True,
               transport: str = "auto", pipeline_depth: int | None = None):
    """Host the rendezvous store of a new sync in this process (sender rank 0); returns (endpoint, store).

    The store listens on a free port chosen by the OS; keep the returned store alive until the sync is over.
    """
    from torch.distributed import TCPStore

    from rollout.sync.weight_transport import PIPELINE_DEPTH

    store = TCPStore("0.0.0.0", 0, None, True, timeout=datetime.timedelta(seconds=timeout_s),
                     wait_for_workers=False)
    endpoint = TransferEndpoint(host=host, port=int(store.port), num_senders=num_senders,
                                num_receivers=num_receivers, timeout_s=float(timeout_s), shared_memory=shared_memory,
                                transport=transport, pipeline_depth=pipeline_depth or PIPELINE_DEPTH)
    return endpoint, store


_NCCL_ENV_LOCK = threading.Lock()


@contextmanager
def _nccl_error_handling_without_teardown():
    """``ProcessGroupNCCL`` reads ``TORCH_NCCL_ASYNC_ERROR_HANDLING`` when it is built; its default (3) takes the
    whole process down when an operation times out. A sync group must only fail the sync (the learner rank and
    the replica live on), so its groups are built with mode 2: abort the communicator, raise, keep the process."""
    with _NCCL_ENV_LOCK:
        previous = os.environ.get("TORCH_NCCL_ASYNC_ERROR_HANDLING")
        os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "2"
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("TORCH_NCCL_ASYNC_ERROR_HANDLING", None)
            else:
                os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = previous


class TransferGroup:
    """This process's membership in one sync: a sender builds its own planes, a receiver its plane of each sender.

    Sender ``s``'s receivers are split by :func:`~rollout.sync.links.plan_links` into an in-place plane and a
    broadcast plane (either may be empty); each plane is a group whose rank 0 is the sender and whose other
    ranks are its receivers in receiver order. Joining blocks until every member has arrived, or raises
    :class:`WeightTransferError` after the endpoint's timeout.
    """

    def __init__(self, endpoint: TransferEndpoint, rank: int, store=None, capacity: int = 0, device: Any = "cpu",
                 nccl_env=None, memory: SenderMemory | None = None):
        """Join as ``rank``, keeping bytes on ``device``; a sender passes the ``capacity`` (bytes of its largest
        bucket) and may pass the :class:`SenderMemory` it keeps between syncs (else its host slots live for this
        sync only). ``nccl_env``: a context manager to build NCCL communicators under (vLLM's workers pin NCCL
        variables that a communicator shared with another process must not carry)."""
        import torch
        from torch.distributed import PrefixStore, TCPStore

        world = endpoint.num_senders + endpoint.num_receivers
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside the sync's {world} ranks")
        self.endpoint, self.rank = endpoint, rank
        self.is_sender = rank < endpoint.num_senders
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.member = describe_device(self.device)
        self.timeout = datetime.timedelta(seconds=endpoint.timeout_s)
        self.planes: dict[int, list[Plane]] = {}
        """Per sender: the planes this process belongs to (a sender: its own; a receiver: one per sender)."""
        self.links: dict[int, list[str]] = {}
        """Per sender: the plane of each receiver's link, in receiver order (the same on every member)."""
        self.slots: SenderSlots | None = None
        self._in_flight: dict[int, list[tuple[Plane, Any, str]]] = {}
        self._own_memory = memory is None
        self._memory = memory if memory is not None else SenderMemory()
        self._shm_path = ""
        self._nccl_env = nccl_env
        try:
            self._store = store if store is not None else TCPStore(
                endpoint.host, endpoint.port, None, False, timeout=self.timeout)
        except Exception as exc:  # noqa: BLE001 - torch raises several types for an unreachable store
            raise WeightTransferError(f"rank {rank} could not reach the sync's store at {endpoint.host}:"
                                      f"{endpoint.port}: {exc}") from exc
        self._store = PrefixStore(endpoint.session, self._store)
        self._gloo_device = None
        try:
            self._join(capacity)
        except BaseException:
            self.close()
            raise

    # --------------------------------------------------------------------------------------------- joining
    def _get(self, key: str, who: str) -> bytes:
        try:
            return self._store.get(key)
        except Exception as exc:  # noqa: BLE001 - a missing peer surfaces as a store timeout
            raise WeightTransferError(f"rank {self.rank}: not every rank joined the sync within "
                                      f"{self.endpoint.timeout_s:.0f} s ({who} never arrived: "
                                      f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from exc

    def _join(self, capacity: int) -> None:
        endpoint, senders = self.endpoint, range(self.endpoint.num_senders)
        if self.is_sender:
            self._shm_path = self._offer_shared_memory(capacity)
            self._store.set(f"sender{self.rank}", json.dumps({
                "member": self.member.to_json(), "shm": self._shm_path, "capacity": capacity,
                "depth": endpoint.pipeline_depth}))
        offers = {s: json.loads(self._get(f"sender{s}", f"learner rank {s}")) for s in senders}
        self.capacity_of = {s: int(offer["capacity"]) for s, offer in offers.items()}
        """Per sender: bytes of its largest bucket (what a receiver's reusable buffer for it must hold)."""
        if not self.is_sender:
            visible = [bool(offers[s]["shm"]) and os.path.exists(offers[s]["shm"]) for s in senders]
            keep_mappings({offer["shm"] for offer in offers.values() if offer["shm"]})
            self._store.set(f"receiver{self.rank - endpoint.num_senders}",
                            json.dumps({"member": self.member.to_json(), "visible": visible}))
        receivers = [json.loads(self._get(f"receiver{i}", f"receiver {i}")) for i in range(endpoint.num_receivers)]
        receiver_members = [MemberDevice.from_json(r["member"]) for r in receivers]
        for s in senders:
            sender_member = MemberDevice.from_json(offers[s]["member"])
            self.links[s] = plan_links(endpoint.transport, sender_member, receiver_members,
                                       [r["visible"][s] for r in receivers], sender_rank=s)
        if self.is_sender:
            self._prepare_slots(capacity)
        for s in senders:
            if self.is_sender and s != self.rank:
                continue
            for kind in ("ipc", "broadcast"):
                members = [i for i, plane in enumerate(self.links[s]) if (plane == "ipc") == (kind == "ipc")]
                mine = self.is_sender or (self.rank - endpoint.num_senders) in members
                if members and mine:
                    plane = self._build_plane(s, kind, members, offers[s])
                    self.planes.setdefault(s, []).append(plane)

    def _offer_shared_memory(self, capacity: int) -> str:
        """Sender: the path of its bucket file for receivers on this machine ("" when bytes are staged on a GPU,
        the endpoint forbids it, or /dev/shm lacks the room)."""
        endpoint = self.endpoint
        if stages_on_cuda(endpoint.transport, self.member) or not endpoint.shared_memory:
            return ""
        return self._memory.shared_file.ensure(endpoint.pipeline_depth, capacity)

    def _prepare_slots(self, capacity: int) -> None:
        """Sender: the bucket slots, in the shared file when some receiver reads them in place from host memory,
        on the GPU when this sender stages there, else in host memory. Handles of GPU slots go to the store."""
        links = self.links[self.rank]
        cuda = stages_on_cuda(self.endpoint.transport, self.member)
        in_file = not cuda and "ipc" in links and bool(self._shm_path)
        self.slots = SenderSlots(self.endpoint.pipeline_depth, capacity, self.device if cuda else "cpu",
                                 self._memory, in_file=in_file)
        if cuda and "ipc" in links:
            self._store.set(f"sender{self.rank}/ipc_handles", self.slots.ipc_handles())

    def _build_plane(self, sender: int, kind: str, members: list[int], offer: dict) -> Plane:
        import torch

        endpoint = self.endpoint
        global_members = (sender, *(endpoint.num_senders + i for i in members))
        size, group_rank = len(global_members), global_members.index(self.rank)
        prefix = f"sender{sender}/{kind}"
        plane_kind = "ipc" if kind == "ipc" else self.links[sender][members[0]]
        if plane_kind == "nccl":
            group = self._nccl_group(prefix, group_rank, size, sender)
            return BroadcastPlane("nccl", group, global_members, self.rank, endpoint.timeout_s, self.device)
        group = self._gloo_group(prefix, group_rank, size, sender)
        if kind == "broadcast":
            return BroadcastPlane("gloo", group, global_members, self.rank, endpoint.timeout_s, torch.device("cpu"))
        sender_member = MemberDevice.from_json(offer["member"])
        if self.is_sender:
            slots = self.slots.buffers
        elif stages_on_cuda(endpoint.transport, sender_member):
            slots = open_ipc_handles(self._get(f"sender{sender}/ipc_handles", f"learner rank {sender}'s buffers"),
                                     sender_member.gpu_uuid)
        else:
            slots = map_shared_file(offer["shm"], offer["depth"], offer["capacity"])
        device = slots[0].device if slots else self.device
        return InPlacePlane(group, global_members, self.rank, endpoint.timeout_s, device, slots)

    def _gloo_group(self, prefix: str, group_rank: int, size: int, sender: int):
        from torch.distributed import PrefixStore, ProcessGroupGloo

        if self._gloo_device is None:
            self._gloo_device = ProcessGroupGloo.create_device(hostname=local_address_towards(self.endpoint.host))
        options = ProcessGroupGloo._Options()
        options._devices = [self._gloo_device]
        options._timeout = self.timeout
        try:
            return ProcessGroupGloo(PrefixStore(prefix, self._store), group_rank, size, options)
        except Exception as exc:  # noqa: BLE001 - a missing peer surfaces as a store timeout
            raise WeightTransferError(
                f"rank {self.rank}: not every rank joined the group of sender {sender} within "
                f"{self.endpoint.timeout_s:.0f} s ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc

    def _nccl_group(self, prefix: str, group_rank: int, size: int, sender: int):
        """A ``ProcessGroupNCCL`` of this plane's members, connected now (so a missing member fails the join, not
        the first bucket). Its own timeout is far beyond the sync's: the sync's waits poll with the sync's timeout
        and abort the communicator themselves, before NCCL's watchdog would."""
        from contextlib import nullcontext

        from torch.distributed import PrefixStore, ProcessGroupNCCL

        options = ProcessGroupNCCL.Options()
        options._timeout = self.timeout * 4 + datetime.timedelta(minutes=10)
        options.is_high_priority_stream = False
        try:
            with _nccl_error_handling_without_teardown(), (self._nccl_env or nullcontext)():
                group = ProcessGroupNCCL(PrefixStore(prefix, self._store), group_rank, size, options)
                group.eager_connect_single_device(self.device)
            return group
        except Exception as exc:  # noqa: BLE001 - a missing peer surfaces as a store timeout
            raise WeightTransferError(
                f"rank {self.rank}: the NCCL group of sender {sender} did not form within "
                f"{self.endpoint.timeout_s:.0f} s ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc

    # --------------------------------------------------------------------------------------------- sender
    @property
    def own_planes(self) -> list[Plane]:
        return self.planes.get(self.rank, [])

    def acquire(self, index: int) -> tuple[int, Any]:
        """Sender: the slot for this rank's ``index``-th bucket and its buffer, once the bucket it held before has
        reached every receiver (with one slot: once the previous bucket has)."""
        slot = index % self.endpoint.pipeline_depth
        self._complete(slot)
        return slot, self.slots.buffers[slot]

    def send_header(self, slot: int, counts: list[int], what: str) -> None:
        """Sender: a delta bucket's header, on every plane (sent before the bucket itself)."""
        for plane in self.own_planes:
            self._in_flight.setdefault(slot, []).append((plane, plane.send_header(counts), f"header of {what}"))

    def publish(self, slot: int, nbytes: int, what: str) -> None:
        """Sender: deliver the ``nbytes`` packed into ``slot`` to every plane (returns at once; completion is
        awaited when the slot is next acquired, or by :meth:`drain`)."""
        buffer = self.slots.buffers[slot][:nbytes]
        for plane in self.own_planes:
            if isinstance(plane, InPlacePlane):
                works = plane.publish(slot, nbytes)
            elif plane.kind == "gloo" and buffer.device.type == "cuda":
                works = plane.publish(self.slots.host_copy(slot, nbytes))
            else:
                works = plane.publish(buffer)
            self._in_flight.setdefault(slot, []).extend((plane, work, what) for work in works)

    def drain(self) -> None:
        """Sender: wait until every published bucket has reached (and been released by) every receiver."""
        for slot in list(self._in_flight):
            self._complete(slot)

    def _complete(self, slot: int) -> None:
        for plane, work, what in self._in_flight.pop(slot, []):
            plane.wait(work, what)

    @property
    def link_counts(self) -> dict[str, int]:
        """Links of this sender by plane (a receiver: its links to every sender)."""
        if self.is_sender:
            return dict(Counter(self.links.get(self.rank, [])))
        index = self.rank - self.endpoint.num_senders
        return dict(Counter(links[index] for links in self.links.values()))

    # --------------------------------------------------------------------------------------------- closing
    def close(self) -> None:
        for planes in self.planes.values():
            for plane in planes:
                plane.close()
        self.planes.clear()
        self._in_flight.clear()
        if self.slots is not None:
            self.slots.close()
            self.slots = None
        if self._own_memory:
            self._memory.close()
        self._shm_path = ""
        self._store = None

    def abort(self) -> None:
        """After a failure: release NCCL communicators at once (their pending operations would hang on)."""
        for planes in self.planes.values():
            for plane in planes:
                plane.abort()

    def __enter__(self) -> "TransferGroup":
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        if exc_type is not None:
            self.abort()
        self.close()


__all__ = ["TransferGroup", "local_address_towards", "open_store", "wait_bounded"]
