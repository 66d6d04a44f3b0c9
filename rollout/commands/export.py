"""``photocrafter export CHECKPOINT --out DIR``: an RL checkpoint as standalone critic and artist directories.

Owns the command-line surface of :func:`learner.export.export_checkpoint`. The run's config is read from the
run directory (``runs/<run>/config.yaml``, two levels above the step directory) unless ``--config`` names
another; a run directory instead of a step directory exports its newest complete checkpoint. The result holds
``critic/``, ``artist/`` and ``export.json``, and is what ``evaluate --checkpoint SFT+RL=DIR``, ``enhance
--checkpoint DIR`` and ``trainer.init_from`` take. Exit status: 0 exported, 2 unusable arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="runs/<run>/checkpoints/step_N, or runs/<run> for its newest checkpoint")
    parser.add_argument("--out", required=True, metavar="DIR", help="directory to write critic/ and artist/ into")
    parser.add_argument("--config", metavar="YAML", help="the run's config (default: the run directory's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--artist-weights", choices=("ema", "trained", "sampling"), default="ema",
                        help="which artist adapter to merge (ema: the one meant for evaluation)")


def resolve_checkpoint(value: str) -> tuple[Path, Path]:
    """(verified step directory, the run's config.yaml) for a step directory or a run directory."""
    from rollout.checkpoint import latest_checkpoint, verify_checkpoint

    path = Path(value)
    if (path / "checkpoints").is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"{path}/checkpoints holds no complete checkpoint")
        return found.path, path / "config.yaml"
    try:
        verify_checkpoint(path)
    except ValueError as error:
        raise FileNotFoundError(f"{error}; give runs/<run>/checkpoints/step_N or runs/<run>") from None
    return path, path.parent.parent / "config.yaml"


def run(args: argparse.Namespace) -> int:
    from learner.export import export_checkpoint
    from rollout.config import ConfigError, load_config
    from rollout.models import resolve_model_paths

    try:
        step_dir, run_config = resolve_checkpoint(args.checkpoint)
        config_path = args.config or run_config
        if not Path(config_path).is_file():
            raise FileNotFoundError(f"{config_path}: no such config; pass the run's config with --config")
        config = load_config(config_path, args.set)
        record = export_checkpoint(step_dir, config, resolve_model_paths(config), args.out,
                                   artist_weights=args.artist_weights)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"photocrafter export: {error}", file=sys.stderr)
        return 2
    print(f"exported step {record['step']} of {step_dir} ({args.artist_weights} artist weights) to {args.out}")
    return 0
