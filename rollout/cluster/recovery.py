"""Recovering restartable actors: the one retry mechanism that rollout replicas, samplers and reward workers share.

Owns telling a lost actor from a failed call (:func:`lost_actor_cause`), waiting until Ray has brought a lost
actor back — also when it is lost again while that restart is still under way, and with the verdict "dead for
good" once Ray stops restarting it — having its owner restore what the actor held (the current weights), redoing
the work it lost, bounding how often one call is redone, and counting each restart and each redone item per role,
with one log line per restart that says what happened. Ray restarts these actors (``max_restarts``) but never
retries their calls (``max_task_retries=0``): only the owner knows which weights a restarted actor must get back
before it may work again, and what it redoes is then counted once.

An actor is lost when Ray's memory monitor kills it (``OutOfMemoryError``), its node goes away (``NodeDiedError``,
``ActorDiedError``), its process crashes, or a call reaches it while it restarts (``ActorUnavailableError``); a
``RayTaskError`` whose cause is one of these (the actor's own call to another actor or object failed that way) is
redone the same way. Anything else is the call's own error and is raised.

A leaf like ``rollout.cluster.startup``: the standard library only, Ray imported inside the functions, so the
critic, artist and reward packages may use it. It creates no actor.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from rollout.cluster.startup import StartupLimits, free_resources_line, print_progress

logger = logging.getLogger(__name__)

Report = Callable[[str], None]


class ActorLostForGood(RuntimeError):
    """A restartable actor that Ray will not bring back (its restarts are spent), or whose work was lost more
    often than the call may be redone."""

    def __init__(self, name: str, message: str):
        self.name = name
        super().__init__(message)


_LOST_ERRORS = ("RayActorError", "OutOfMemoryError", "NodeDiedError", "WorkerCrashedError")
"""Ray's errors (and their subclasses: ActorDiedError, ActorUnavailableError) that mean the work was lost with a
process or node, not that it failed. A lost input object (``ObjectLostError``) is not among them: waiting for the
actor that was given it would not bring it back."""


def lost_actor_cause(error: BaseException) -> BaseException | None:
    """The error that says an actor (or the object it was given) was lost, when ``error`` is or wraps one; None
    for an error of the call itself. Follows ``RayTaskError.cause`` and ``__cause__`` chains."""
    import ray

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, getattr(ray.exceptions, "ActorPlacementGroupRemoved", ())):
            return None  # the group was shut down on purpose
        if any(isinstance(current, getattr(ray.exceptions, name)) for name in _LOST_ERRORS):
            return current
        nested = getattr(current, "cause", None) if isinstance(current, ray.exceptions.RayTaskError) else None
        current = nested if isinstance(nested, BaseException) else current.__cause__
    return None


def describe_loss(error: BaseException) -> str:
    """A few words on why an actor was lost, for the log line and the error message."""
    import ray

    text = str(error)
    if isinstance(error, ray.exceptions.OutOfMemoryError) or "low on memory" in text:
        return "killed by Ray's memory monitor"
    if isinstance(error, ray.exceptions.NodeDiedError) or _says_node_lost(text):
        return "its node was lost"
    if isinstance(error, ray.exceptions.ActorUnavailableError):
        return "unreachable while restarting"
    first = (text.strip().splitlines() or [type(error).__name__])[0]
    return f"its process died ({first[:160]})"


def _actor_record(actor: Any) -> dict:
    """The actor's entry in Ray's control store, or ``{}`` when it cannot be read. Read from the GCS directly: the
    public state API needs the dashboard, which a cluster may run without."""
    try:
        from ray._private.state import state as global_state

        return dict(global_state.actor_table(actor._actor_id.hex()))
    except Exception:  # noqa: BLE001 - unknown only means "keep waiting, within the deadline"
        return {}


def actor_state(actor: Any) -> str:
    """The actor's state (``ALIVE``, ``RESTARTING``, ``DEAD``, …), or ``""`` when it cannot be read."""
    return str(_actor_record(actor).get("State", ""))


def process_exit(pid: int) -> tuple[str, str] | None:
    """(exit type, detail) Ray recorded for the dead worker process ``pid`` — ``NODE_OUT_OF_MEMORY`` when its
    memory monitor killed it — or None when unknown. A caller's error does not say why an actor died (a killed
    actor's pending call fails with ``ActorUnavailableError`` whatever killed it); the control store's worker
    table does."""
    if not pid:
        return None
    try:
        from ray._private.state import state as global_state
        from ray.core.generated import common_pb2, gcs_pb2

        for raw in global_state._connect_and_get_accessor().get_worker_table():
            worker = gcs_pb2.WorkerTableData.FromString(raw)
            if worker.pid == pid and not worker.is_alive:
                return common_pb2.WorkerExitType.Name(worker.exit_type), worker.exit_detail
    except Exception:  # noqa: BLE001 - the cause is then told from the caller's error alone
        return None
    return None


def describe_exit(exit_type: str, detail: str) -> str:
    """A few words on a worker's recorded exit, for the log line."""
    if exit_type == "NODE_OUT_OF_MEMORY" or "low on memory" in detail:
        return "killed by Ray's memory monitor"
    if _says_node_lost(detail):
        return "its node was lost"
    first = (detail.strip().split(". ")[0].splitlines() or [exit_type])[0]  # Ray's first sentence; the rest guesses
    return f"its process died ({first[:160]})"


def _says_node_lost(text: str) -> bool:
    lowered = text.lower()
    return any(phrase in lowered for phrase in ("its node has died", "has been marked dead", "marked as dead",
                                                "the node was removed"))


def actor_restarts(actor: Any) -> int | None:
    """How often Ray has restarted the actor so far, or None when it cannot be read."""
    value = _actor_record(actor).get("NumRestarts")
    return None if value is None else int(value)


def wait_until_back(actor: Any, name: str, limits: StartupLimits, *, report: Report = print_progress) -> Any:
    """Wait until a lost actor answers ``ready()`` again and return its answer.

    A restart needs a place (after a node loss, the actor's bundle moves to a surviving node) and a model load,
    so the wait is bounded by ``placement_timeout_s + load_timeout_s``, with a progress line every
    ``progress_every_s``. A call made while the actor restarts fails with ``ActorUnavailableError``, and with
    ``ActorDiedError`` when the restarting actor is lost again before it answers: then Ray restarts it once more
    if it may, so that is waited out too. Raises :class:`ActorLostForGood` once Ray reports the actor dead for
    good, ``TimeoutError`` at the deadline.
    """
    import ray

    limit = limits.placement_timeout_s + limits.load_timeout_s
    started = last_report = time.monotonic()
    while True:
        remaining = limit - (time.monotonic() - started)
        if remaining <= 0:
            raise TimeoutError(f"{name} did not come back from its restart within {limit:.0f} s "
                               f"(cluster.placement_timeout_s + cluster.model_load_timeout_s); {free_resources_line()}")
        try:
            return ray.get(actor.ready.remote(), timeout=max(0.1, min(limits.progress_every_s, remaining)))
        except ray.exceptions.GetTimeoutError:
            pass
        except Exception as exc:  # noqa: BLE001 - classified below
            if lost_actor_cause(exc) is None:
                raise  # its constructor failed: Ray reports that as the actor's error
            if actor_state(actor) == "DEAD":
                raise ActorLostForGood(name, f"{name} is dead for good: Ray restarted it as often as it may "
                                             f"(cluster.actor_max_restarts) ({describe_loss(exc)})") from exc
        now = time.monotonic()
        if now - last_report >= limits.progress_every_s:
            last_report = now
            report(f"restart: waiting for {name} to be placed and reloaded for {now - started:.0f} s of "
                   f"{limit:.0f} s; {free_resources_line()}")
        time.sleep(min(0.5, max(0.0, limit - (now - started))))


class RestartableActors:
    """One role's restartable actors behind calls that survive losing them.

    ``restore(index)`` (set by the owner; may be replaced later, e.g. by a weight-sync owner) brings a restarted
    actor back to what it must hold before it works again; it is called after every loss and may find nothing to
    do. ``max_redos`` bounds how often one call is redone (each redo follows one loss of its actor).
    """

    def __init__(self, role: str, names: Sequence[str], actors: Sequence[Any], *, limits: StartupLimits,
                 max_redos: int, restore: Callable[[int], None] | None = None, item_noun: str = "items",
                 report: Report = print_progress):
        self.role = role
        self.names = list(names)
        self.actors = list(actors)
        self.limits = limits
        self.max_redos = max(1, int(max_redos))
        self.restore = restore
        self.item_noun = item_noun
        self.report = report
        self.restarts = 0
        """Restarts of this role's actors that were recovered from (two calls failing for one loss count once)."""
        self._seen = [0] * len(self.actors)
        """Each actor's restart count as of its last recovery."""
        self._pids = [int(_actor_record(actor).get("Pid", 0) or 0) for actor in self.actors]
        """Each actor's process as of its last recovery: its recorded exit tells why it was lost."""
        self.retried_items = 0
        """Work items redone because the actor doing them was lost."""
        self.causes: Counter[str] = Counter()
        """Recovered losses by cause (``killed by Ray's memory monitor``, …)."""

    # ------------------------------------------------------------------------------------------- calls
    def submit(self, index: int, method: str, *args: Any) -> Any:
        """Start ``method`` on actor ``index``; returns its ObjectRef (see :meth:`result`)."""
        return getattr(self.actors[index], method).remote(*args)

    def call(self, index: int, method: str, *args: Any, items: int = 1, timeout_s: float | None = None,
             check: Callable[[Any], str | None] | None = None) -> Any:
        """``method(*args)`` on actor ``index``, redone after each loss of the actor (see :meth:`result`)."""
        return self.result(index, self.submit(index, method, *args), lambda: self.submit(index, method, *args),
                           items=items, timeout_s=timeout_s, check=check)

    def result(self, index: int, ref: Any, resubmit: Callable[[], Any], *, items: int = 1,
               timeout_s: float | None = None, check: Callable[[Any], str | None] | None = None,
               restore: bool = True) -> Any:
        """The value of ``ref`` (a call to actor ``index`` of ``items`` work items), redone through ``resubmit``
        after each loss of the actor, once it is back and restored; at most ``max_redos`` times.

        ``check(value)`` may name a problem with a value that arrived (e.g. made by a replica that Ray restarted
        before the call reached it, so on the base weights): the actor is then restored and the call redone.
        ``restore=False`` skips restoring (the call itself is what restores the actor, e.g. a weight load).
        A stalled call raises ``TimeoutError`` naming the actor; any other error of the call is raised as is.
        """
        import ray

        redos = 0
        while True:
            try:
                value = ray.get(ref, timeout=timeout_s)
                problem = check(value) if check is not None else None
                if problem is None and restore and self.restarted_unseen(index):
                    # Ray restarted it before the call reached it: the value was made without the actor's state.
                    problem = "it was restarted before this call reached it"
                if problem is None:
                    return value
                cause: Any = problem
            except ray.exceptions.GetTimeoutError as exc:
                raise TimeoutError(f"{self.names[index]}: call did not finish within {timeout_s:.0f} s") from exc
            except Exception as exc:  # noqa: BLE001 - classified: a lost actor is recovered, anything else raised
                lost = lost_actor_cause(exc)
                if lost is None:
                    raise
                cause = lost
            if redos >= self.max_redos:
                raise ActorLostForGood(self.names[index], f"{self.names[index]}: its work was lost {redos + 1} "
                                                          f"times in one call; giving up ({_reason(cause)})")
            redos += 1
            self.recover(index, cause, redo=items, restore=restore)
            ref = resubmit()

    # ---------------------------------------------------------------------------------------- recovery
    def restarted_unseen(self, index: int) -> bool:
        """True when Ray restarted actor ``index`` since its last recovery (it lost the state it was given)."""
        count = actor_restarts(self.actors[index])
        return count is not None and count > self._seen[index]

    def recover(self, index: int, cause: Any, *, redo: int = 0, restore: bool = True) -> None:
        """Wait until actor ``index`` is back, restore it (again if it is lost while being restored), count the
        loss and the ``redo`` items its caller will redo, and log one line saying so."""
        attempts = 0
        while True:
            wait_until_back(self.actors[index], self.names[index], self.limits, report=self.report)
            back = actor_restarts(self.actors[index])
            try:
                if restore and self.restore is not None:
                    self.restore(index)
                break
            except Exception as exc:  # noqa: BLE001 - lost again while being restored: wait for it once more
                # Only this actor's own loss is waited out; another's (the learner sending the weights) is raised.
                lost_again = actor_state(self.actors[index]) != "ALIVE" or actor_restarts(self.actors[index]) != back
                if lost_actor_cause(exc) is None or not lost_again or attempts >= self.max_redos:
                    raise
                attempts += 1
                logger.warning("%s was lost again while getting its state back (%s); waiting for it once more",
                               self.names[index], _reason(lost_actor_cause(exc)))
        reason = _reason(cause)
        self.retried_items += redo
        redone = f"; redoing its {redo} {self.item_noun}" if redo else ""
        record = _actor_record(self.actors[index])
        count = None if record.get("NumRestarts") is None else int(record["NumRestarts"])
        new = 1 if count is None else max(0, count - self._seen[index])
        if count is not None:
            self._seen[index] = count
        if new:
            exited = process_exit(self._pids[index])
            if exited is not None:
                reason = describe_exit(*exited)
            self._pids[index] = int(record.get("Pid", 0) or 0)
        if not new:  # another call lost with the same restart, or the actor was unreachable without restarting
            logger.info("%s: call redone (%s)%s", self.names[index], reason, redone)
            return
        self.restarts += new
        self.causes[reason.split(" (")[0]] += new
        logger.warning("%s was lost (%s) and is back%s [%s restarts so far: %d]", self.names[index], reason, redone,
                       self.role, self.restarts)


def _reason(cause: Any) -> str:
    return cause if isinstance(cause, str) else describe_loss(cause)


__all__ = ["ActorLostForGood", "RestartableActors", "actor_restarts", "actor_state", "describe_exit",
           "describe_loss", "lost_actor_cause", "process_exit", "wait_until_back"]
