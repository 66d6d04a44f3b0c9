"""How every entry point of the project ends: ``photocrafter`` and each ``python -m bench.<name>``.

Owns one rule: a command never exits non-zero without saying why. An exception that escapes a command's
``main`` is printed with its whole chain (the traceback, then each ``raised from`` cause), followed by one
summary line naming the command, the error and its root cause; Ray's wrapped errors are unwrapped to the error
that was raised inside the actor. A fatal signal (a crash inside a native library) prints the Python stack of
every thread through ``faulthandler`` before the process dies. A command that returns a non-zero status itself
prints its own reason; this module adds nothing then.
"""

from __future__ import annotations

import faulthandler
import sys
import traceback
from collections.abc import Callable
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


def run_main(main: Callable[[], int | None], prog: str) -> NoReturn:
    """Run ``main`` and exit with its status; an escaping exception is printed in full, then summarised in one
    line on stderr, and the exit status is 1."""
    faulthandler.enable(all_threads=True)
    try:
        status = main()
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    except BaseException as error:  # noqa: BLE001 - every failure must be told before the exit
        traceback.print_exception(error, file=sys.stderr)
        print(summary(prog, error), file=sys.stderr, flush=True)
        sys.exit(1)
    sys.stdout.flush()
    sys.exit(int(status or 0))


__all__ = ["root_causes", "run_main", "summary"]
