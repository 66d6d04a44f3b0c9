"""The time model of one weight sync, per data plane: what the capacity plan prints for each model's sync stage.

One formula per plane (B: bytes each receiving worker gets; R: receiving workers; S: learner ranks sending; the
bandwidths are ``cluster.capacity`` inputs, assumptions until measured):

| plane | seconds | why |
|---|---|---|
| ``ipc`` (a colocated replica) | B / (HBM bandwidth · efficiency / 2) | a device-to-device copy reads and writes B |
| ``nccl`` within a node | B / ``nvlink_gbs`` | a pipelined broadcast delivers every byte once per GPU: flat in R |
| ``nccl`` between nodes | B / ``gpu_network_gbs`` | the same, bound by each GPU's network link |
| ``gloo`` | max(B, ⌈log2(R+1)⌉ · B / S) / ``tcp_gbs`` | an unsegmented binomial tree: each root sends its share ⌈log2(R+1)⌉ times |
| object store | B / ``tcp_gbs`` · (nodes holding replicas) | rank 0's node serves one copy to every node |

Not included, because no machine here could measure them: the rendezvous (a fresh TCP store and groups per sync:
50–90 ms with gloo on CPU; NCCL communicator set-up on GPUs is unmeasured), and the replica's own load (vLLM's
layerwise reload, a LoRA merge). A measured ``weight_sync_gbs`` replaces the whole model. Pure arithmetic; no
torch, no Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SyncEstimate:
    plane: str
    """``ipc``, ``nccl``, ``gloo``, ``object_store``, or ``measured``."""
    seconds: float
    detail: str
    """The formula with its numbers, for the plan's line."""


def sync_plane(backend: str, *, learner_gpus: float, replica_gpus: float, colocated: bool = False) -> str:
    """The plane a sync will mostly take for a config: the links' rule (:mod:`rollout.sync.links`) applied to
    where the config puts the learner and the replicas."""
    if backend == "object_store":
        return "object_store"
    on_gpus = learner_gpus > 0 and replica_gpus > 0
    if backend == "ipc" or (colocated and on_gpus and backend != "gloo"):
        return "ipc"
    if backend == "gloo" or not on_gpus:
        return "gloo"
    return "nccl"


def sync_seconds(payload_bytes: float, plane: str, *, receivers: int, senders: int, total_gpus: float,
                 capacity) -> SyncEstimate:
    """Modelled seconds of moving ``payload_bytes`` to each of ``receivers`` workers from ``senders`` ranks."""
    gb = payload_bytes / 1e9
    if capacity.weight_sync_gbs:
        return SyncEstimate("measured", gb / capacity.weight_sync_gbs,
                            f"{gb:.2f} GB at the measured {capacity.weight_sync_gbs:g} GB/s")
    receivers, senders = max(1, receivers), max(1, senders)
    if plane == "ipc":
        rate = capacity.gpu_memory_bandwidth_gbs * capacity.bandwidth_efficiency / 2
        return SyncEstimate("ipc", gb / rate, f"{gb:.2f} GB, CUDA IPC device copy at {rate:.0f} GB/s")
    if plane == "nccl":
        one_node = total_gpus <= capacity.gpus_per_node
        rate = capacity.nvlink_gbs if one_node else capacity.gpu_network_gbs
        link = "NVLink" if one_node else "the network"
        return SyncEstimate("nccl", gb / rate, f"{gb:.2f} GB, NCCL broadcast over {link} at {rate:g} GB/s "
                                               f"(flat in {receivers} receivers)")
    if plane == "gloo":
        rounds = math.ceil(math.log2(receivers + 1))
        factor = max(1.0, rounds / senders)
        return SyncEstimate("gloo", gb * factor / capacity.tcp_gbs,
                            f"{gb:.2f} GB × max(1, ⌈log2({receivers}+1)⌉/{senders}) = {gb * factor:.2f} GB, gloo "
                            f"tree over TCP at {capacity.tcp_gbs:g} GB/s")
    if plane == "object_store":
        nodes = max(1, math.ceil(total_gpus / capacity.gpus_per_node))
        return SyncEstimate("object_store", gb * nodes / capacity.tcp_gbs,
                            f"{gb:.2f} GB × {nodes} node(s) from rank 0's node, object store at "
                            f"{capacity.tcp_gbs:g} GB/s")
    raise ValueError(f"unknown sync plane {plane!r}")


__all__ = ["SyncEstimate", "sync_plane", "sync_seconds"]
