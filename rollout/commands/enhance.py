"""``photocrafter enhance IMAGE``: the critic critiques one photo, the artist edits it from that critique.

Owns the command-line surface only: models come from ``--checkpoint DIR`` (a warm-start or exported
directory holding both ``critic/`` and ``artist/``; one that lacks either is refused, never replaced by the
config's models) or from the run config; inference is ``rollout.pipeline``. The photo is read with
``rollout.records.images`` (the rules of docs/data.md). Prints the reasoning, the suggestions and the score, and writes
the edited photo.
Exit status: 0 enhanced, 1 the photo cannot be read (one line names the file and what is wrong), 2 unusable
arguments (config, ``--checkpoint``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", metavar="IMAGE", help="photo to enhance (8-bit RGB)")
    parser.add_argument("--checkpoint", metavar="DIR", help="directory with critic/ and artist/ (default: config)")
    parser.add_argument("--out", metavar="FILE", help="where to write the edit (default: IMAGE_enhanced.png)")
    parser.add_argument("--config", metavar="YAML", help="run config (default: configs/embedded.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--seed", type=int, default=0, help="seed of the artist's initial noise")


def run(args: argparse.Namespace) -> int:
    from rollout.config import ConfigError, load_config
    from rollout.data.sources import image_limits
    from rollout.records.images import ImageRejected, read_image, write_png
    from rollout.models import checkpoint_model_dirs, resolve_model_paths
    from rollout.pipeline import PhotoPipeline

    try:
        config = load_config(args.config, args.set)
        if args.checkpoint:
            critic_dir, artist_dir = checkpoint_model_dirs(args.checkpoint, "--checkpoint")
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"photocrafter enhance: {error}", file=sys.stderr)
        return 2
    # The photo is read before the models are found: on first use the embedded warm start is trained (minutes),
    # and an unreadable photo must not wait for that.
    try:
        image = read_image(args.image, image_limits(config.data))
    except ImageRejected as error:
        print(f"photocrafter enhance: {error.reason}", file=sys.stderr)
        return 1
    if not args.checkpoint:
        try:
            critic_dir, artist_dir = resolve_model_paths(config)
        except (FileNotFoundError, ValueError) as error:
            print(f"photocrafter enhance: {error}", file=sys.stderr)
            return 2
    pipeline = PhotoPipeline.from_config(critic_dir, artist_dir, config)
    result = pipeline.enhance(image, seed=args.seed)
    parsed = result.critique.parsed
    print("critique:", result.critique.text)
    print("format ok:", parsed.format_ok, f"({parsed.error})" if parsed.error else "")
    print("reasoning:", parsed.reasoning)
    for suggestion in parsed.suggestions:
        print("suggestion:", suggestion.text)
    print("score:", parsed.score)
    out = Path(args.out) if args.out else Path(args.image).with_name(Path(args.image).stem + "_enhanced.png")
    write_png(out, result.edited)
    print("wrote", out)
    return 0
