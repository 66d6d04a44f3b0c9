"""Benchmarks of the Image Critic: the rollout actor against the bare vLLM engine, and weight sync.

Rollout side. The reference is the bare ``VLLMCriticEngine`` in a process of its own outside Ray (started by
this bench, one ``generate`` per request over a pipe), at the driver's CPU priority with the thread count the
replica gets. The rollout actor is ``CriticRolloutGroup`` with one Ray replica (records in, ``Critique``
records out), timed from the driver. Both get the same prompts, the same seeds and the same engine seed, so
each call does exactly the same work on both sides. Calls alternate in pairs (bare then actor, then actor then
bare, ...): load from other processes on a shared machine then moves both sides of each pair together, and the
headline is the median over pairs of actor tokens/s ÷ bare-engine tokens/s (target ≥ 0.9).

Diagnosis, printed beside it:

- the same engine's own time inside the replica (around ``engine.generate``), so actor ÷ engine-in-replica is
  what the actor adds around its engine;
- CPU seconds per 1000 tokens of the bare-engine process and of the replica process, and CPU seconds per wall
  second of each: equal CPU per token with fewer tokens/s means CPU time the scheduler did not grant the
  replica, not extra work done in it;
- what Ray's own processes (daemons, idle workers, the idle replica) take from the machine while the bare
  engine runs beside the idle cluster: their CPU time during those calls, as a share of all CPUs; and the bare
  engine before Ray starts and after it stops, resting between calls as it does beside the actor (these phases
  come one after the other, so a change of load between them shows in that ratio: the CPU share is the robust
  figure);
- the replica's CPU niceness and the driver's. Ray starts workers at niceness 15; the group runs its replicas
  at the driver's (``rollout.cluster.startup.foreground_env``). ``--replica-niceness 15`` reproduces Ray's
  default to show what it costs when anything else runs on the machine.

Weight sync: seconds of one full-weight sync learner → replica (object store + in-place reload), as the group
sees it and as the replica reports it.

Run: ``python -m bench.critic`` or ``python bench/critic.py`` with ``[--photos 4] [--group-size 4]
[--max-new-tokens 64] [--repeats 8] [--replica-niceness N]``; prints a table and one JSON object; exit status 0
when the headline ratio is ≥ 0.9. Numbers depend on the machine and on whatever else runs on it (the load
average is printed): report them with the command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


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


def _task_ids(count: int) -> list[str]:
    return [f"photo-{i}" for i in range(count)]


def _rollout_seed(base_seed: int, step: int, task_id: str) -> int:
    """The seed a rollout replica derives for (step, task): the bare engine gets the very same ones."""
    return zlib.crc32(f"{base_seed}:{step}:{task_id}".encode()) & 0x7FFFFFFF


def serve_direct_engine(path: Path, args: argparse.Namespace) -> None:
    """The bare engine behind a pipe: one line ``<step>`` in, one JSON line ``{tokens, seconds}`` out."""
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
    print(json.dumps({"ready": True, "niceness": os.nice(0)}), flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        step = int(line)
        spec = SamplingSpec(n=args.group_size, temperature=config.temperature, top_p=config.top_p,
                            max_new_tokens=args.max_new_tokens,
                            seeds=tuple(_rollout_seed(config.seed, step, t) for t in _task_ids(args.photos)))
        started = time.perf_counter()
        outputs = engine.generate(prompts, spec)
        seconds = time.perf_counter() - started
        tokens = sum(len(s.token_ids) for samples in outputs for s in samples)
        print(json.dumps({"tokens": tokens, "seconds": seconds}), flush=True)
    engine.shutdown()


def _cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


class DirectEngineProcess:
    """The bare engine in its own process outside Ray, with the thread count the replica gets."""

    def __init__(self, args: argparse.Namespace):
        command = [sys.executable, "-m", "bench.critic", "--serve-direct", "--photos", str(args.photos),
                   "--group-size", str(args.group_size), "--max-new-tokens", str(args.max_new_tokens)]
        # Ray sets OMP_NUM_THREADS to an actor's num_cpus; the replica reserves every CPU Ray was given.
        env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
        self.niceness = self._read()["niceness"]
        self.last_cpu_s = 0.0
        """CPU seconds (all threads) the engine process used during the last call."""

    def _read(self) -> dict[str, Any]:
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"the bare engine process exited with status {self.process.wait()}")
            if line.startswith("{"):
                return json.loads(line)

    def call(self, step: int) -> tuple[int, float]:
        before = _cpu_seconds(self.process.pid)
        self.process.stdin.write(f"{step}\n")
        self.process.stdin.flush()
        reply = self._read()
        self.last_cpu_s = _cpu_seconds(self.process.pid) - before
        return reply["tokens"], reply["seconds"]

    def close(self) -> None:
        self.process.stdin.write("quit\n")
        self.process.stdin.flush()
        self.process.wait(timeout=120)


class RayProcessesCpu:
    """CPU seconds used by this driver's Ray processes (raylet, GCS, dashboard, agents, workers) over a window."""

    def __init__(self, exclude_pid: int):
        import psutil

        self.exclude_pid = exclude_pid
        self._start = {p.pid: self._cpu(p) for p in psutil.Process().children(recursive=True)
                       if p.pid != exclude_pid}

    @staticmethod
    def _cpu(process) -> float:
        try:
            times = process.cpu_times()
            return times.user + times.system
        except Exception:  # noqa: BLE001 - a process that ended has nothing more to report
            return float("nan")

    def seconds(self) -> float:
        """CPU seconds since construction, over the processes alive at both ends."""
        import psutil

        total = 0.0
        for process in psutil.Process().children(recursive=True):
            before = self._start.get(process.pid)
            after = self._cpu(process)
            if before is not None and np.isfinite(before) and np.isfinite(after):
                total += after - before
        return total


class RolloutActorUnderTest:
    """One ``CriticRolloutGroup`` replica, timed from the driver and (its engine) from inside."""

    def __init__(self, path: Path, args: argparse.Namespace):
        import ray

        from critic_actor.group import CriticRolloutGroup
        from rollout.records.types import PhotoTask

        cpus = float(ray.cluster_resources().get("CPU", 1))
        self.group = CriticRolloutGroup(path, _config(path, args, cpus=cpus), sync_timeout_s=120.0)
        self.tasks = [PhotoTask(task_id=task_id, input=ray.put(photo), target=None)
                      for task_id, photo in zip(_task_ids(args.photos), _photos(args.photos))]
        self.group_size = args.group_size
        self.niceness, self.pid = ray.get(self.group.actors[0].__ray_call__.remote(
            lambda actor: (os.nice(0), os.getpid())))
        self.last_cpu_s = 0.0
        """CPU seconds (all threads) the replica process used during the last call."""

    def call(self, step: int) -> tuple[int, float, float]:
        """(tokens, driver-view seconds, the engine's own seconds inside the replica)."""
        engine_before = self.group.health(timeout_s=600.0)[0]["generate_s"]
        cpu_before = _cpu_seconds(self.pid)
        started = time.perf_counter()
        critiques = self.group.generate(self.tasks, n=self.group_size, step=step)
        seconds = time.perf_counter() - started
        self.last_cpu_s = _cpu_seconds(self.pid) - cpu_before
        engine_seconds = self.group.health(timeout_s=600.0)[0]["generate_s"] - engine_before
        return sum(len(c.completion_token_ids) for c in critiques), seconds, engine_seconds


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


def _rates(calls: list[tuple[int, float]]) -> list[float]:
    return [tokens / seconds for tokens, seconds in calls]


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def run_bench(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    import ray

    load_before = os.getloadavg()
    direct = DirectEngineProcess(args)
    step = 0
    try:
        direct.call(step)  # warm-up: first-call kernels and caches
        step += 1

        def call_then_rest() -> tuple[int, float]:
            # Beside Ray the bare engine rests while the actor takes its turn; resting as long here keeps the duty
            # cycle the same (a thread that slept gets a burst of CPU on a loaded machine when it wakes).
            tokens, seconds = direct.call(step)
            time.sleep(seconds)
            return tokens, seconds

        before_ray = []
        for _ in range(args.repeats):
            before_ray.append(call_then_rest())
            step += 1
        ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        try:
            actor = RolloutActorUnderTest(path, args)
            actor.call(step)  # warm-up of the replica's engine
            step += 1
            beside_ray, through_actor, inside_replica, ray_cpu_share = [], [], [], []
            bare_cpu, replica_cpu = [], []

            def call_bare() -> None:
                ray_cpu = RayProcessesCpu(exclude_pid=direct.process.pid)
                beside_ray.append(direct.call(step))
                bare_cpu.append(direct.last_cpu_s)
                ray_cpu_share.append(ray_cpu.seconds() / (beside_ray[-1][1] * (os.cpu_count() or 1)))

            def call_actor() -> None:
                tokens, seconds, engine_seconds = actor.call(step)
                through_actor.append((tokens, seconds))
                inside_replica.append((tokens, engine_seconds))
                replica_cpu.append(actor.last_cpu_s)

            for repeat in range(args.repeats):  # same step (same seeds, same tokens) on both sides of a pair
                # Bare first in even pairs, actor first in odd ones: a load that rises or falls during the run
                # favours neither side.
                for call in ((call_bare, call_actor) if repeat % 2 == 0 else (call_actor, call_bare)):
                    call()
                step += 1
            sync = bench_weight_sync(path, actor.group, 3)
            actor.group.shutdown()
        finally:
            ray.shutdown()
        after_ray = []
        for _ in range(args.repeats):
            after_ray.append(call_then_rest())
            step += 1
    finally:
        direct.close()

    pairs = [a / d for a, d in zip(_rates(through_actor), _rates(beside_ray))]
    without_ray = _rates(before_ray) + _rates(after_ray)
    return {
        "workload": {"photos": args.photos, "group_size": args.group_size, "max_new_tokens": args.max_new_tokens,
                     "repeats": args.repeats, "cpus": os.cpu_count()},
        "load_average": {"before": [round(x, 2) for x in load_before],
                         "after": [round(x, 2) for x in os.getloadavg()]},
        "niceness": {"driver": os.nice(0), "bare_engine": direct.niceness, "replica": actor.niceness},
        "tokens_per_s": {
            "bare_engine_without_ray": [round(r, 1) for r in without_ray],
            "bare_engine_beside_idle_ray": [round(r, 1) for r in _rates(beside_ray)],
            "rollout_actor": [round(r, 1) for r in _rates(through_actor)],
            "engine_inside_replica": [round(r, 1) for r in _rates(inside_replica)],
        },
        "tokens_per_call": [t for t, _ in through_actor],
        "same_tokens_both_sides": [t for t, _ in through_actor] == [t for t, _ in beside_ray],
        "actor_over_bare_engine": _median(pairs),
        "actor_over_bare_engine_per_pair": [round(p, 3) for p in pairs],
        "actor_over_engine_inside_replica": _median(
            [a / e for a, e in zip(_rates(through_actor), _rates(inside_replica))]),
        "engine_inside_replica_over_bare_engine": _median(
            [e / d for e, d in zip(_rates(inside_replica), _rates(beside_ray))]),
        "bare_engine_beside_ray_over_without_ray": _median(_rates(beside_ray)) / _median(without_ray),
        "ray_processes_cpu_share_beside_bare_engine": _median(ray_cpu_share),
        # Work per token, whatever the scheduler granted: equal CPU per token means any gap in tokens/s is CPU
        # time the process did not get, not work it did in addition.
        "cpu_s_per_1k_tokens": {
            "bare_engine": _median([1000 * c / t for c, (t, _) in zip(bare_cpu, beside_ray)]),
            "replica": _median([1000 * c / t for c, (t, _) in zip(replica_cpu, through_actor)])},
        "cpu_share_of_wall": {
            "bare_engine": _median([c / s for c, (_, s) in zip(bare_cpu, beside_ray)]),
            "replica": _median([c / s for c, (_, s) in zip(replica_cpu, through_actor)])},
        "weight_sync": sync,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=8, help="timed calls per side (after one warm-up)")
    parser.add_argument("--replica-niceness", type=int, metavar="N",
                        help="run the replica at this CPU niceness instead of the driver's (15 = Ray's default)")
    parser.add_argument("--serve-direct", action="store_true",
                        help="internal: serve the bare engine over stdin/stdout (started by the full run)")
    args = parser.parse_args(argv)

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.replica_niceness is not None:
        os.environ["RAY_worker_niceness"] = str(args.replica_niceness)
    from rollout.env import apply_runtime_defaults

    apply_runtime_defaults()
    path = _critic_path()
    if args.serve_direct:
        serve_direct_engine(path, args)
        return 0
    result = run_bench(path, args)
    ratio = result["actor_over_bare_engine"]
    rates, nice = result["tokens_per_s"], result["niceness"]
    rows = [
        ("rollout actor / bare engine (alternating calls)", f"{ratio:.3f}"),
        ("  rollout actor (driver view), tokens/s", f"{_median(rates['rollout_actor']):.1f}"),
        ("  bare engine, own process, beside idle Ray, tokens/s",
         f"{_median(rates['bare_engine_beside_idle_ray']):.1f}"),
        ("diagnosis:", ""),
        ("  engine inside the replica, tokens/s", f"{_median(rates['engine_inside_replica']):.1f}"),
        ("  actor / engine inside the replica", f"{result['actor_over_engine_inside_replica']:.3f}"),
        ("  engine inside the replica / bare engine", f"{result['engine_inside_replica_over_bare_engine']:.3f}"),
        ("  CPU s per 1000 tokens: bare engine / replica",
         f"{result['cpu_s_per_1k_tokens']['bare_engine']:.2f} / {result['cpu_s_per_1k_tokens']['replica']:.2f}"),
        ("  CPU s per wall s: bare engine / replica",
         f"{result['cpu_share_of_wall']['bare_engine']:.2f} / {result['cpu_share_of_wall']['replica']:.2f}"),
        ("  Ray's processes beside the bare engine, share of all CPUs",
         f"{100 * result['ray_processes_cpu_share_beside_bare_engine']:.1f} %"),
        ("  bare engine without Ray (sequential phases), tokens/s", f"{_median(rates['bare_engine_without_ray']):.1f}"),
        ("  bare engine beside idle Ray / without Ray", f"{result['bare_engine_beside_ray_over_without_ray']:.3f}"),
        ("  niceness: driver / bare engine / replica",
         f"{nice['driver']} / {nice['bare_engine']} / {nice['replica']}"),
        ("weight sync (group), s", f"{result['weight_sync']['group_s_median']:.3f}"),
        ("weight sync (replica load), s", f"{result['weight_sync']['replica_s_median']:.3f}"),
        ("weights synced, MB", f"{result['weight_sync']['bytes'] / 1e6:.2f}"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"critic rollout bench: {result['workload']}, load average {result['load_average']['before']} "
          f"→ {result['load_average']['after']}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value:>12}")
    print(json.dumps(result))
    return 0 if ratio >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
