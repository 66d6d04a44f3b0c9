"""The ``photocrafter`` command line: one subcommand per user task, dispatched to its own module.

Owns argument parsing and dispatch only. Each subcommand lives in ``rollout/commands/<name>.py`` and
exposes ``add_arguments(parser)`` and ``run(args) -> int``; modules are imported lazily so ``photocrafter
check-config`` never pays for torch, Ray or vLLM imports.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from rollout.env import apply_runtime_defaults

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("rollout.train", "run the coordinated RL loop (default config: configs/embedded.yaml)"),
    "resume": ("rollout.commands.resume", "continue a stopped run from its last checkpoint"),
    "check-config": ("rollout.commands.check_config", "validate a config and print it with its resource plan"),
    "init-models": ("rollout.commands.init_models", "build the embedded tiny critic and artist (offline)"),
    "make-data": ("rollout.commands.make_data", "synthesise training pairs from a folder of good photos"),
    "score": ("rollout.commands.score", "print the full reward breakdown for one input/edit/target triple"),
    "enhance": ("rollout.commands.enhance", "critic then artist on one photo: critique text + edited image"),
    "evaluate": ("rollout.commands.evaluate", "metrics of a checkpoint and baselines on a held-out set"),
    "sft": ("rollout.commands.sft", "warm-start supervised fine-tuning (critic, artist, adapt)"),
    "export": ("rollout.commands.export", "write an RL checkpoint as standalone critic/ and artist/ directories"),
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(prog="photocrafter", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers = {}
    for name, (_, help_text) in COMMANDS.items():
        subparsers[name] = sub.add_parser(name, help=help_text, description=help_text)
    return parser, subparsers


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    apply_runtime_defaults()
    parser, subparsers = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    name = argv[0]
    if name not in COMMANDS:
        parser.error(f"unknown command {name!r}; choose from {', '.join(COMMANDS)}")
    module_name, _ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(module_name.rsplit(".", 1)[0]):
            print(f"photocrafter {name}: not available in this build ({exc.name} missing)", file=sys.stderr)
            return 2
        raise
    sub = subparsers[name]
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
