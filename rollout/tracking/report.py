"""What the console shows during training: one summary line per step, a progress bar over steps, and which log
records reach the console.

Owns formatting only: :func:`format_step_line` turns the controller's metric dict (keys as catalogued in
docs/metrics.md) into one human line, :class:`StepProgress` is the bar over steps, and
:func:`configure_console_logging` decides which of the project's log records the driver prints (warnings by
default, everything with ``--verbose``; the libraries' own verbosity is set in ``rollout.env``). It must not log to
MLflow or Ray (``rollout.tracking.run_tracker`` and ``rollout.tracking.ray_metrics`` do) and must never fail on a
missing or non-finite metric: a step line is read by a person, and a key the controller did not emit is simply left
out.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import TextIO

# (console label, metric key, format) in display order; each group below is printed only if one of its
# keys is present.
_REWARDS = (("r_artist", "reward/artist/total/mean", ".3f"), ("σ_group", "groups/artist/reward_std_mean", ".3f"),
            ("r_critic", "reward/critic/total/mean", ".3f"))
_KL = (("kl", "learner/grpo/kl", ".4f"),)
_LOSSES = (("L_grpo", "learner/grpo/loss", ".3f"), ("L_nft", "learner/nft/loss", ".3g"))
_STAGES = (("data", "time/stage/data_s"), ("crit", "time/stage/critic_rollout_s"),
           ("prep", "time/stage/prepare_s"), ("art", "time/stage/artist_sample_s"),
           ("rescore", "time/stage/rescore_s"), ("rew", "time/stage/rewards_s"), ("upd", "time/stage/update_s"),
           ("upd_c", "time/stage/critic_update_s"), ("upd_a", "time/stage/artist_update_s"),
           ("sync", "time/stage/sync_s"))
_STEP_TIME = "time/stage/step_s"
_THROUGHPUT = (("edits/s", "perf/edits_per_s", ".1f"), ("tok/s", "perf/tokens_per_s", ".0f"))
_ALERTS = (("skipped", "skipped/nonfinite_steps"), ("rejected", "data/rejected"),
           ("restarts", "faults/actor_restarts"))


def _value(metrics: Mapping[str, float], key: str) -> float | None:
    raw = metrics.get(key)
    if raw is None:
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value


def _show(value: float, spec: str) -> str:
    return format(value, spec) if math.isfinite(value) else str(value)


def _pairs(metrics: Mapping[str, float], fields) -> list[str]:
    out = []
    for label, key, spec in fields:
        value = _value(metrics, key)
        if value is not None:
            out.append(f"{label} {_show(value, spec)}")
    return out


def format_step_line(step: int, total_steps: int, metrics: Mapping[str, float]) -> str:
    """One console line for a finished step, e.g.

    ``step 3/5 | r_artist 0.412 σ_group 0.083 r_critic 0.250 | kl 0.0012 | L_grpo -0.013 L_nft 0.97 |
    t 12.3s (crit 4.1 prep 0.6 art 3.2 rew 1.1 upd_c 1.4 upd_a 1.5 sync 0.4) | 5.2 edits/s 310 tok/s``

    Groups whose metrics are absent are left out; non-finite values are shown as ``nan``/``inf`` so a
    broken step is visible rather than hidden. Counters of trouble (skipped steps, rejected records, actor
    restarts) are appended only when non-zero.
    """
    parts = [f"step {step}/{total_steps}"]
    for group in (_REWARDS, _KL, _LOSSES):
        shown = _pairs(metrics, group)
        if shown:
            parts.append(" ".join(shown))
    stages = [f"{label} {_show(v, '.1f')}" for label, key in _STAGES
              if (v := _value(metrics, key)) is not None]
    total = _value(metrics, _STEP_TIME)
    if total is not None or stages:
        timing = f"t {_show(total, '.1f')}s" if total is not None else "t"
        parts.append(f"{timing} ({' '.join(stages)})" if stages else timing)
    throughput = [f"{_show(v, spec)} {label}" for label, key, spec in _THROUGHPUT
                  if (v := _value(metrics, key)) is not None]
    if throughput:
        parts.append(" ".join(throughput))
    alerts = [f"{label} {_show(v, '.0f')}" for label, key in _ALERTS
              if (v := _value(metrics, key)) is not None and v != 0]
    if alerts:
        parts.append("! " + " ".join(alerts))
    return " | ".join(parts)


class StepProgress:
    """A tqdm bar over training steps on stderr, with the step line printed above it.

    The bar is shown only on a terminal (job logs stay free of carriage-return noise); the step lines are
    printed either way, so ``ray job logs`` still shows one line per step.
    """

    def __init__(self, total_steps: int, *, initial: int = 0, stream: TextIO | None = None,
                 enabled: bool | None = None, desc: str = "train"):
        from tqdm import tqdm

        self.total_steps = total_steps
        self._stream = stream if stream is not None else sys.stderr
        show_bar = self._stream.isatty() if enabled is None else enabled
        self._bar = tqdm(total=total_steps, initial=initial, file=self._stream, disable=not show_bar,
                         desc=desc, unit="step", dynamic_ncols=True, leave=True)

    def step_done(self, step: int, metrics: Mapping[str, float]) -> str:
        """Advance the bar to ``step`` and print its summary line above it; returns the line."""
        line = format_step_line(step, self.total_steps, metrics)
        if self._bar.disable:
            print(line, file=self._stream, flush=True)
        else:
            self._bar.write(line, file=self._stream)
            self._bar.update(max(0, step - self._bar.n))
        return line

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


PROJECT_LOGGERS = ("rollout", "critic_actor", "artist_actor", "rewards", "learner")


def configure_console_logging(verbose: bool, stream: TextIO | None = None) -> None:
    """Print the project's log records on ``stream`` (stderr): ``WARNING`` and above as ``[photocrafter]
    warning: …`` lines by default, every record with its logger's name when ``verbose``."""
    import logging

    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s" if verbose
                                           else "[photocrafter] %(levelname)s: %(message)s"))
    for name in PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, "_photocrafter_console", False)]:
            logger.removeHandler(old)
        handler._photocrafter_console = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.setLevel(logging.INFO if verbose else logging.WARNING)
