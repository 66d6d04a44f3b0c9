"""How every entry point of the project ends: ``photocrafter`` and each ``python -m bench.<name>``.

Owns one rule: a command never exits non-zero without saying why. An exception that escapes a command's
``main`` is printed with its whole chain (the traceback, then each ``raised from`` cause), followed by one
summary line naming the command, the error and its root cause; Ray's wrapped errors are unwrapped to the error
that was raised inside the actor. A fatal signal (a crash inside a native library) prints the Python stack of
every thread through ``faulthandler`` before the process dies. A command that returns a non-zero status itself
prints its own reason; this module adds nothing then.

Some deaths leave no Python frame to print from: a process killed by a signal (the kernel's OOM killer sends
SIGKILL), or Ray's driver library ending the process itself (``_exit(1)``, e.g. when it loses its local raylet).
With ``supervise=True`` (the benchmarks) the command runs in a child process and this one waits for it: a child
that ends non-zero without having reported why gets a line saying how it ended, with the errors Ray's driver log
recorded for it.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn


def root_causes(error: BaseException) -> list[BaseException]:
    """``error`` and the errors behind it, outermost first: ``__cause__`` / ``__context__`` chains, and the
    exception a Ray task raised (``RayTaskError.cause``)."""
    chain, seen = [], set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        ray_cause = getattr(current, "cause", None)
        if isinstance(ray_cause, BaseException) and type(current).__module__.startswith("ray"):
            current = ray_cause
        else:
            current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    line = next((part for part in text.splitlines() if part.strip()), "")
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


def summary(prog: str, error: BaseException) -> str:
    """``<prog> failed: <error>`` and, when it differs, ``; cause: <root cause>``."""
    chain = root_causes(error)
    line = f"{prog} failed: {first_line(chain[0])}"
    if len(chain) > 1 and first_line(chain[-1]) != first_line(chain[0]):
        line += f"; cause: {first_line(chain[-1])}"
    return line


REPORTED = "PHOTOCRAFTER_REPORTED_FILE"
"""Set for a supervised child: the file it writes once it has said why it ends non-zero."""


def run_main(main: Callable[[], int | None], prog: str, *, supervise: bool = False) -> NoReturn:
    """Run ``main`` and exit with its status; an escaping exception is printed in full, then summarised in one
    line on stderr, and the exit status is 1. ``supervise``: run it in a child process (see the module doc)."""
    if supervise and REPORTED not in os.environ:
        sys.exit(_supervise(prog))
    faulthandler.enable(all_threads=True)
    try:
        status = int(main() or 0)
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            _mark_reported()  # argparse and friends print their own reason
        raise
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        _mark_reported()
        sys.exit(130)
    except BaseException as error:  # noqa: BLE001 - every failure must be told before the exit
        traceback.print_exception(error, file=sys.stderr)
        print(summary(prog, error), file=sys.stderr, flush=True)
        _mark_reported()
        sys.exit(1)
    sys.stdout.flush()
    if status:
        _mark_reported()  # a command returning non-zero printed its own reason
    sys.exit(status)


def _mark_reported() -> None:
    path = os.environ.get(REPORTED)
    if path:
        Path(path).write_text("reported\n")


def _supervise(prog: str) -> int:
    """Run this very command in a child, wait, and say how it ended when it ended non-zero without a word."""
    import signal
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="photocrafter-entry-") as scratch:
        reported = Path(scratch) / "reported"
        child = subprocess.Popen([sys.executable, *sys.orig_argv[1:]], env={**os.environ, REPORTED: str(reported)},
                                 preexec_fn=_die_with_parent)
        # Ctrl-C reaches the child from the terminal; a SIGTERM sent to this process alone is passed on.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda signum, _frame: child.send_signal(signum))
        status = child.wait()
        if status != 0 and not reported.exists():
            print(f"{prog}: {_how_it_ended(status)}", file=sys.stderr, flush=True)
            for line in _ray_driver_errors(child.pid):
                print(f"{prog}: Ray's driver log: {line}", file=sys.stderr, flush=True)
    return status if status >= 0 else 128 - status


def _die_with_parent() -> None:
    """In the child: end with the supervising process (Linux), as the command would if it were not supervised."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _how_it_ended(status: int) -> str:
    if status < 0:
        import signal

        name = signal.Signals(-status).name
        why = " (the kernel's OOM killer sends SIGKILL when the machine runs out of memory)" \
            if name == "SIGKILL" else ""
        return f"the process was killed by {name}{why}, before it could report anything"
    return (f"the process ended with status {status} without reporting an error (a library ended it directly; "
            f"Ray's driver does so when it loses its cluster)")


def _ray_driver_errors(pid: int, limit: int = 12) -> list[str]:
    """The error and fatal lines Ray's core library logged for the driver process ``pid`` (newest session)."""
    import glob
    import tempfile as _tempfile

    roots = {os.environ.get("RAY_TMPDIR") or "", _tempfile.gettempdir(), "/tmp"}
    logs = [path for root in roots if root for path in
            glob.glob(os.path.join(root, "ray", "session_*", "logs", f"python-core-driver-*_{pid}.log"))]
    lines: list[str] = []
    for path in sorted(logs, key=os.path.getmtime)[-1:]:
        with open(path, errors="replace") as handle:
            lines = [line.rstrip() for line in handle if " E " in line[:40] or " F " in line[:40]
                     or "Check failed" in line]
    return lines[-limit:]


__all__ = ["root_causes", "run_main", "summary"]
