"""A learner's process group and CPU offload: two FSDP2 ranks (separate processes, gloo) train one step with the
sharded state offloaded to host memory and one step without, and end with the same weights and gradient norm.

With ``cpu_offload`` the gradients the clipping reduces live in host memory; on GPU ranks that is why the group is
``cuda:nccl,cpu:gloo`` (NCCL cannot reduce host tensors). The CPU run exercises the same offload policy, clipping
and optimizer step that a GPU rank runs on its host-memory shards; tests/gpu checks the mixed group on CUDA.
"""

from __future__ import annotations

import queue
import socket

import pytest
import torch
import torch.multiprocessing as mp

from learner.distributed import process_group_backend


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_one_step(rank: int, context, cpu_offload: bool) -> tuple[float, dict, set]:
    from learner.distributed import full_tensor, shard_model
    from learner.optim import build_adamw, clip_and_step

    torch.manual_seed(0)
    blocks = torch.nn.ModuleList([torch.nn.Linear(8, 8) for _ in range(3)])
    root = torch.nn.Sequential(*blocks, torch.nn.Linear(8, 2))
    shard_model(root, blocks, context, compute_dtype=None, cpu_offload=cpu_offload)
    optimizer = build_adamw(list(root.parameters()), lr=1e-2, weight_decay=0.0)
    torch.manual_seed(1 + rank)  # each rank its own half of the batch
    loss = root(torch.randn(4, 8)).pow(2).sum()
    loss.backward()
    devices = {str(p.grad.to_local().device) for p in root.parameters() if p.grad is not None}
    outcome = clip_and_step(optimizer, list(root.parameters()), max_norm=0.1)  # clipping active
    weights = {name: full_tensor(p).detach().clone() for name, p in root.named_parameters()}
    return outcome.grad_norm, weights, devices


def _rank(rank: int, port: int, results: "mp.Queue") -> None:
    from learner.distributed import ParallelContext, Rendezvous

    torch.set_num_threads(1)
    context = ParallelContext.join(rank, Rendezvous("127.0.0.1", port, 2, timeout_s=60.0), torch.device("cpu"))
    plain = _train_one_step(rank, context, cpu_offload=False)
    offloaded = _train_one_step(rank, context, cpu_offload=True)
    results.put((rank, plain[0], offloaded[0], offloaded[2],
                 {n: (plain[1][n] - offloaded[1][n]).abs().max().item() for n in plain[1]}))
    context.close()


def test_gpu_ranks_join_nccl_with_gloo_beside_it_for_offloaded_host_tensors():
    assert process_group_backend(torch.device("cuda", 0)) == "cuda:nccl,cpu:gloo"
    assert process_group_backend(torch.device("cpu")) == "gloo"


@pytest.mark.timeout(240)
def test_offloaded_sharded_step_matches_the_step_without_offload():
    context = mp.get_context("spawn")
    results = context.Queue()
    port = _free_port()
    processes = [context.Process(target=_rank, args=(rank, port, results)) for rank in range(2)]
    for process in processes:
        process.start()
    collected = []
    try:
        while len(collected) < 2:
            collected.append(results.get(timeout=180))
    except queue.Empty:
        pytest.fail(f"the ranks did not finish: {collected}")
    finally:
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()
    for rank, plain_norm, offloaded_norm, grad_devices, differences in collected:
        assert grad_devices == {"cpu"}
        assert plain_norm > 0.1 and abs(plain_norm - offloaded_norm) < 1e-5 * plain_norm, (plain_norm, offloaded_norm)
        assert max(differences.values()) < 1e-6, differences
