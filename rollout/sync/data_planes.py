"""The data planes of weight sync: how one sender's bucket reaches the receivers of one plane.

A sender's receivers split into at most two planes (:mod:`rollout.sync.links` decides which link takes which):

- :class:`BroadcastPlane` — a process group of the sender and those receivers (``gloo`` over TCP with host
  buffers, or ``nccl`` with GPU buffers); each bucket is one broadcast. Receivers post the broadcast of bucket
  k+1 before they load bucket k, so transfer and loading overlap.
- :class:`InPlacePlane` — receivers that share the sender's device read its bucket buffer where it lies: a file
  in ``/dev/shm`` for host memory, a CUDA IPC handle for GPU memory. A gloo group of the same members carries a
  ready signal (slot, length) per bucket and a release barrier once every receiver has copied it out; with
  ``pipeline_depth`` slots the sender packs bucket k+1 into the next slot while receivers copy bucket k.

Every collective on a plane's group is issued in the same order by all its members (gloo and NCCL match
operations by order): per bucket, the optional delta header, then the data (broadcast) or the ready signal and
the release barrier (in place). Every wait is bounded: gloo's own timeout (the sync's), and for NCCL a poll of
the work's completion against a deadline (NCCL's ``wait`` only orders streams), after which the communicator is
aborted so that a stalled peer fails the sync without taking the process down.

Imports torch inside functions only; no Ray, no vLLM.
"""

from __future__ import annotations

import time
from typing import Any

from rollout.sync.weight_transport import WeightTransferError

NCCL_POLL_S = 0.0005
"""How often a bounded wait on an NCCL operation looks at its completion."""


def wait_bounded(work, what: str, rank: int, timeout_s: float, *, poll: bool = False, on_timeout=None) -> None:
    """Wait for ``work``; raise :class:`WeightTransferError` naming ``what`` when it fails or exceeds
    ``timeout_s``. ``poll``: the backend's ``wait`` does not block the host (NCCL), so poll its completion."""
    try:
        if poll:
            deadline = time.monotonic() + timeout_s
            while not work.is_completed():
                if time.monotonic() > deadline:
                    if on_timeout is not None:
                        on_timeout()
                    raise TimeoutError(f"not completed after {timeout_s:.0f} s")
                time.sleep(NCCL_POLL_S)
        work.wait()
    except WeightTransferError:
        raise
    except Exception as exc:  # noqa: BLE001 - gloo and NCCL report timeouts and lost peers as RuntimeError
        raise WeightTransferError(f"rank {rank}: {what} failed within {timeout_s:.0f} s "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc


def _broadcast(group, tensor):
    from torch.distributed import BroadcastOptions

    options = BroadcastOptions()
    options.rootRank = 0
    return group.broadcast([tensor], options)


class Plane:
    """What both kinds of plane share: the group, its members (global ranks) and this process's place in it."""

    kind = ""

    def __init__(self, group, members: tuple[int, ...], rank: int, timeout_s: float, device):
        self.group, self.members, self.rank, self.timeout_s = group, members, rank, timeout_s
        self.device = device
        """Where this plane's buffers live on this member."""
        self.is_sender = members[0] == rank
        self._aborted = False

    def wait(self, work, what: str) -> None:
        wait_bounded(work, what, self.rank, self.timeout_s, poll=self.kind == "nccl", on_timeout=self.abort)

    def send_header(self, counts: list[int]):
        """Sender: start broadcasting a delta bucket's header (one int64 per piece); returns the work."""
        import torch

        device = self.device if self.kind == "nccl" else "cpu"
        return _broadcast(self.group, torch.tensor(counts, dtype=torch.int64, device=device))

    def receive_header(self, length: int):
        """Receiver: start receiving a delta bucket's header of ``length`` pieces; returns (tensor, work)."""
        import torch

        device = self.device if self.kind == "nccl" else "cpu"
        tensor = torch.empty(length, dtype=torch.int64, device=device)
        return tensor, _broadcast(self.group, tensor)

    def abort(self) -> None:
        """Release the communicator after a failure (NCCL: its operations would otherwise hang on)."""
        if self.kind == "nccl" and self.group is not None and not self._aborted:
            self._aborted = True
            try:
                self.group.abort()
            except Exception:  # noqa: BLE001 - best effort on a group that already failed
                pass

    def close(self) -> None:
        if self.kind == "nccl" and self.group is not None and not self._aborted:
            try:
                self.group.shutdown()
            except Exception:  # noqa: BLE001 - older torch: abort frees the communicator as well
                self.abort()
        self.group = None


class BroadcastPlane(Plane):
    """One broadcast per bucket over a group of the sender and this plane's receivers (``gloo`` or ``nccl``)."""

    def __init__(self, kind: str, group, members: tuple[int, ...], rank: int, timeout_s: float, device):
        super().__init__(group, members, rank, timeout_s, device)
        self.kind = kind

    # sender
    def publish(self, buffer) -> list:
        """Start the broadcast of a packed bucket (on this plane's device); returns the works to complete."""
        return [_broadcast(self.group, buffer)]

    # receiver
    def post(self, nbytes: int, into=None):
        """Start receiving a bucket of ``nbytes`` into ``into`` (or a new buffer); returns (buffer, work)."""
        import torch

        buffer = into[:nbytes] if into is not None else torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        return buffer, _broadcast(self.group, buffer)


class InPlacePlane(Plane):
    """Receivers that read the sender's slot buffers in place (shared-memory file, or CUDA IPC handles)."""

    kind = "ipc"

    def __init__(self, group, members: tuple[int, ...], rank: int, timeout_s: float, device, slots: list):
        super().__init__(group, members, rank, timeout_s, device)
        self.slots = slots
        """The sender's slot buffers as this member sees them (its own, or mapped / opened from the handles)."""

    # sender
    def publish(self, slot: int, nbytes: int) -> list:
        """Say bucket bytes are ready in ``slot`` and start the release barrier that frees it again."""
        import torch

        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # packed bytes in memory before anyone reads
        ready = _broadcast(self.group, torch.tensor([slot, nbytes], dtype=torch.int64))
        return [ready, self.group.barrier()]

    # receiver
    def post(self):
        """Start waiting for the next ready signal; returns (signal tensor, work)."""
        import torch

        signal = torch.empty(2, dtype=torch.int64)
        return signal, _broadcast(self.group, signal)

    def view(self, signal, nbytes: int, what: str):
        slot, length = (int(v) for v in signal.tolist())
        if length != nbytes or not 0 <= slot < len(self.slots):
            raise WeightTransferError(f"rank {self.rank}: {what} arrived as {length} bytes in slot {slot}, "
                                      f"expected {nbytes} bytes")
        return self.slots[slot][:nbytes]

    def release(self):
        """This receiver is done with the slot it last viewed; returns the barrier's work."""
        import torch

        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # copies out finished before the slot is reused
        return self.group.barrier()

    def close(self) -> None:
        super().close()
        self.slots = []


__all__ = ["BroadcastPlane", "InPlacePlane", "Plane", "wait_bounded"]
