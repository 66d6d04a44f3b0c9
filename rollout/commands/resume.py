"""``photocrafter resume --run DIR``: continue a stopped run from its newest complete checkpoint.

The run's own resolved config (``DIR/config.yaml``) is reused, so a resumed run is the same run: same MLflow
run, same data order, same seeds. ``--set`` may change fields that do not alter the run's identity (e.g.
``trainer.steps`` to train longer, ``tracking.*``), and how the learners execute: their GPUs (a run
checkpointed on N ranks resumes on M: the state is resharded), micro-batching and memory savers. A relative
``DIR`` that is not a run directory under the current directory is looked up under ``$PHOTOCRAFTER_HOME``
(default ``~/photocrafter``), where a Ray job's runs live, so ``--run runs/<run-name>`` finds a run whether it
was trained locally or as a job.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rollout.config import job_run_home, load_config_or_report

# Overrides that would make the resumed run a different run than the checkpoint's.
_IDENTITY_KEYS = ("critic.model", "artist.model", "data.", "trainer.seed", "trainer.batch_size", "learner.")
# ... except the learners' execution knobs: the same math on other GPUs or in other micro-batches.
_EXECUTION_KEYS = tuple(f"learner.{role}.{knob}" for role in ("critic", "artist")
                        for knob in ("gpus", "micro_batch_size", "max_tokens_per_micro_batch", "gradient_checkpointing",
                                     "cpu_offload"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory (runs/<run-name>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="override e.g. trainer.steps=50 to train further")


def _is_run_dir(path: Path) -> bool:
    return (path / "run.json").is_file() and (path / "config.yaml").is_file()


def find_run_dir(value: str) -> Path | None:
    """The run directory ``value`` names: as given (relative to the current directory), else, for a relative
    path, under the Ray jobs' run home; None when neither holds a run."""
    given = Path(value).expanduser()
    candidates = [given.resolve()] + ([] if given.is_absolute() else [job_run_home() / given])
    return next((path for path in candidates if _is_run_dir(path)), None)


def run(args: argparse.Namespace) -> int:
    from learner.checkpoint_reader import UnsafeCheckpointError
    from rollout.checkpoint import latest_checkpoint
    from rollout.train import train

    run_dir = find_run_dir(args.run)
    if run_dir is None:
        where = Path(args.run).expanduser().resolve()
        also = "" if Path(args.run).expanduser().is_absolute() else f" nor under {job_run_home()}"
        print(f"{where}: not a run directory (no run.json/config.yaml){also}", file=sys.stderr)
        return 1
    print(f"[photocrafter] resuming {run_dir}", flush=True)
    try:
        newest = latest_checkpoint(run_dir)
    except UnsafeCheckpointError as refused:
        print(f"{run_dir}: not resumed: {refused}", file=sys.stderr)
        return 1
    if newest is None:
        print(f"{run_dir}: no complete checkpoint to resume from", file=sys.stderr)
        return 1
    bad = [o for o in args.overrides
           if o.split("=", 1)[0].startswith(_IDENTITY_KEYS) and o.split("=", 1)[0] not in _EXECUTION_KEYS]
    if bad:
        print(f"cannot change {', '.join(bad)} when resuming: it would no longer be the same run", file=sys.stderr)
        return 1
    config = load_config_or_report(run_dir / "config.yaml", args.overrides)
    if config is None:
        return 1
    return train(config, config_source=str(run_dir / "config.yaml"), resume_dir=run_dir)
