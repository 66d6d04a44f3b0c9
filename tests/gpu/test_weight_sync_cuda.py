"""Weight sync on CUDA, the paths a CPU machine never runs: CUDA IPC to a receiver on the sender's GPU, NCCL between
GPUs (pipelined and one bucket at a time), a stalled NCCL peer failing the sync without killing the sender, the
learner's mixed ``cuda:nccl,cpu:gloo`` group reducing CPU-offloaded gradients, the served-output probe gap in
bf16, and the sync into a real vLLM engine with tensor parallelism 2 (one receiver per worker).

Marked ``gpu`` (skipped without CUDA); tests that need two GPUs or vLLM skip themselves when those are missing.
Run on a GPU machine: ``python -m pytest tests/gpu/test_weight_sync_cuda.py -q -s`` — with ``-s`` each test prints
the figures it measured (``[sync-gpu] ...`` lines), which are the only GPU figures docs/design/weight-sync.md may
quote.
"""

from __future__ import annotations

import os
import queue
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

pytestmark = pytest.mark.gpu

TENSOR_ROWS, ROW = 2048, 4096  # 16 MiB per bf16 tensor


def _two_gpus() -> None:
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")


def _names(megabytes: int) -> list[str]:
    return [f"layers.{i}.weight" for i in range(max(1, megabytes * (1 << 20) // (TENSOR_ROWS * ROW * 2)))]


def _state(device: str, megabytes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator(device=device).manual_seed(seed)
    return {name: torch.randn(TENSOR_ROWS, ROW, device=device, generator=generator,
                              dtype=torch.float32).to(torch.bfloat16) for name in _names(megabytes)}


def _word_sums(state: dict[str, torch.Tensor]) -> dict[str, int]:
    from rollout.sync.weight_transport import device_checksum

    return {name: int(device_checksum(t.contiguous().view(-1).view(torch.uint8))) for name, t in state.items()}


def _manifest(megabytes: int, bucket_mb: int = 64):
    from rollout.sync.weight_transport import SyncManifest, TensorSpec

    return SyncManifest(version=1, tensors=tuple(TensorSpec(n, (TENSOR_ROWS, ROW)) for n in _names(megabytes)),
                        wire_dtype="bfloat16", num_senders=1, bucket_bytes=bucket_mb << 20)


def _sender(device: str, megabytes: int, receivers: int, depths: list[int], transport: str, endpoints, results):
    from learner.weight_sender import WeightSender
    from rollout.sync.weight_transport import WeightTransferError

    torch.cuda.set_device(torch.device(device))
    state = _state(device, megabytes)
    sender = WeightSender()
    for depth in depths:
        endpoint = sender.open_endpoint("127.0.0.1", receivers, timeout_s=60.0, transport=transport,
                                        pipeline_depth=depth)
        for _ in range(receivers):
            endpoints.put(endpoint)
        started = time.perf_counter()
        try:
            report = sender.send(endpoint, _manifest(megabytes), state.items(), device=device)
            results.put(("sender", depth, time.perf_counter() - started, report.links, report.bytes_sent,
                         _word_sums(state)))
        except WeightTransferError as exc:
            results.put(("sender", depth, time.perf_counter() - started, "failed", str(exc), None))
    results.put(("sender-alive", os.getpid()))


def _receiver(device: str, megabytes: int, depths: list[int], endpoints, results, stop_after_bytes: int = 0):
    from rollout.sync.receiving import Receipt, receive_tensors
    from rollout.sync.transfer_group import TransferGroup

    torch.cuda.set_device(torch.device(device))
    manifest = _manifest(megabytes)
    for depth in depths:
        endpoint = endpoints.get(timeout=120)
        receipt, got = Receipt(), {}
        started = time.perf_counter()
        with TransferGroup(endpoint, endpoint.receiver_rank(0), device=device) as group:
            for name, tensor in receive_tensors(group, manifest, receipt):
                assert tensor.device.type == "cuda" and tensor.dtype == torch.bfloat16
                got[name] = tensor
                if stop_after_bytes and receipt.bytes_received >= stop_after_bytes:
                    os._exit(0)  # a replica lost mid-sync
        torch.cuda.synchronize()
        results.put(("receiver", depth, time.perf_counter() - started, receipt.links, receipt.bytes_received,
                     _word_sums(got)))


def _run(targets, expected: int, timeout_s: float = 300.0) -> list:
    context = mp.get_context("spawn")
    endpoints, results = context.Queue(), context.Queue()
    processes = [context.Process(target=fn, args=(*args, endpoints, results), kwargs=kwargs)
                 for fn, args, kwargs in targets]
    for process in processes:
        process.start()
    collected, deadline = [], time.monotonic() + timeout_s
    try:
        while len(collected) < expected:
            try:
                collected.append(results.get(timeout=5.0))
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {collected} arrived") from None
    finally:
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
    return collected


def _timed_syncs(sender_gpu: int, receiver_gpu: int, transport: str, plane: str, megabytes: int,
                 label: str) -> None:
    """One learner rank and one receiver process syncing ``megabytes`` of bf16 (64 MiB buckets) one bucket at a
    time and pipelined, twice each: every sync over ``plane``, bit-exact, the fastest of each printed."""
    depths = [1, 2, 1, 2]
    out = _run([(_sender, (f"cuda:{sender_gpu}", megabytes, 1, depths, transport), {}),
                (_receiver, (f"cuda:{receiver_gpu}", megabytes, depths), {})], expected=2 * len(depths) + 1)
    sent = [r for r in out if r[0] == "sender"]
    received = [r for r in out if r[0] == "receiver"]
    assert all(r[3] == {plane: 1} for r in sent + received)
    assert all(r[5] == sent[0][5] for r in received)  # every tensor's word sum, as the sender held it
    for depth in (1, 2):
        seconds = min(r[2] for r in received if r[1] == depth)
        print(f"[sync-gpu] {label}, {megabytes} MiB bf16 in 64 MiB buckets, depth {depth}: {seconds:.3f} s "
              f"({megabytes / 1024 / seconds:.1f} GiB/s)")


def test_cuda_ipc_link_delivers_to_a_receiver_on_the_senders_gpu():
    """Two processes on GPU 0 (a colocated learner rank and replica): the receiver reads the sender's bucket slots
    through CUDA IPC handles; the bytes stay on the GPU and arrive bit-exact."""
    _timed_syncs(0, 0, "auto", "ipc", 512, "CUDA IPC on one GPU")


def test_nccl_link_between_two_gpus_pipelined_and_one_bucket_at_a_time():
    _two_gpus()
    _timed_syncs(0, 1, "nccl", "nccl", 1024, "NCCL GPU0 -> GPU1")


def test_a_receiver_lost_mid_sync_fails_the_nccl_sync_and_the_sender_lives_on():
    _two_gpus()
    out = _run([(_sender, ("cuda:0", 512, 1, [2], "nccl"), {}),
                (_receiver, ("cuda:1", 512, [2]), {"stop_after_bytes": 64 << 20})], expected=2, timeout_s=240.0)
    (failed,) = [r for r in out if r[0] == "sender"]
    assert failed[3] == "failed" and "failed within 60 s" in failed[4], failed
    assert any(r[0] == "sender-alive" for r in out)  # the process reported after the failure: not torn down
    print(f"[sync-gpu] NCCL peer lost mid-sync: the sender failed after {failed[2]:.1f} s: {failed[4][:160]}")


def test_mixed_group_reduces_cpu_offloaded_gradients():
    """One GPU rank with FSDP2 CPU offload: clipping reduces host-memory gradients, which the group's gloo half
    carries (a plain NCCL group has no backend for CPU tensors)."""
    from learner.distributed import ParallelContext, Rendezvous, free_port, shard_model
    from learner.optim import build_adamw, clip_and_step

    context = ParallelContext.join(0, Rendezvous("127.0.0.1", free_port(), 1), torch.device("cuda", 0))
    try:
        import torch.distributed as dist

        assert dist.get_backend() == "cuda:nccl,cpu:gloo"
        blocks = torch.nn.ModuleList([torch.nn.Linear(64, 64) for _ in range(2)])
        root = torch.nn.Sequential(*blocks)
        shard_model(root, blocks, context, compute_dtype=torch.bfloat16, cpu_offload=True)
        optimizer = build_adamw(list(root.parameters()), lr=1e-3, weight_decay=0.0)
        root(torch.randn(8, 64, device="cuda")).float().pow(2).sum().backward()
        assert {p.grad.to_local().device.type for p in root.parameters()} == {"cpu"}
        outcome = clip_and_step(optimizer, list(root.parameters()), max_norm=0.1)
        assert outcome.applied and np.isfinite(outcome.grad_norm)
    finally:
        context.close()


def test_probe_gap_between_the_bf16_learner_and_a_bf16_engine(embedded_models):
    """The served-output probe in bf16: the learner's forward (bf16 autocast on CUDA) against the transformers
    engine serving bf16 on the same GPU; the gap must sit well inside the default 16-bit tolerance."""
    from critic_actor.engines import TransformersCriticEngine
    from critic_actor.grammar import CRITIC_INSTRUCTION
    from learner.config import CriticLearnerConfig
    from learner.critic_learner import CriticLearner
    from rollout.sync.weight_transport import PROBE_TOLERANCE_16BIT

    learner = CriticLearner(embedded_models.critic, CriticLearnerConfig(kl_coef=0.0), min_pixels=3136,
                            max_pixels=12544, device="cuda")
    ids = learner.processor.tokenizer(CRITIC_INSTRUCTION, add_special_tokens=False)["input_ids"][:32]
    engine = TransformersCriticEngine(embedded_models.critic, dtype="bfloat16", min_pixels=3136, max_pixels=12544,
                                      suppressed_token_ids=[], device="cuda")
    gap = float(np.mean(np.abs(engine.prompt_log_probs(ids) - learner.probe_log_probs(ids))))
    print(f"[sync-gpu] probe gap, tiny critic, bf16 learner vs bf16 transformers engine: {gap:.4f} nats "
          f"(default tolerance {PROBE_TOLERANCE_16BIT})")
    assert gap < PROBE_TOLERANCE_16BIT


def _critic_sender(model_dir: str, endpoints, results):
    """A critic learner on GPU 0 whose weights were nudged away from the checkpoint, sending them in bf16."""
    from critic_actor.grammar import CRITIC_INSTRUCTION
    from learner.config import CriticLearnerConfig
    from learner.critic_learner import CriticLearner
    from learner.weight_sender import WeightSender
    from rollout.sync.weight_transport import ProbeSpec, SyncManifest, TensorSpec

    learner = CriticLearner(model_dir, CriticLearnerConfig(kl_coef=0.0), min_pixels=3136, max_pixels=12544,
                            device="cuda:0")
    with torch.no_grad():  # another policy than the checkpoint the engine loaded: the sync must be visible
        learner.model.lm_head.weight.mul_(-1.0)
    ids = learner.processor.tokenizer(CRITIC_INSTRUCTION, add_special_tokens=False)["input_ids"][:32]
    state = learner.model.state_dict()
    sender = WeightSender()
    endpoint = sender.open_endpoint("127.0.0.1", 2, timeout_s=120.0)
    manifest = SyncManifest(version=1, tensors=tuple(TensorSpec(n, tuple(t.shape)) for n, t in state.items()),
                            wire_dtype="bfloat16", num_senders=1, bucket_bytes=1 << 20,
                            probe=ProbeSpec(tuple(ids), tuple(learner.probe_log_probs(ids).tolist()), 0.1))
    endpoints.put((endpoint, manifest))
    report = sender.send(endpoint, manifest, state.items(), device="cuda:0")
    results.put(("sender", report.links, report.bytes_sent))


def test_vllm_engine_with_tensor_parallel_2_receives_one_copy_per_worker(embedded_models):
    """A learner rank on GPU 0 sends to a vLLM replica with TP=2 on GPUs 0 and 1: worker 0 shares the rank's GPU
    (CUDA IPC), worker 1 gets NCCL; each worker is its own receiver and the served log-probs follow the learner's."""
    _two_gpus()
    pytest.importorskip("vllm")
    from critic_actor.engines import VLLMCriticEngine

    engine = VLLMCriticEngine(embedded_models.critic, dtype="bfloat16", min_pixels=3136, max_pixels=12544,
                              suppressed_token_ids=[], tensor_parallel_size=2, gpu_memory_utilization=0.2)
    context = mp.get_context("spawn")
    endpoints, results = context.Queue(), context.Queue()
    process = context.Process(target=_critic_sender, args=(str(embedded_models.critic), endpoints, results))
    process.start()
    try:
        endpoint, manifest = endpoints.get(timeout=300)
        before = engine.prompt_log_probs(manifest.probe.token_ids)
        started = time.perf_counter()
        receipt = engine.receive_weights(endpoint, 0, manifest)
        seconds = time.perf_counter() - started
        after = engine.prompt_log_probs(manifest.probe.token_ids)
        _, sender_links, sent_bytes = results.get(timeout=120)
    finally:
        process.join(60)
        if process.is_alive():
            process.kill()
        engine.shutdown()
    expected = np.asarray(manifest.probe.log_probs)
    gap_before, gap_after = (float(np.mean(np.abs(x - expected))) for x in (before, after))
    print(f"[sync-gpu] vLLM TP=2 sync: {sent_bytes} bytes per worker in {seconds:.2f} s, links {sender_links}; "
          f"probe gap before {gap_before:.4f}, after {gap_after:.4f} nats")
    assert receipt["workers"] == 2 and sender_links == {"ipc": 1, "nccl": 1}
    assert receipt["bytes_received"] == sent_bytes
    assert gap_after < 0.1 < gap_before
