"""``photocrafter enhance IMAGE``: the critic critiques one photo, the artist edits it from that critique.

Owns the command-line surface only: models come from ``--checkpoint DIR`` (a warm-start or materialised
directory holding ``critic/`` and ``artist/``) or from the run config; inference is ``rollout.pipeline``.
Prints the reasoning, the suggestions and the score, and writes the edited photo.
Exit status: 0 enhanced, 1 the photo could not be enhanced, 2 unusable arguments.
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
    from critic_actor.inputs import resolve_image
    from rollout.commands.sft import resolve_models
    from rollout.config import ConfigError, load_config
    from rollout.images import write_png
    from rollout.pipeline import PhotoPipeline

    try:
        config = load_config(args.config, args.set)
        critic_dir, artist_dir = resolve_models(config, args.checkpoint)
        image = resolve_image(args.image, args.image)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"photocrafter enhance: {error}", file=sys.stderr)
        return 2
    pipeline = PhotoPipeline(critic_dir, artist_dir, min_pixels=config.critic.min_pixels,
                             max_pixels=config.critic.max_pixels, max_new_tokens=config.critic.max_new_tokens,
                             resolution=config.artist.resolution, num_steps=config.artist.num_steps,
                             solver=config.artist.solver)
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
