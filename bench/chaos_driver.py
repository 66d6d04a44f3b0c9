"""One segment of a chaos run: the real ``photocrafter train`` / ``resume`` in this process, with actors killed.

Started by ``bench/chaos.py`` (which owns the schedule, the driver kills, resuming and the verdict) as
``python -m bench.chaos_driver --plan PLAN.json``. It runs the command line's own ``train`` or ``resume`` on a
private local Ray cluster whose memory monitor is armed (``RAY_memory_usage_threshold``, set here before Ray
starts), with the controller class swapped for one that, at the steps the plan names:

- kills an actor's process (SIGKILL, as a crash or a lost node does) after a random delay into the step: a critic
  rollout replica, an artist sampler, a reward worker;
- kills an actor, waits until Ray is restarting it (its constructor is running) and kills it again;
- makes an actor allocate memory until the node is over the monitor's threshold, so that Ray's memory monitor
  kills a worker (Ray picks which; the allocation is freed if its own process survives);
- kills a learner rank while a weight sync is sending (the run must stop with its checkpoint and a resume command).

Every completed step appends one line to ``<run>/chaos/ledger.jsonl`` (which photos it consumed, how many
critiques, edits and rewards it delivered, the run's fault counters), every kill one line to
``<run>/chaos/events.jsonl``. The process exits with the command's own status.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

GIB = 1 << 30
ROLES = ("critic_rollout", "artist_sampler", "reward")


def arm_memory_monitor(budget_gib: float) -> dict:
    """Set the memory monitor's threshold (before Ray starts) to what the node uses now plus ``budget_gib`` for
    the run itself; returns the figures (``threshold_bytes`` None when the node has no such headroom)."""
    import psutil

    memory = psutil.virtual_memory()
    used = memory.total - memory.available
    threshold = (used + budget_gib * GIB) / memory.total
    armed = threshold <= 0.9
    if armed:
        os.environ["RAY_memory_usage_threshold"] = f"{threshold:.4f}"
        os.environ["RAY_memory_monitor_refresh_ms"] = "100"
        os.environ["RAY_min_memory_free_bytes"] = "-1"
    return {"total_bytes": memory.total, "used_at_start_bytes": used, "threshold": round(threshold, 4),
            "threshold_bytes": int(threshold * memory.total) if armed else None}


def _record(path: Path, **event) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps({"t": round(time.time(), 3), **event}) + "\n")


def _actor_info(handle) -> dict:
    from ray._private.state import state

    return state.actor_table(handle._actor_id.hex())


def _live_pid(handle, timeout_s: float = 120.0) -> int:
    """The actor's process id once it is alive (it may be restarting from an earlier kill); 0 at the timeout."""
    import psutil

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = _actor_info(handle)
        pid = int(info.get("Pid", 0) or 0)
        if info.get("State") == "ALIVE" and pid and psutil.pid_exists(pid):
            return pid
        time.sleep(0.05)
    return 0


def _kill_pid(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _allocator(delay_s: float, threshold_bytes: int, hold_s: float):
    """A function for ``actor.__ray_call__``: starts a thread in the actor that, once the actor is working on a
    call again (Ray titles its process ``ray::<class>.<method>`` meanwhile) and ``delay_s`` later, allocates
    memory until the node uses ``threshold_bytes`` + 256 MiB, holds it ``hold_s`` and frees it (if the memory
    monitor killed another worker instead of this one). Built here so that Ray ships it by value."""

    def start(_actor) -> int:
        import threading as _threading
        import time as _time

        import numpy as _np
        import psutil as _psutil

        def busy() -> bool:
            title = " ".join(_psutil.Process().cmdline())
            return "." in title.split(" ")[0] and "__ray_call__" not in title

        def allocate() -> None:
            waited = _time.monotonic() + 60.0
            while not busy() and _time.monotonic() < waited:
                _time.sleep(0.01)
            _time.sleep(delay_s)
            blocks = []
            deadline = _time.monotonic() + 30.0
            while _time.monotonic() < deadline:
                memory = _psutil.virtual_memory()
                if memory.total - memory.available > threshold_bytes + (256 << 20):
                    break
                blocks.append(_np.ones(32 << 20))  # 256 MiB, touched
            _time.sleep(hold_s)
            blocks.clear()

        _threading.Thread(target=allocate, daemon=True).start()
        return os.getpid()

    return start


class Monkey:
    """Carries out the plan's kills against the running components, from timer threads."""

    def __init__(self, components, plan: dict, events: Path):
        self.components = components
        self.plan = plan
        self.events = events
        self.rng = random.Random(plan["seed"])

    def actors(self, role: str) -> tuple[list, list[str]]:
        owner = {"critic_rollout": self.components.critic_rollout, "artist_sampler": self.components.artist_samplers,
                 "reward": self.components.rewards}[role]
        return owner.recovery.actors, owner.recovery.names

    def step_started(self, step: int) -> None:
        for event in self.plan["events"]:
            if event["step"] != step:
                continue
            if event["kind"] == "learner_mid_sync":
                self._arm_learner_kill(event)
            else:
                timer = threading.Timer(event.get("delay_s", 0.0), self._fire, args=(event,))
                timer.daemon = True  # a kill still pending when the run ends is dropped with it
                timer.start()

    def _fire(self, event: dict) -> None:
        try:
            getattr(self, f"_{event['kind']}")(event)
        except Exception as exc:  # noqa: BLE001 - a kill that could not be made is recorded, not fatal
            _record(self.events, step=event["step"], kind=event["kind"], role=event.get("role"),
                    error=f"{type(exc).__name__}: {exc}")

    def _pick(self, role: str) -> tuple[object, str]:
        actors, names = self.actors(role)
        index = self.rng.randrange(len(actors))
        return actors[index], names[index]

    def _kill(self, event: dict) -> None:
        actor, name = self._pick(event["role"])
        pid = _live_pid(actor)
        killed = bool(pid) and _kill_pid(pid)
        _record(self.events, step=event["step"], kind="kill", role=event["role"], actor=name, pid=pid, killed=killed)

    def _kill_during_restart(self, event: dict) -> None:
        """Kill the actor, then kill its replacement while Ray is still creating it (a restart under way): the
        control store names the new process before its constructor returns."""
        actor, name = self._pick(event["role"])
        pid = _live_pid(actor)
        _kill_pid(pid)
        deadline = time.monotonic() + 120.0
        second = 0
        while time.monotonic() < deadline and not second:
            info = _actor_info(actor)
            candidate = int(info.get("Pid", 0) or 0)
            if info.get("State") != "ALIVE" and candidate not in (0, pid) and _kill_pid(candidate):
                second = candidate
            elif info.get("State") == "ALIVE" and candidate != pid:
                break  # the restart finished before its process could be killed
            time.sleep(0.01)
        _record(self.events, step=event["step"], kind="kill_during_restart", role=event["role"], actor=name,
                pid=pid, restarting_pid=second, killed=bool(second))

    def _memory(self, event: dict) -> None:
        threshold = self.plan["memory"]["threshold_bytes"]
        if threshold is None:
            _record(self.events, step=event["step"], kind="memory", skipped="no memory headroom on this node")
            return
        actor, name = self._pick(event["role"])
        import ray

        before = self._pids()
        pid = ray.get(actor.__ray_call__.remote(_allocator(0.2, threshold, 5.0)), timeout=600)
        time.sleep(20.0)  # its next call, the allocation, the monitor's reaction (every 100 ms) and the hold
        after = self._pids()
        victims = sorted(name for name, old in before.items() if old and after.get(name) != old)
        _record(self.events, step=event["step"], kind="memory", role=event["role"], actor=name, pid=pid,
                victims=victims, killed=bool(victims))

    def _pids(self) -> dict[str, int]:
        """Every actor's current process id, by name (restartable roles and learner ranks)."""
        pids = {}
        for role in ROLES:
            actors, names = self.actors(role)
            pids.update({n: _actor_info(a).get("Pid", 0) for a, n in zip(actors, names)})
        for group in (self.components.critic_learner, self.components.artist_learner):
            pids.update({n: _actor_info(a).get("Pid", 0) for a, n in zip(group.ranks, group.names)})
        return pids

    def _arm_learner_kill(self, event: dict) -> None:
        """Kill a rank of the chosen learner right after the sync asked its ranks to send their shards."""
        group = self.components.critic_learner if event["role"] == "critic_learner" else \
            self.components.artist_learner
        original = group.launch
        events, rng = self.events, self.rng

        def launch(method, *args):
            refs = original(method, *args)
            if method == "send_weights":
                group.launch = original
                rank = rng.randrange(len(group.ranks))
                time.sleep(event.get("delay_s", 0.0))
                pid = _live_pid(group.ranks[rank], timeout_s=5.0)
                _record(events, step=event["step"], kind="learner_mid_sync", role=event["role"],
                        actor=group.names[rank], pid=pid, killed=bool(pid) and _kill_pid(pid))
            return refs

        group.launch = launch


def chaos_controller(plan: dict, run_dir_holder: dict):
    """The controller class this segment runs: the real one, plus the monkey and the ledger."""
    from rollout.controller import Controller

    class ChaosController(Controller):
        def start(self, resume: bool = False) -> None:
            super().start(resume)
            chaos = self.run_dir / "chaos"
            chaos.mkdir(exist_ok=True)
            run_dir_holder["dir"] = self.run_dir
            self._ledger = chaos / "ledger.jsonl"
            self._monkey = Monkey(self.components, plan, chaos / "events.jsonl")
            self._rejected_seen = len(self.components.artist_samplers.rejected)

        def train_step(self) -> dict[str, float]:
            step = self.step + 1
            self._monkey.step_started(step)
            metrics = super().train_step()
            records = self._last_records
            rejected = self.components.artist_samplers.rejected
            new_rejected, self._rejected_seen = len(rejected) - self._rejected_seen, len(rejected)
            _record(self._ledger, segment=plan["segment"], step=step, tasks=[t.task_id for t in records.tasks],
                    critiques=len(records.critiques),
                    critique_keys=len({(c.task_id, c.index) for c in records.critiques}),
                    edits=len(records.edits),
                    edit_keys=len({(e.task_id, e.critique_index, e.edit_index) for e in records.edits}),
                    rejected_critiques=new_rejected,
                    edit_rewards=len(records.edit_rewards),
                    # Any reward that is missing counts (a lost worker, an edit image lost with its sampler, …):
                    # the uninterrupted run has none.
                    lost_edit_rewards=sum(1 for r in records.edit_rewards if r.error),
                    lost_critique_rewards=sum(1 for r in records.critique_rewards if r.error),
                    reward_errors=sorted({r.error[:200] for r in (*records.edit_rewards, *records.critique_rewards)
                                          if r.error}),
                    faults={k: v for k, v in metrics.items() if k.startswith("faults/")})
            return metrics

    return ChaosController


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", required=True, help="JSON: command, overrides, seed, segment, events, budget")
    args = parser.parse_args(argv)
    plan = json.loads(Path(args.plan).read_text())
    plan["memory"] = arm_memory_monitor(plan.get("memory_budget_gib", 12.0))
    Path(args.plan).with_suffix(".memory.json").write_text(json.dumps(plan["memory"]))

    import rollout.controller
    from rollout.commands.cli import main as cli_main

    holder: dict = {}
    rollout.controller.Controller = chaos_controller(plan, holder)
    argv = [plan["command"], *(["--run", plan["run_dir"]] if plan["command"] == "resume" else []),
            *[item for override in plan["overrides"] for item in ("--set", override)]]
    return cli_main(argv)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from rollout.commands.entry import run_main

    run_main(main, "bench.chaos_driver")
