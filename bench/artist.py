"""Benchmarks of the Photographic Artist's sampling side, one function per measurement.

- :func:`bench_sampler_loop`: edits/s of the bare ``FlowMatchSampler`` loop in this process.
- :func:`bench_sampler_actor`: edits/s through ``ArtistSamplerGroup`` (one Ray replica, records in, edits out,
  images published to the object store) on the same workload; the ratio to the bare loop is the actor overhead.
- :func:`bench_weight_sync`: seconds and bytes of one sampling-LoRA sync to every replica.
- :func:`bench_conditioning_transport`: the two ways H_c can reach a sampler (ship it through the object store,
  or hold a critic copy and recompute it), measured at the embedded size; see
  docs/design/conditioning-transport.md.

- :func:`bench_actor_to_loop_ratio`: the two above measured in alternation, for a fair ratio on a shared machine.

Run: ``.venv/bin/python -m bench.artist [--repeats 5] [--only ratio|loop|actor|sync|transport]``; prints JSON.
Each measurement pins torch to the same number of threads in the driver and in the actor, so the ratio compares
like with like. Numbers depend on the machine and on whatever else runs on it; report them with the command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

WORKLOAD = {"photos": 4, "critiques": 4, "edits_per_critique": 4, "hidden_tokens": 80, "resolution": 64,
            "num_steps": 6, "solver": "dpm2"}
"""Default: 4 photos × 4 critiques × K = 4 → 64 edits per call at the embedded config's 64², N = 6, DPM2."""


def _artist_path() -> Path:
    from rollout.models import ensure_embedded_models

    return ensure_embedded_models().artist


def _hidden_size(artist: Path) -> int:
    return int(json.loads((artist / "transformer" / "config.json").read_text())["joint_attention_dim"])


def _workload(hidden_size: int, workload: dict[str, Any], put=None):
    """(tasks, critiques, conditionings) records for the workload; ``put`` wraps arrays (e.g. ``ray.put``)."""
    from rollout.records.types import Conditioning, Critique, ParsedCritique, PhotoTask

    wrap = put or (lambda value: value)
    rng = np.random.default_rng(0)
    size = workload["resolution"]
    tasks, critiques, conditionings = [], [], []
    for p in range(workload["photos"]):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        tasks.append(PhotoTask(task_id=f"p{p}", input=wrap(image), target=wrap(image)))
        for c in range(workload["critiques"]):
            critiques.append(Critique(task_id=f"p{p}", index=c, text="", prompt_token_ids=[], completion_token_ids=[],
                                      rollout_logprobs=np.zeros(0, np.float32), finish_reason="stop",
                                      parsed=ParsedCritique(), policy_version=0))
            hidden = rng.standard_normal((workload["hidden_tokens"], hidden_size)).astype(np.float32)
            conditionings.append(Conditioning(task_id=f"p{p}", critique_index=c, hidden=wrap(hidden)))
    return tasks, critiques, conditionings


def _loop_runner(artist: Path, workload: dict, threads: int):
    """A callable that samples the workload with the bare ``FlowMatchSampler`` loop; returns edits made."""
    import torch

    from artist_actor.actor import edit_seed
    from artist_actor.config import ArtistConfig
    from artist_actor.model import load_artist
    from artist_actor.sampler import EditRequest, FlowMatchSampler

    torch.set_num_threads(threads)
    model = load_artist(artist, dtype="float32")
    sampler = FlowMatchSampler(model, num_steps=workload["num_steps"], solver=workload["solver"],
                               resolution=workload["resolution"], max_batch_size=ArtistConfig().max_batch_size)
    tasks, _, conditionings = _workload(model.hidden_size, workload)
    images = {task.task_id: task.input for task in tasks}
    requests = [EditRequest(condition_image=images[c.task_id], hidden=c.hidden,
                            seed=edit_seed(0, 0, c.task_id, c.critique_index, k))
                for c in conditionings for k in range(workload["edits_per_critique"])]
    sampler.sample(requests[:2])  # warm-up: first calls pay for allocator and kernel selection
    return lambda: len(sampler.sample(requests))


def _actor_runner(artist: Path, workload: dict, threads: int):
    """(callable sampling the workload through a one-replica ``ArtistSamplerGroup``, the group)."""
    import ray

    from artist_actor.config import ArtistConfig
    from artist_actor.group import ArtistSamplerGroup

    config = ArtistConfig(num_samplers=1, cpus_per_sampler=float(threads), resolution=workload["resolution"],
                          num_steps=workload["num_steps"], solver=workload["solver"], dtype="float32",
                          edits_per_critique=workload["edits_per_critique"])
    group = ArtistSamplerGroup(config, str(artist), namespace="bench-artist")
    tasks, critiques, conditionings = _workload(_hidden_size(artist), workload, put=ray.put)
    group.sample(tasks[:1], critiques[:1], conditionings[:1], k=2)  # warm-up
    return (lambda: len(group.sample(tasks, critiques, conditionings, k=workload["edits_per_critique"]))), group


def _timed(run, repeats: int) -> dict[str, float]:
    times, edits = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        edits = run()
        times.append(time.perf_counter() - start)
    return {"edits": edits, "best_s": min(times), "median_s": float(np.median(times)),
            "edits_per_s": edits / min(times)}


def bench_sampler_loop(artist: Path | None = None, workload: dict | None = None, repeats: int = 5,
                       threads: int = 1) -> dict[str, float]:
    """Edits/s of ``FlowMatchSampler.sample`` on the workload's requests (best of ``repeats``)."""
    workload = {**WORKLOAD, **(workload or {})}
    return _timed(_loop_runner(artist or _artist_path(), workload, threads), repeats)


def bench_sampler_actor(artist: Path | None = None, workload: dict | None = None, repeats: int = 5,
                        threads: int = 1) -> dict[str, float]:
    """Edits/s through a one-replica ``ArtistSamplerGroup`` on the same workload (best of ``repeats``)."""
    workload = {**WORKLOAD, **(workload or {})}
    run, group = _actor_runner(artist or _artist_path(), workload, threads)
    try:
        return _timed(run, repeats)
    finally:
        group.shutdown()


def bench_actor_to_loop_ratio(artist: Path | None = None, workload: dict | None = None, rounds: int = 5,
                              threads: int = 1) -> dict[str, Any]:
    """Actor edits/s ÷ bare-loop edits/s, the two measured in alternation (one call each per round, best of
    ``rounds``) so that load from other processes on a shared machine hits both alike."""
    workload = {**WORKLOAD, **(workload or {})}
    artist = artist or _artist_path()
    loop = _loop_runner(artist, workload, threads)
    actor, group = _actor_runner(artist, workload, threads)
    try:
        loop_times, actor_times, edits = [], [], 0
        for _ in range(rounds):
            for run, times in ((loop, loop_times), (actor, actor_times)):
                start = time.perf_counter()
                edits = run()
                times.append(time.perf_counter() - start)
    finally:
        group.shutdown()
    loop_rate, actor_rate = edits / min(loop_times), edits / min(actor_times)
    return {"edits_per_call": edits, "loop_edits_per_s": loop_rate, "actor_edits_per_s": actor_rate,
            "ratio": actor_rate / loop_rate, "loop_times_s": loop_times, "actor_times_s": actor_times}


def lora_state_for(artist: Path, rank: int) -> dict[str, Any]:
    """A sampling-adapter state (adapter-free peft names) of ``rank`` for the artist's DiT."""
    import torch

    config = json.loads((artist / "transformer" / "config.json").read_text())
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    state = {}
    for block in range(config["num_layers"]):
        for proj in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"):
            prefix = f"transformer_blocks.{block}.attn.{proj}"
            state[f"{prefix}.lora_A.weight"] = torch.randn(rank, inner) * 0.01
            state[f"{prefix}.lora_B.weight"] = torch.zeros(inner, rank)
    return state


def bench_weight_sync(artist: Path | None = None, num_samplers: int = 2, rank: int = 8,
                      repeats: int = 5) -> dict[str, float]:
    """Seconds of ``ArtistSamplerGroup.set_weights`` to ``num_samplers`` replicas and the bytes it ships."""
    from artist_actor.config import ArtistConfig
    from artist_actor.group import ArtistSamplerGroup

    artist = artist or _artist_path()
    state = lora_state_for(artist, rank)
    group = ArtistSamplerGroup(ArtistConfig(num_samplers=num_samplers, cpus_per_sampler=1.0, dtype="float32"),
                               str(artist), namespace="bench-artist-sync")
    try:
        times = []
        for version in range(1, repeats + 1):
            start = time.perf_counter()
            group.set_weights(version, state)
            times.append(time.perf_counter() - start)
        return {"replicas": num_samplers, "rank": rank, "tensors": len(state),
                "bytes": int(sum(t.numel() * t.element_size() for t in state.values())),
                "best_s": min(times), "median_s": float(np.median(times))}
    finally:
        group.shutdown()


def bench_conditioning_transport(tokens: int = 200, repeats: int = 20, real_tokens: int = 2580,
                                 real_hidden_size: int = 3584) -> dict[str, float]:
    """Both H_c transports at the embedded size: object-store round trip of one critique's H_c versus holding the
    tiny critic in the sampler (its weight bytes) and recomputing H_c with one forward over ``tokens`` tokens.
    Also the object-store round trip of one real-size H_c (``real_tokens`` × ``real_hidden_size``, 2 bytes per
    value as bf16 is shipped) between two processes of this machine."""
    import ray
    import torch
    from transformers import AutoModelForImageTextToText

    from rollout.models import ensure_embedded_models

    critic_dir = ensure_embedded_models().critic
    critic = AutoModelForImageTextToText.from_pretrained(critic_dir, dtype=torch.float32).eval()
    hidden_size = int(critic.config.get_text_config().hidden_size)
    hidden = np.random.default_rng(0).standard_normal((tokens, hidden_size)).astype(np.float32)

    @ray.remote(num_cpus=0)
    def fetch(ref_list):
        return ray.get(ref_list[0]).nbytes

    ray.get(fetch.remote([ray.put(hidden)]))  # warm the worker
    ship = []
    for _ in range(repeats):
        start = time.perf_counter()
        ray.get(fetch.remote([ray.put(hidden)]))
        ship.append(time.perf_counter() - start)
    real = np.zeros((real_tokens, real_hidden_size), np.float16)
    ray.get(fetch.remote([ray.put(real)]))
    ship_real = []
    for _ in range(max(3, repeats // 4)):
        start = time.perf_counter()
        ray.get(fetch.remote([ray.put(real)]))
        ship_real.append(time.perf_counter() - start)
    input_ids = torch.randint(10, 200, (1, tokens))
    with torch.no_grad():
        critic(input_ids=input_ids, output_hidden_states=True)
        recompute = []
        for _ in range(repeats):
            start = time.perf_counter()
            critic(input_ids=input_ids, output_hidden_states=True)
            recompute.append(time.perf_counter() - start)
    critic_bytes = sum(p.numel() * p.element_size() for p in critic.parameters())
    return {"tokens": tokens, "hidden_size": hidden_size, "h_c_bytes_per_critique": int(hidden.nbytes),
            "ship_round_trip_s": float(np.median(ship)), "critic_copy_bytes": int(critic_bytes),
            "recompute_forward_s": float(np.median(recompute)), "real_h_c_bytes": int(real.nbytes),
            "real_ship_round_trip_s": float(np.median(ship_real))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the driver loop and the actor")
    parser.add_argument("--resolution", type=int, default=WORKLOAD["resolution"], help="artist resolution (px)")
    parser.add_argument("--only", choices=["loop", "actor", "ratio", "sync", "transport"], action="append",
                        help="run only these measurements (repeatable); default all")
    args = parser.parse_args(argv)
    from rollout.env import apply_runtime_defaults

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local bench must not switch on token auth
    apply_runtime_defaults()
    import ray

    chosen = args.only or ["ratio", "sync", "transport"]
    ray.init(address="local", num_cpus=8, num_gpus=0, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        workload = {**WORKLOAD, "resolution": args.resolution}
        results: dict[str, Any] = {"workload": workload, "threads": args.threads, "cpu_count": os.cpu_count()}
        if "loop" in chosen:
            results["sampler_loop"] = bench_sampler_loop(repeats=args.repeats, threads=args.threads, workload=workload)
        if "actor" in chosen:
            results["sampler_actor"] = bench_sampler_actor(repeats=args.repeats, threads=args.threads,
                                                           workload=workload)
        if "ratio" in chosen:
            results["actor_vs_loop"] = bench_actor_to_loop_ratio(rounds=args.repeats, threads=args.threads,
                                                                 workload=workload)
        if "sync" in chosen:
            results["weight_sync"] = bench_weight_sync(repeats=args.repeats)
        if "transport" in chosen:
            results["conditioning_transport"] = bench_conditioning_transport()
    finally:
        ray.shutdown()
    json.dump(results, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
