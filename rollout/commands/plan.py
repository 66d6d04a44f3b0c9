"""``photocrafter plan``: the placement planner's proposal for a cluster, printed and optionally written as a config.

Reads a config for the work of one step (photos, critiques, edits, models) and the cluster it names, or the GPU
count, node size and GPU memory given here; prints the configured plan beside the best split of every placement
(:mod:`rollout.cluster.planner`); with ``--out`` writes the config with the proposed placement, role counts and
cluster size (every field resolved), ready for ``photocrafter train --config``. Exit status 1 when the config is
invalid or no split fits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rollout.config import dump_config, load_config_or_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML config giving the step's work and the models")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="override one field, e.g. --set trainer.batch_size=128 (repeatable)")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs of the cluster (default: cluster.num_gpus)")
    parser.add_argument("--gpus-per-node", type=int, default=None,
                        help="GPUs per node (default: cluster.gpus_per_node)")
    parser.add_argument("--gpu-memory-gib", type=float, default=None,
                        help="memory of one GPU (default: cluster.gpu_memory_gib)")
    parser.add_argument("--out", type=Path, default=None, help="write the proposed config here (YAML)")


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.gpu_memory_gib is not None:
        overrides.append(f"cluster.gpu_memory_gib={args.gpu_memory_gib}")
    if args.gpus_per_node is not None:
        overrides.append(f"cluster.gpus_per_node={args.gpus_per_node}")
    config = load_config_or_report(args.config, overrides)
    if config is None:
        return 1
    gpus = args.gpus if args.gpus is not None else config.cluster.num_gpus
    if gpus < 2:
        print(f"photocrafter plan: a plan needs at least 2 GPUs (one per model); got {gpus}: pass --gpus or set "
              f"cluster.num_gpus", file=sys.stderr)
        return 1
    from rollout.cluster.capacity import time_plan
    from rollout.cluster.placement import plan_resources
    from rollout.cluster.planner import config_for, propose

    try:
        proposal = propose(config, gpus=gpus)
    except ValueError as exc:
        print(f"photocrafter plan: {exc}", file=sys.stderr)
        return 1
    current = time_plan(config, plan_resources(config)) if plan_resources(config).total_gpus else None
    print(proposal.format(current))
    print("\n# proposed time plan of one step")
    print(proposal.best.plan.format())
    if args.out is not None:
        from rollout.config import TrainConfig

        proposed = config_for(config, proposal.best.split, gpus)
        TrainConfig.model_validate(proposed.model_dump())  # the written file must load as it is
        args.out.write_text(f"# Proposed by `photocrafter plan` for {gpus} GPUs ({config.cluster.gpus_per_node} per "
                            f"node, {config.cluster.gpu_memory_gib:g} GiB each) from {args.config or 'the default'}"
                            f"\n{dump_config(proposed)}")
        print(f"\nwrote {args.out}")
    return 0
