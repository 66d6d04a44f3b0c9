"""Which data plane each link of a weight sync takes, what the driver checks and counts, and what the capacity plan
assumes for it: pure rules, exercised with the device descriptors real members publish."""

from __future__ import annotations

import os

import pytest

from rollout.config import CapacityConfig, SyncConfig
from rollout.sync.cost import sync_plane, sync_seconds
from rollout.sync.links import MemberDevice, describe_device, plan_links, worker_members
from rollout.sync.weight_sync import (
    TRANSPORT_OF_BACKEND, expected_links, first_receivers, resolve_backend,
)
from rollout.sync.weight_transport import (
    PROBE_TOLERANCE_16BIT, PROBE_TOLERANCE_FLOAT32, TransferEndpoint, WeightTransferError, default_probe_tolerance,
)

NODE_A, NODE_B = "node-a/boot-1", "node-b/boot-2"


def cpu(machine: str = NODE_A) -> MemberDevice:
    return MemberDevice(machine, "cpu")


def gpu(uuid: str, machine: str = NODE_A, index: int = 0) -> MemberDevice:
    return MemberDevice(machine, f"cuda:{index}", f"GPU-{uuid}")


def test_auto_takes_nccl_between_gpus_ipc_on_a_shared_gpu_and_gloo_with_any_cpu():
    sender = gpu("0")
    receivers = [gpu("0", index=0), gpu("1", index=0), gpu("5", NODE_B)]  # colocated, same node, other node
    assert plan_links("auto", sender, receivers, [False] * 3) == ["ipc", "nccl", "nccl"]
    # A replica holding its weights in host memory turns the broadcast plane into gloo (host staging).
    assert plan_links("auto", sender, [gpu("0"), cpu(NODE_B)], [False, False]) == ["ipc", "gloo"]
    # CPUs: the shared-memory file for receivers on the sender's machine that see it, TCP for the others.
    assert plan_links("auto", cpu(), [cpu(), cpu(), cpu(NODE_B)], [True, False, False]) == ["ipc", "gloo", "gloo"]


def test_explicit_backends_are_honoured_or_refused_with_the_members_that_break_them():
    sender = gpu("0")
    assert plan_links("nccl", sender, [gpu("0"), gpu("1")], [False, False]) == ["ipc", "nccl"]
    with pytest.raises(WeightTransferError, match=r"nccl: receiver 1 .* host memory"):
        plan_links("nccl", sender, [gpu("1"), cpu()], [False, False])
    # gloo keeps every byte in host memory: a GPU sender stages, and no CUDA IPC is used.
    assert plan_links("gloo", sender, [gpu("0"), gpu("1", NODE_B)], [True, False]) == ["ipc", "gloo"]
    assert plan_links("ipc", sender, [gpu("0")], [False]) == ["ipc"]
    with pytest.raises(WeightTransferError, match=r"ipc: receivers \[1\] do not share the device"):
        plan_links("ipc", sender, [gpu("0"), gpu("1")], [False, False])
    with pytest.raises(WeightTransferError, match="ipc"):  # CPUs without a visible shared file
        plan_links("ipc", cpu(), [cpu()], [False])


def test_the_driver_refuses_an_impossible_backend_before_any_sync_and_counts_links_per_tp_worker():
    learner = [vars_of(gpu("0")), vars_of(gpu("1"))]
    replicas = [vars_of(gpu("2")), vars_of(gpu("3")), vars_of(gpu("4", NODE_B))]  # a TP=2 replica + one more
    assert expected_links("auto", learner, replicas) == {"nccl": 6}
    with pytest.raises(WeightTransferError):
        expected_links("nccl", learner, [vars_of(cpu())])
    colocated = [vars_of(gpu("0")), vars_of(gpu("1"))]
    assert expected_links("auto", learner, colocated) == {"ipc": 2, "nccl": 2}
    assert expected_links("auto", [vars_of(cpu())], [vars_of(cpu())]) == {"ipc": 1}
    assert expected_links("auto", [vars_of(cpu())], [vars_of(cpu())], shared_memory=False) == {"gloo": 1}


def vars_of(member: MemberDevice) -> dict:
    return {"machine": member.machine, "device": member.device, "gpu_uuid": member.gpu_uuid}


def test_sync_backend_selection_from_config():
    assert resolve_backend(SyncConfig(backend="auto"))[0] == "collective"
    assert resolve_backend(SyncConfig(backend="nccl")) == ("collective", "set by sync.backend (nccl)")
    assert resolve_backend(SyncConfig(backend="object_store"))[0] == "object_store"
    assert [TRANSPORT_OF_BACKEND[b] for b in ("auto", "collective", "nccl", "gloo", "ipc")] == \
        ["auto", "auto", "nccl", "gloo", "ipc"]
    with pytest.raises(ValueError, match="transport"):
        TransferEndpoint("h", 1, 1, 1, 1.0, transport="rdma")


def test_this_process_describes_its_host_memory_and_its_workers():
    member = describe_device("cpu")
    assert member.device == "cpu" and not member.is_cuda and member.machine.split("/")[0] == os.uname().nodename
    assert worker_members("cpu", 2) == [vars_of(member)] * 2


def test_a_tensor_parallel_replica_takes_consecutive_receiver_ranks():
    # Replica 0 runs 2 workers (TP=2), replica 1 one, replica 2 four: every receiver index exactly once.
    assert first_receivers([2, 1, 4], [0, 1, 2]) == [0, 2, 3]
    assert first_receivers([2, 1, 4], [2]) == [0]  # a re-sync to replica 2 alone
    with pytest.raises(ValueError):
        first_receivers([0], [0])


def test_merged_receipts_need_every_worker_with_the_same_digest():
    from critic_actor.engines import merge_worker_receipts

    receipts = [{"digest": "abc", "receiver": 1, "bytes_received": 10}, {"digest": "abc", "receiver": 0,
                                                                           "bytes_received": 10}]
    assert merge_worker_receipts(receipts, 2)["workers"] == 2
    with pytest.raises(RuntimeError, match="1 of the engine's 2 workers"):
        merge_worker_receipts([receipts[0], None], 2)
    with pytest.raises(RuntimeError, match="disagree"):
        merge_worker_receipts([receipts[0], {**receipts[1], "digest": "abd"}], 2)
    with pytest.raises(RuntimeError, match="joined as receivers"):
        merge_worker_receipts([receipts[0], {**receipts[1], "receiver": 1}], 2)


def test_probe_tolerance_follows_the_coarser_precision():
    assert default_probe_tolerance("float32", learner_computes_16bit=False) == PROBE_TOLERANCE_FLOAT32
    assert default_probe_tolerance("bfloat16", learner_computes_16bit=False) == PROBE_TOLERANCE_16BIT
    assert default_probe_tolerance("float32", learner_computes_16bit=True) == PROBE_TOLERANCE_16BIT


def test_the_time_model_per_plane():
    capacity = CapacityConfig()
    gb = 16.6e9
    assert sync_plane("auto", learner_gpus=8, replica_gpus=1) == "nccl"
    assert sync_plane("auto", learner_gpus=0, replica_gpus=0) == "gloo"
    assert sync_plane("auto", learner_gpus=4, replica_gpus=1, colocated=True) == "ipc"
    assert sync_plane("object_store", learner_gpus=8, replica_gpus=1) == "object_store"
    within = sync_seconds(gb, "nccl", receivers=3, senders=1, total_gpus=8, capacity=capacity)
    across = sync_seconds(gb, "nccl", receivers=24, senders=8, total_gpus=64, capacity=capacity)
    assert within.seconds == pytest.approx(16.6 / 350) and "NVLink" in within.detail
    assert across.seconds == pytest.approx(16.6 / 45) and "network" in across.detail
    # NCCL is flat in the receivers; gloo's tree is not: 1 → 4 replicas from one rank costs 1 → 3 rounds.
    assert sync_seconds(gb, "nccl", receivers=96, senders=8, total_gpus=64, capacity=capacity).seconds == \
        across.seconds
    one = sync_seconds(gb, "gloo", receivers=1, senders=1, total_gpus=0, capacity=capacity).seconds
    four = sync_seconds(gb, "gloo", receivers=4, senders=1, total_gpus=0, capacity=capacity).seconds
    assert four == pytest.approx(3 * one)
    ipc = sync_seconds(gb, "ipc", receivers=1, senders=1, total_gpus=8, capacity=capacity)
    assert ipc.seconds == pytest.approx(16.6 / (3350 * 0.7 / 2))
    measured = sync_seconds(gb, "nccl", receivers=3, senders=1, total_gpus=8,
                            capacity=CapacityConfig(weight_sync_gbs=8.0))
    assert measured.plane == "measured" and measured.seconds == pytest.approx(16.6 / 8)
