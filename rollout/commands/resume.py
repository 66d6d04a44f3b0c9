"""``photocrafter resume --run DIR``: continue a stopped run from its newest complete checkpoint.

The run's own resolved config (``DIR/config.yaml``) is reused, so a resumed run is the same run: same MLflow
run, same data order, same seeds. ``--set`` may change fields that do not alter the run's identity (e.g.
``trainer.steps`` to train longer, ``tracking.*``), and how the learners execute: their GPUs (a run
checkpointed on N ranks resumes on M: the state is resharded), micro-batching and memory savers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rollout.config import load_config_or_report

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


def run(args: argparse.Namespace) -> int:
    from rollout.checkpoint import latest_checkpoint
    from rollout.train import train

    run_dir = Path(args.run).expanduser().resolve()
    if not (run_dir / "run.json").is_file() or not (run_dir / "config.yaml").is_file():
        print(f"{run_dir}: not a run directory (no run.json/config.yaml)", file=sys.stderr)
        return 1
    if latest_checkpoint(run_dir) is None:
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
