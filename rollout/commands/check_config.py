"""``photocrafter check-config``: validate a config, print it resolved, its resource plan and, for a config
that asks for GPUs, the modelled time of one step (``rollout.cluster.capacity``).

Exit status 0 when the config is valid and its plan fits the cluster it names; 1 otherwise, with one line per
problem (the YAML path, the bad value and what is allowed).
"""

from __future__ import annotations

import argparse
import sys

from rollout.config import dump_config, load_config_or_report
from rollout.cluster.placement import plan_resources


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML config (default: configs/embedded.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="override one field, e.g. --set learner.critic.lr=1e-5 (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="print only problems")


def run(args: argparse.Namespace) -> int:
    config = load_config_or_report(args.config, args.overrides)
    if config is None:
        return 1
    plan = plan_resources(config)
    if not args.quiet:
        print("# resolved config")
        print(dump_config(config))
        print("# resource plan")
        print(plan.format())
        if plan.total_gpus > 0:
            from rollout.cluster.capacity import time_plan

            print("# time plan of one step")
            print(time_plan(config, plan).format())
    if not plan.ok:
        for problem in plan.problems:
            print(f"{args.config or 'configs/embedded.yaml'}: {problem}", file=sys.stderr)
        return 1
    if not args.quiet:
        print("config ok")
    return 0
