"""The weight-sync wire protocol over real gloo groups in separate processes (no Ray).

Two learner ranks shard a model with FSDP2 (their own default process group, as a sharded learner has) and each
sends only its own dim-0 shard; receivers in other processes reassemble the full tensors in the serving dtype.
Later syncs send only what changed. Each data plane carries a dense and a delta sync: the buckets broadcast over
the group, and (the receivers share the senders' machine) through the senders' shared-memory files. A receiver
that never joins fails the sync within the timeout.
"""

from __future__ import annotations

import math
import os
import queue
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

from rollout.sync.weight_transport import SyncManifest, TensorSpec, plan_buckets, shard_rows

SENDERS, RECEIVERS = 2, 2
# version → (dense or delta against the previous version, buckets through shared memory)
SYNCS = {1: (False, True), 2: (True, False), 3: (True, True), 4: (False, False)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(seed: int) -> torch.nn.Module:
    """Shapes chosen so dim-0 chunks are uneven or empty on one of two ranks (5 → 3+2, 3 → 2+1, 1 → 1+0)."""
    torch.manual_seed(seed)
    return torch.nn.ModuleDict({
        "proj": torch.nn.Linear(7, 5),
        "embed": torch.nn.Embedding(3, 4),
        "head": torch.nn.Linear(6, 1, bias=False),
        "wide": torch.nn.Linear(64, 40),
    })


def _manifest(version: int, delta_from=None) -> SyncManifest:
    specs = tuple(TensorSpec(name, tuple(p.shape)) for name, p in _model(0).named_parameters())
    # 1 KiB buckets: the 40x64 weight (5 KiB in bf16) is cut into several buckets.
    return SyncManifest(version=version, tensors=specs, wire_dtype="bfloat16", num_senders=SENDERS,
                        bucket_bytes=1024, delta_from=delta_from)


def _sender(rank: int, fsdp_port: int, endpoints: "mp.Queue", results: "mp.Queue") -> None:
    import datetime

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from learner.weight_sender import WeightSender

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(fsdp_port))
    dist.init_process_group("gloo", rank=rank, world_size=SENDERS, timeout=datetime.timedelta(seconds=60))
    model = _model(0)
    for module in model.values():
        fully_shard(module, mesh=init_device_mesh("cpu", (SENDERS,)))
    sender = WeightSender(rank, SENDERS, keep_snapshot=True)
    for version, (delta, shared) in SYNCS.items():
        if version > 1:  # a sparse change: one element of the big weight on each rank's shard, one bias entry
            with torch.no_grad():
                model["wide"].weight.to_local()[0, rank] += 1.0
                if rank == 0:
                    model["proj"].bias.to_local()[1] -= 0.5
        if rank == 0:
            endpoint = sender.open_endpoint("127.0.0.1", RECEIVERS, timeout_s=30.0, shared_memory=shared)
            for _ in range(SENDERS - 1 + RECEIVERS):
                endpoints.put(endpoint)
        else:
            endpoint = endpoints.get(timeout=60)
        manifest = _manifest(version, delta_from=sender.delta_base(version - 1 if delta else None))
        shards = ((name, p.to_local()) for name, p in model.named_parameters())
        report = sender.send(endpoint, manifest, shards)
        full = {name: _bits(p.full_tensor().detach().to(torch.bfloat16)) for name, p in model.named_parameters()}
        results.put(("sender", rank, version, report.checksums, report.bytes_sent, report.dense_bytes, full,
                     report.shared_memory))
    dist.destroy_process_group()


def _receiver(index: int, endpoints: "mp.Queue", results: "mp.Queue") -> None:
    from rollout.sync.transfer_group import Receipt, TransferGroup, receive_tensors

    torch.set_num_threads(1)
    mirror: dict = {}
    for version, (delta, _) in SYNCS.items():
        endpoint = endpoints.get(timeout=60)
        manifest = _manifest(version, delta_from=version - 1 if delta else None)
        receipt = Receipt()
        with TransferGroup(endpoint, endpoint.receiver_rank(index)) as group:
            got = {name: (str(tensor.dtype), _bits(tensor)) for name, tensor in
                   receive_tensors(group, manifest, receipt, mirror)}
        results.put(("receiver", index, version, receipt.digest, receipt.bytes_received, got))


def _bits(tensor: torch.Tensor):
    """The raw bits as a numpy array (tensors themselves cannot leave a spawned child that exits)."""
    return tensor.contiguous().view(torch.int16).numpy().copy()


def _run(targets, timeout_s: float = 240.0) -> list:
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=fn, args=(*args, results)) for fn, args in targets]
    for process in processes:
        process.start()
    collected, deadline = [], time.monotonic() + timeout_s
    try:
        while any(p.is_alive() for p in processes) or not results.empty():
            try:
                collected.append(results.get(timeout=1.0))
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise TimeoutError("transfer processes did not finish") from None
    finally:
        for process in processes:
            process.join(5)
            if process.is_alive():
                process.kill()
    assert all(p.exitcode == 0 for p in processes), [p.exitcode for p in processes]
    return collected


def test_shard_rows_follow_torch_chunk_including_empty_trailing_shards():
    for rows in range(0, 11):
        for shards in range(1, 5):
            chunks = torch.arange(rows).chunk(shards) if rows else ()
            for shard in range(shards):
                start, stop = shard_rows(rows, shards, shard)
                expected = chunks[shard].tolist() if shard < len(chunks) else []
                assert list(range(start, stop)) == expected, (rows, shards, shard)


def test_bucket_plan_covers_every_row_once_and_bounds_every_bucket():
    manifest = _manifest(1)
    buckets = plan_buckets(manifest)
    covered: dict[int, list[int]] = {i: [] for i in range(len(manifest.tensors))}
    for bucket in buckets:
        pieces = [p for per_sender in bucket.pieces for p in per_sender]
        assert sum(bucket.dense_bytes) <= manifest.bucket_bytes or len(pieces) == 1
        for piece in pieces:
            spec = manifest.tensors[piece.index]
            start, stop = shard_rows(spec.shape[0], SENDERS, piece.sender)
            assert start <= piece.row_start < piece.row_stop <= stop  # a piece never leaves its sender's shard
            covered[piece.index] += list(range(piece.row_start, piece.row_stop))
    assert all(sorted(rows) == list(range(manifest.tensors[i].shape[0])) for i, rows in covered.items())
    assert len(buckets) > 4 and manifest.dense_bytes == sum(math.prod(t.shape) for t in manifest.tensors) * 2


def test_two_fsdp2_ranks_send_their_own_shards_and_receivers_reassemble_then_get_only_the_change():
    context = mp.get_context("spawn")
    endpoints = context.Queue()
    fsdp_port = _free_port()
    results = _run([(_sender, (rank, fsdp_port, endpoints)) for rank in range(SENDERS)]
                   + [(_receiver, (index, endpoints)) for index in range(RECEIVERS)])
    senders = {(r[1], r[2]): r for r in results if r[0] == "sender"}
    receivers = {(r[1], r[2]): r for r in results if r[0] == "receiver"}
    assert len(senders) == SENDERS * len(SYNCS) and len(receivers) == RECEIVERS * len(SYNCS)
    for version, (_, shared) in SYNCS.items():
        assert all(senders[(rank, version)][7] == shared for rank in range(SENDERS)), version
        full = senders[(0, version)][6]
        sent_checksums = {**senders[(0, version)][3], **senders[(1, version)][3]}
        # Both ranks sent part of every bucket that holds rows of both: nobody gathered the model.
        assert {rank for (_, rank) in sent_checksums} == {0, 1}
        from rollout.sync.weight_transport import combine_checksums

        for index in range(RECEIVERS):
            _, _, _, digest, _, got = receivers[(index, version)]
            assert digest == combine_checksums(sent_checksums)
            assert set(got) == set(full)
            for name, bits in full.items():
                assert got[name][0] == "torch.bfloat16" and (got[name][1] == bits).all(), name
    dense = sum(senders[(rank, 1)][4] for rank in range(SENDERS))
    assert dense == sum(senders[(rank, 1)][5] for rank in range(SENDERS))
    for version in (2, 3):
        delta = sum(senders[(rank, version)][4] for rank in range(SENDERS))
        # Three changed elements out of ~2.7k: headers, trailers and three sparse entries instead of every weight.
        assert delta < dense / 10, (version, delta, dense)


def _lone_sender(endpoints: "mp.Queue", results: "mp.Queue") -> None:
    from learner.weight_sender import WeightSender
    from rollout.sync.weight_transport import WeightTransferError

    sender = WeightSender(0, 1)
    endpoint = sender.open_endpoint("127.0.0.1", num_receivers=2, timeout_s=3.0)
    endpoints.put(endpoint)
    manifest = SyncManifest(version=1, tensors=(TensorSpec("w", (4, 4)),), wire_dtype="float32", num_senders=1,
                            bucket_bytes=1024)
    started = time.perf_counter()
    try:
        sender.send(endpoint, manifest, [("w", torch.ones(4, 4))])
        results.put(("sender", "sent", 0.0))
    except WeightTransferError as exc:
        results.put(("sender", str(exc), time.perf_counter() - started))


def _joining_receiver(endpoints: "mp.Queue", results: "mp.Queue") -> None:
    from rollout.sync.weight_transport import WeightTransferError
    from rollout.sync.transfer_group import Receipt, TransferGroup, receive_tensors

    endpoint = endpoints.get(timeout=60)
    manifest = SyncManifest(version=1, tensors=(TensorSpec("w", (4, 4)),), wire_dtype="float32", num_senders=1,
                            bucket_bytes=1024)
    started = time.perf_counter()
    try:
        with TransferGroup(endpoint, endpoint.receiver_rank(0)) as group:
            list(receive_tensors(group, manifest, Receipt()))
        results.put(("receiver", "received", 0.0))
    except WeightTransferError as exc:
        results.put(("receiver", str(exc), time.perf_counter() - started))


def test_a_receiver_that_never_joins_fails_every_other_rank_within_the_timeout():
    context = mp.get_context("spawn")
    endpoints = context.Queue()
    results = {r[0]: r for r in _run([(_lone_sender, (endpoints,)), (_joining_receiver, (endpoints,))], 120.0)}
    for role in ("sender", "receiver"):
        _, message, seconds = results[role]
        assert "within 3 s" in message and "not every rank joined" in message, message
        assert 2.5 < seconds < 20.0, seconds


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
