"""Benchmarks of the Image Critic, one function per measurement.

Rollout side:

- :func:`bench_engine_direct`: completion tokens/s of ``VLLMCriticEngine`` called in this process.
- :func:`bench_rollout_actor`: completion tokens/s through ``CriticRolloutGroup`` (one Ray replica, records in,
  ``Critique`` records out) on the same workload, and the same engine's own time on those calls (measured inside
  the replica around ``engine.generate``). Their ratio is the actor overhead (target ≥ 0.9); because both come
  from the same calls it holds even when other work shares the machine, which makes two separate runs
  (engine in its own process vs actor) differ by more than the overhead being measured.
- :func:`bench_weight_sync`: seconds of one full-weight sync learner → replica (object store + in-place reload),
  as the group sees it and as the replica reports it.

Run: ``.venv/bin/python -m bench.critic [--photos 4] [--group-size 4] [--max-new-tokens 64] [--repeats 3]``;
prints a table and one JSON object. Both paths use the same number of CPU threads (the replica reserves every
core Ray was given, which sets its OMP thread count). Numbers depend on the machine and on whatever else runs on
it; report them with the command.
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


def _critic_path() -> Path:
    from rollout.models import ensure_embedded_models

    return ensure_embedded_models().critic


def _config(path: Path, args: argparse.Namespace, cpus: float):
    from critic_actor.config import CriticConfig

    return CriticConfig(model=str(path), engine="vllm", num_replicas=1, cpus_per_replica=cpus,
                        group_size=args.group_size, temperature=1.0, max_new_tokens=args.max_new_tokens,
                        min_pixels=3136, max_pixels=12544, dtype="float32")


def _photos(count: int) -> list[np.ndarray]:
    from skimage import data

    sources = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    return [sources[i % len(sources)][(i // len(sources)) * 16:][:224, :224].copy() for i in range(count)]


def bench_engine_direct(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Tokens/s of the bare engine: prompts prepared once, ``generate`` timed alone."""
    from critic_actor.engines import EnginePrompt, SamplingSpec, VLLMCriticEngine
    from critic_actor.inputs import critic_prompt_text, fit_to_pixel_bounds
    from critic_actor.model import load_critic_processor, vision_special_token_ids

    config = _config(path, args, cpus=float(os.cpu_count() or 1))
    processor = load_critic_processor(path, config.min_pixels, config.max_pixels)
    engine = VLLMCriticEngine(path, dtype=config.dtype, min_pixels=config.min_pixels, max_pixels=config.max_pixels,
                              suppressed_token_ids=vision_special_token_ids(processor.tokenizer), seed=config.seed)
    text = critic_prompt_text(processor)
    prompts = [EnginePrompt(text=text, image=fit_to_pixel_bounds(p, config.min_pixels, config.max_pixels))
               for p in _photos(args.photos)]
    runs = []
    for repeat in range(args.repeats + 1):
        spec = SamplingSpec(n=args.group_size, temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens,
                            seeds=tuple(1000 * repeat + i for i in range(len(prompts))))
        started = time.perf_counter()
        outputs = engine.generate(prompts, spec)
        seconds = time.perf_counter() - started
        tokens = sum(len(s.token_ids) for samples in outputs for s in samples)
        if repeat:  # the first call warms caches and kernels
            runs.append((tokens, seconds))
    engine.shutdown()
    return _summary(runs)


def bench_rollout_actor(path: Path, args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """Tokens/s through the group (driver → replica → records back); returns the summary and the live group."""
    import ray

    from critic_actor.group import CriticRolloutGroup
    from rollout.types import PhotoTask

    cpus = float(ray.cluster_resources().get("CPU", 1))
    group = CriticRolloutGroup(path, _config(path, args, cpus=cpus), sync_timeout_s=120.0)
    tasks = [PhotoTask(task_id=f"photo-{i}", input=ray.put(p), target=None) for i, p in enumerate(_photos(args.photos))]
    runs, engine_runs = [], []
    for repeat in range(args.repeats + 1):
        engine_before = group.health()[0]["generate_s"]
        started = time.perf_counter()
        critiques = group.generate(tasks, n=args.group_size, step=repeat)
        seconds = time.perf_counter() - started
        engine_seconds = group.health()[0]["generate_s"] - engine_before
        if repeat:
            tokens = sum(len(c.completion_token_ids) for c in critiques)
            runs.append((tokens, seconds))
            engine_runs.append((tokens, engine_seconds))
    # The same engine's own time on the same calls: the overhead ratio is then immune to other load on the
    # machine, which moves both numbers together.
    engine = _summary(engine_runs)
    ratios = [(t / s) / (te / se) for (t, s), (te, se) in zip(runs, engine_runs)]
    return {**_summary(runs), "engine_start_s": group.ready_info[0]["start_s"],
            "engine_inside_replica": engine, "actor_over_engine": float(np.median(ratios))}, group


def bench_weight_sync(path: Path, group, repeats: int) -> dict[str, Any]:
    """Full-weight sync of the critic into the replica, ``repeats`` times with changed weights."""
    from critic_actor.model import load_critic

    model, _ = load_critic(path, dtype="float32", device="cpu")
    state = {name: tensor.numpy().copy() for name, tensor in model.state_dict().items()}
    nbytes = sum(v.nbytes for v in state.values())
    group_s, replica_s = [], []
    for version in range(1, repeats + 1):
        state = {name: value + np.float32(1e-4) for name, value in state.items()}
        report = group.set_weights(version, state)
        group_s.append(report["seconds"])
        replica_s.append(report["replicas"][0]["seconds"])
    return {"bytes": nbytes, "parameters": sum(p.numel() for p in model.parameters()),
            "group_s_median": float(np.median(group_s)), "replica_s_median": float(np.median(replica_s)),
            "group_s": [round(s, 4) for s in group_s], "replica_s": [round(s, 4) for s in replica_s]}


def _direct_in_subprocess(args: argparse.Namespace) -> dict[str, Any]:
    """Run :func:`bench_engine_direct` in a fresh process with the thread count the replica will get.

    vLLM's CPU backend binds its OpenMP threads to cores for the life of the process, so an engine measured
    in this process would keep competing with the replica measured after it."""
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    command = [sys.executable, "-m", "bench.critic", "--only-direct", "--photos", str(args.photos),
               "--group-size", str(args.group_size), "--max-new-tokens", str(args.max_new_tokens),
               "--repeats", str(args.repeats)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False,
                          cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0:
        raise RuntimeError(f"direct engine bench failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _summary(runs: list[tuple[int, float]]) -> dict[str, Any]:
    rates = [tokens / seconds for tokens, seconds in runs]
    return {"tokens_per_s_median": float(np.median(rates)), "tokens_per_s": [round(r, 1) for r in rates],
            "tokens_per_call": [t for t, _ in runs], "seconds_per_call": [round(s, 3) for _, s in runs]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only-direct", action="store_true",
                        help="measure only the direct engine and print its JSON (used by the full run)")
    args = parser.parse_args(argv)

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from rollout.env import apply_runtime_defaults

    apply_runtime_defaults()
    import ray

    path = _critic_path()
    if args.only_direct:
        print(json.dumps(bench_engine_direct(path, args)))
        return 0
    direct = _direct_in_subprocess(args)
    ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        actor, group = bench_rollout_actor(path, args)
        sync = bench_weight_sync(path, group, args.repeats)
        group.shutdown()
    finally:
        ray.shutdown()
    ratio = actor["actor_over_engine"]
    workload = {"photos": args.photos, "group_size": args.group_size, "max_new_tokens": args.max_new_tokens,
                "repeats": args.repeats, "cpus": os.cpu_count()}
    rows = [("engine direct (own process), tokens/s", f"{direct['tokens_per_s_median']:.1f}"),
            ("engine direct (inside replica), tokens/s",
             f"{actor['engine_inside_replica']['tokens_per_s_median']:.1f}"),
            ("rollout actor (driver view), tokens/s", f"{actor['tokens_per_s_median']:.1f}"),
            ("actor / engine on the same calls", f"{ratio:.3f}"),
            ("weight sync (group), s", f"{sync['group_s_median']:.3f}"),
            ("weight sync (replica load), s", f"{sync['replica_s_median']:.3f}"),
            ("weights synced, MB", f"{sync['bytes'] / 1e6:.2f}")]
    width = max(len(name) for name, _ in rows)
    print(f"critic rollout bench: {workload}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value:>10}")
    print(json.dumps({"workload": workload, "engine_direct": direct, "rollout_actor": actor,
                      "actor_over_engine": ratio, "weight_sync": sync}))
    return 0 if ratio >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
