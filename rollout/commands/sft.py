"""``photocrafter sft --stage critic|artist|annotated|adapt``: warm-start supervised fine-tuning before the RL loop.

Owns the command-line surface of the warm start. Models and data come from the run config (``critic.model``,
``artist.model``, ``data``: the embedded default trains on the embedded training split only, never on the
held-out photos). ``--out DIR`` receives ``DIR/critic`` (transformers layout) and/or ``DIR/artist`` (diffusers
layout) plus ``DIR/warmstart.json``; point ``critic.model``/``artist.model`` at them (or ``--init-from DIR``
for a later stage) to start training, evaluation or enhancement from the warm start. The trainers live in
``learner.sft``. Every training photo is read once up front with ``rollout.records.images`` (the rules of
docs/data.md); a record whose photo cannot be read is skipped with one line naming the file and what is wrong.
Exit status: 0 trained, 1 training failed or no training photo could be read, 2 unusable arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", required=True, choices=("critic", "artist", "annotated", "adapt"),
                        help="critic: grammar SFT; artist: edits conditioned on instruction text; annotated: edits "
                             "conditioned on the annotation critique teacher-forced under the photo (what the "
                             "embedded warm start trains); adapt: edits conditioned on the critic's own greedy "
                             "critique")
    parser.add_argument("--config", metavar="YAML", help="run config (default: configs/embedded.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--out", required=True, metavar="DIR", help="warm-start directory to write")
    parser.add_argument("--init-from", metavar="DIR",
                        help="earlier warm-start directory: its critic/ and artist/ replace the config's models")
    parser.add_argument("--steps", type=int, default=200, help="optimiser steps (200)")
    parser.add_argument("--batch-size", type=int, default=4, help="tasks per step (4)")
    parser.add_argument("--lr", type=float, help="learning rate (critic 2e-3, artist 3e-4)")
    parser.add_argument("--seed", type=int, default=0)


def resolve_models(config, init_from: str | None) -> tuple[Path, Path]:
    """(critic_dir, artist_dir): the config's models, each replaced by ``init_from``'s when it holds one.

    ``trainer.init_from`` (where the RL loop starts) does not apply: SFT trains ``critic.model`` /
    ``artist.model`` themselves, or the ``--init-from`` directory of an earlier stage. That directory may hold
    only one model (``--stage critic`` writes ``critic/``), but it must hold at least one, and one it holds must
    be complete: ``FileNotFoundError`` names what is missing.
    """
    from rollout.models import checkpoint_model_dirs, resolve_model_paths

    critic, artist = resolve_model_paths(config.model_copy(update={
        "trainer": config.trainer.model_copy(update={"init_from": ""})}))
    if init_from:
        own_critic, own_artist = checkpoint_model_dirs(init_from, "--init-from", partial=True)
        critic, artist = own_critic or critic, own_artist or artist
    return critic, artist


def run(args: argparse.Namespace) -> int:
    from learner.sft import ArtistSFT, CriticSFT, run_sft_loop, write_warmstart_manifest
    from rollout.config import ConfigError, load_config
    from rollout.data.manifest import read_manifest
    from rollout.data.sources import image_limits, manifest_paths
    from rollout.data.stream import load_task_images
    from rollout.records.images import ImageRejected

    try:
        config = load_config(args.config, args.set)
        critic_dir, artist_dir = resolve_models(config, args.init_from)
    except (ConfigError, FileNotFoundError) as error:
        print(f"photocrafter sft: {error}", file=sys.stderr)
        return 2
    if args.steps < 1 or args.batch_size < 1:
        print("photocrafter sft: --steps and --batch-size must be ≥ 1", file=sys.stderr)
        return 2
    train_manifest, _ = manifest_paths(config.data)
    contents = read_manifest(train_manifest)
    for record in contents.rejected:
        print(f"photocrafter sft: skipped {record.record_id}: {record.reason}", file=sys.stderr)
    tasks, limits = [], image_limits(config.data)
    for task in contents.tasks:
        try:
            load_task_images(task, limits)  # the trainers read the photos again at each step: keep no pixels
        except ImageRejected as exc:
            print(f"photocrafter sft: skipped {task.task_id}: {exc.reason}", file=sys.stderr)
            continue
        tasks.append(task)
    if not tasks:
        print(f"photocrafter sft: no photo of {train_manifest} can be read", file=sys.stderr)
        return 1
    print(f"sft {args.stage}: {len(tasks)} training tasks from {train_manifest}; critic {critic_dir}; "
          f"artist {artist_dir}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pixels = dict(min_pixels=config.critic.min_pixels, max_pixels=config.critic.max_pixels)
    annotated = [task for task in tasks if task.known_ops or task.degradations]
    if args.stage == "critic":
        trainer = CriticSFT(critic_dir, lr=args.lr or 2e-3, seed=args.seed, **pixels)
        losses = run_sft_loop(trainer, annotated, steps=args.steps, batch_size=args.batch_size, seed=args.seed)
        trainer.save(out / "critic")
    else:
        trainer = ArtistSFT(artist_dir, critic_dir, stage=args.stage, lr=args.lr or 3e-4, seed=args.seed,
                            resolution=config.artist.resolution, max_new_tokens=config.critic.max_new_tokens,
                            drop_prefix_tokens=config.artist.drop_prefix_tokens, **pixels)
        losses = run_sft_loop(trainer, annotated if args.stage == "annotated" else tasks, steps=args.steps,
                              batch_size=args.batch_size, seed=args.seed)
        trainer.save(out / "artist")
        if not (out / "critic").exists() and critic_dir.resolve() != (out / "critic").resolve():
            # The artist's H_c width and meaning belong to this critic: keep the pair together.
            import shutil

            shutil.copytree(critic_dir, out / "critic")
    window = max(1, min(10, len(losses) // 4))
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    write_warmstart_manifest(out, **{f"{args.stage}_sft": {
        "steps": args.steps, "batch_size": args.batch_size, "seed": args.seed, "tasks": len(tasks),
        "critic_source": str(critic_dir), "artist_source": str(artist_dir), "train_manifest": str(train_manifest),
        "loss_first": first, "loss_last": last}})
    print(f"sft {args.stage}: loss {first:.4f} → {last:.4f} (mean of first/last {window} steps); wrote {out}")
    return 0
