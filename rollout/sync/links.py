"""Which data plane each link of a weight sync takes: the rule every member of a sync applies to the same facts.

A *link* is one sender (a learner rank) and one receiver (a replica's worker process). At each rendezvous every
member publishes a :class:`MemberDevice` (its machine and device) through the sync's store; every member then
runs :func:`plan_links` on the same descriptors, so they agree on each link without another round trip:

- ``ipc`` — the receiver shares the sender's device: the same GPU (by UUID), where the receiver opens a CUDA IPC
  handle of the sender's bucket buffer and copies device to device; or, for host memory, the same machine, where
  the sender packs its buckets into a file in ``/dev/shm`` that the receiver maps. A colocated replica (its
  learner rank on the same GPU) always takes this plane: NCCL refuses two ranks of one communicator on one GPU.
- ``nccl`` — the sender and every receiver of that plane are on CUDA devices: a ``ProcessGroupNCCL`` of their
  own carries each bucket from GPU buffer to GPU buffer (a pipelined ring or tree: flat in the receivers).
- ``gloo`` — anything else: host buffers broadcast over TCP (gloo's unsegmented binomial tree: the root sends
  each bucket ⌈log2(R+1)⌉ times); CUDA members stage through host memory.

``sync.backend`` narrows the choice: ``nccl`` requires NCCL for every link that is not same-device, ``gloo``
keeps every byte in host memory, ``ipc`` requires every link to be same-device; an impossible request fails the
sync's start naming the members that break it. CUDA IPC is never chosen across two GPUs: Ray gives each actor a
``CUDA_VISIBLE_DEVICES`` of its own GPUs, which hides the peer's device from the receiver.

Pure functions over plain records (torch only inside :func:`describe_device`); no Ray, no vLLM.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from rollout.sync.weight_transport import WeightTransferError

PLANES = ("ipc", "nccl", "gloo")


@dataclass(frozen=True, slots=True)
class MemberDevice:
    """Where one member of a sync keeps the bytes it sends or receives."""

    machine: str
    """Host name and boot id: equal for processes on one machine (also on a simulated multi-node cluster)."""
    device: str
    """``cpu``, or ``cuda:<index>`` as this process numbers its devices."""
    gpu_uuid: str = ""
    """The physical GPU's UUID (empty on CPU): equal for two processes that share one GPU."""

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> "MemberDevice":
        return cls(**json.loads(text))


def this_machine() -> str:
    """Host name plus the kernel's boot id, so two machines that share a host name are still told apart."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            boot = handle.read().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}"


def describe_device(device) -> MemberDevice:
    """This process's descriptor for bytes kept on ``device`` (a ``torch.device`` or its string)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return MemberDevice(this_machine(), "cpu")
    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = str(torch.cuda.get_device_properties(index).uuid)
    return MemberDevice(this_machine(), f"cuda:{index}", uuid)


def worker_members(device, workers: int = 1) -> list[dict]:
    """Descriptors (as dicts) of a replica's ``workers`` receiving processes: on CUDA, worker i on this process's
    GPU i (a tensor-parallel engine's workers each take one of the replica's GPUs), else all in host memory."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return [asdict(describe_device("cpu"))] * workers
    return [asdict(describe_device(f"cuda:{index}")) for index in range(workers)]


def local_cuda_index(gpu_uuid: str) -> int | None:
    """This process's index of the GPU with ``gpu_uuid``, or None when it cannot see that GPU."""
    import torch

    for index in range(torch.cuda.device_count()):
        if str(torch.cuda.get_device_properties(index).uuid) == gpu_uuid:
            return index
    return None


def stages_on_cuda(requested: str, sender: MemberDevice) -> bool:
    """Whether the sender packs its buckets into GPU buffers: a CUDA sender, unless the sync keeps every byte in
    host memory (``gloo``)."""
    return sender.is_cuda and requested != "gloo"


def same_device(requested: str, sender: MemberDevice, receiver: MemberDevice, shared_file_visible: bool) -> bool:
    """Can ``receiver`` read ``sender``'s bucket buffer in place? For GPU buffers, the same GPU; for host memory,
    the same machine with the sender's shared-memory file visible (checked by the receiver at the rendezvous)."""
    if stages_on_cuda(requested, sender):
        return (receiver.is_cuda and bool(sender.gpu_uuid) and receiver.gpu_uuid == sender.gpu_uuid
                and receiver.machine == sender.machine)
    return receiver.machine == sender.machine and shared_file_visible


def plan_links(requested: str, sender: MemberDevice, receivers: Sequence[MemberDevice],
               shared_file_visible: Sequence[bool], *, sender_rank: int = 0) -> list[str]:
    """The plane of each link from ``sender`` to ``receivers`` (in receiver order) under ``requested``
    (``auto``, ``nccl``, ``gloo`` or ``ipc``); :class:`WeightTransferError` when the request cannot be met.

    ``shared_file_visible[i]``: receiver i saw the sender's shared-memory file (host-memory ``ipc`` is possible).
    """
    if requested not in ("auto", "nccl", "gloo", "ipc"):
        raise ValueError(f"unknown transport {requested!r}")
    local = [same_device(requested, sender, r, visible)
             for r, visible in zip(receivers, shared_file_visible, strict=True)]
    if requested == "ipc":
        strangers = [i for i, ok in enumerate(local) if not ok]
        if strangers:
            where = sorted({f"{receivers[i].device} on {receivers[i].machine.split('/')[0]}" for i in strangers})
            raise WeightTransferError(
                f"sync.backend ipc: receivers {strangers} do not share the device of sender {sender_rank} "
                f"({sender.device} on {sender.machine.split('/')[0]}; they are on {', '.join(where)}): ipc needs "
                f"every replica on its learner rank's GPU, or on its machine with sync.shared_memory for CPUs")
        return ["ipc"] * len(receivers)
    remote = [i for i, ok in enumerate(local) if not ok]
    nccl = stages_on_cuda(requested, sender) and all(receivers[i].is_cuda for i in remote)
    if requested == "nccl" and remote and not nccl:
        on_cpu = (["the sender"] if not sender.is_cuda else []) + [f"receiver {i}" for i in remote
                                                                     if not receivers[i].is_cuda]
        raise WeightTransferError(f"sync.backend nccl: {', '.join(on_cpu)} of sender {sender_rank}'s group keep "
                                  f"their weights in host memory; NCCL moves GPU buffers only (use auto or gloo)")
    return ["ipc" if ok else "nccl" if nccl else "gloo" for ok in local]


__all__ = ["MemberDevice", "PLANES", "describe_device", "local_cuda_index", "plan_links", "same_device",
           "stages_on_cuda", "this_machine", "worker_members"]
