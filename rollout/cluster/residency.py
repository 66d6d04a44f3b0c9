"""What an actor that shares its GPU with another role does at a change of turn: measure its memory, give back
what it can, and say what it gave back.

Owns the readings every colocated actor reports (:class:`MemoryReading`: the process's resident set size, and
the bytes torch holds on the GPU when there is one), returning freed memory to the operating system
(:func:`trim_host_memory`: Python's garbage, then glibc's free lists), moving an optimizer's state between
the device and host memory (:func:`move_optimizer_state`), and the record of one release or wake (:class:`TurnReport`). The
decisions — a vLLM engine sleeps, a learner offloads its optimizer state — belong to the actors; the order of
turns to :mod:`rollout.cluster.colocation`.

A leaf like :mod:`rollout.cluster.startup`: the standard library only, torch imported inside the functions, so
the critic, artist and learner packages may all use it. On a machine without CUDA only the resident set size
moves: there is no device memory to free, and vLLM's CPU build has no sleep mode.
"""

from __future__ import annotations

import ctypes
import gc
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class MemoryReading:
    """One process's memory at one moment."""

    rss_bytes: int
    """Resident set size of the process (host memory it occupies)."""
    cuda_allocated_bytes: int
    """Bytes torch's allocator holds in live tensors on this process's GPU (0 without CUDA)."""
    cuda_reserved_bytes: int
    """Bytes torch's caching allocator has reserved from the GPU (0 without CUDA)."""


def read_memory() -> MemoryReading:
    """This process's resident set size and, when torch has initialised CUDA here, its GPU memory."""
    try:
        with open("/proc/self/statm") as statm:
            rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak, where /proc is absent
    allocated = reserved = 0
    import sys

    torch = sys.modules.get("torch")  # never import torch just to learn that nothing is on a GPU
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        allocated, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    return MemoryReading(rss_bytes=rss, cuda_allocated_bytes=allocated, cuda_reserved_bytes=reserved)


def trim_host_memory() -> None:
    """Collect Python's garbage, empty torch's CUDA cache, and hand glibc's free heap pages back to the system
    (malloc_trim), so what a phase freed shows in the resident set size and in the GPU's free memory."""
    gc.collect()
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the allocator keeps its pages, which is only less visible
        pass


def move_optimizer_state(optimizer: Any, device: Any) -> None:
    """Move every tensor of ``optimizer``'s state (AdamW moments, step counts) to ``device`` in place."""
    import torch

    for state in optimizer.state.values():
        for key, value in list(state.items()):
            if isinstance(value, torch.Tensor):
                state[key] = value.to(device, non_blocking=True)


@dataclass(frozen=True, slots=True)
class TurnReport:
    """What one actor did at a change of turn: released its memory or woke, how, and the readings around it."""

    name: str
    """The actor's dashboard name (``critic-rollout-0``, ``artist-learner-1``)."""
    action: str
    """``release`` or ``wake``."""
    how: str
    """What it did: ``vllm sleep``, ``weights to host``, ``caches`` (on a CPU, or when nothing else is needed)…"""
    before: MemoryReading
    after: MemoryReading
    seconds: float

    @property
    def released_bytes(self) -> int:
        """Host memory given back (resident set size before − after; negative when it grew)."""
        return self.before.rss_bytes - self.after.rss_bytes

    @property
    def released_cuda_bytes(self) -> int:
        return self.before.cuda_allocated_bytes - self.after.cuda_allocated_bytes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TurnReport:
        return cls(name=data["name"], action=data["action"], how=data["how"],
                   before=MemoryReading(**data["before"]), after=MemoryReading(**data["after"]),
                   seconds=float(data["seconds"]))


def measured(name: str, action: str, change) -> dict[str, Any]:
    """Run ``change()`` (which returns how it released or woke) between two readings — after a release, with the
    host heap trimmed, so what it freed shows — and return the :class:`TurnReport` as a dict (what crosses Ray)."""
    before = read_memory()
    started = time.perf_counter()
    how = change()
    if action == "release":
        trim_host_memory()
    return TurnReport(name=name, action=action, how=how, before=before, after=read_memory(),
                      seconds=time.perf_counter() - started).to_dict()
