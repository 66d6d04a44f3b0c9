"""``photocrafter make-data``: write a training manifest from good photos, a pair folder, or the embedded set.

Owns the command-line surface of :mod:`rollout.data` only: argument parsing, the summary users read
(accepted, rejected with reasons) and the exit status. Three sources, one per run:

- ``--from DIR``: every photo under DIR is resized to ``--size`` long side and degraded ``--per-photo`` times
  (tone perturbations with known inverse ops, or labelled restoration degradations); PNGs + manifest.jsonl
  are written to ``--out``;
- ``--pairs DIR``: existing pairs laid out as ``DIR/input/NAME.*`` and ``DIR/target/NAME.*`` are matched,
  validated and listed in ``--out``/manifest.jsonl (images are referenced, not copied);
- ``--embedded``: the embedded dataset (crops of scikit-image's colour photos) in ``--out``.
Refusals are printed and listed in ``OUT/rejected.jsonl``. Exit status: 0 when at least one pair was
accepted, 1 when none was, 2 for unusable arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from rollout.config import DataConfig

_DEFAULTS = DataConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from", dest="from_dir", metavar="DIR",
                        help="folder of good photos to synthesise pairs from (searched recursively)")
    source.add_argument("--pairs", metavar="DIR",
                        help="folder of existing pairs: DIR/input/NAME.* and DIR/target/NAME.*")
    source.add_argument("--embedded", action="store_true",
                        help="build the embedded dataset from scikit-image's photos (train/ and eval/ in OUT)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--per-photo", type=int, default=4, metavar="N", help="pairs per photo with --from (4)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (0)")
    parser.add_argument("--size", type=int, default=None, metavar="PX",
                        help=f"long side in pixels (--from: 512, --embedded: {_DEFAULTS.image_size})")
    parser.add_argument("--restoration-fraction", type=float, default=_DEFAULTS.restoration_fraction,
                        metavar="F", help="fraction of restoration (vs retouch) pairs "
                                          f"({_DEFAULTS.restoration_fraction})")
    parser.add_argument("--num-train", type=int, default=_DEFAULTS.num_train, metavar="N",
                        help=f"--embedded: training pairs ({_DEFAULTS.num_train})")
    parser.add_argument("--num-eval", type=int, default=_DEFAULTS.num_eval, metavar="N",
                        help=f"--embedded: held-out pairs ({_DEFAULTS.num_eval})")
    parser.add_argument("--kind", choices=("retouch", "restoration"), default="retouch",
                        help="--pairs: the kind of every pair in the folder (retouch)")
    parser.add_argument("--degradations", default="", metavar="LABELS",
                        help="--pairs: comma-separated degradation labels of every pair, e.g. blur,noise")
    parser.add_argument("--max-image-pixels", type=int, default=_DEFAULTS.max_image_pixels, metavar="N",
                        help=f"refuse larger photos ({_DEFAULTS.max_image_pixels})")
    parser.add_argument("--min-image-side", type=int, default=_DEFAULTS.min_image_side, metavar="PX",
                        help=f"refuse photos with a shorter side ({_DEFAULTS.min_image_side})")


def _argument_errors(args: argparse.Namespace) -> list[str]:
    from rollout.records.types import DEGRADATIONS

    errors = []
    if args.per_photo < 1:
        errors.append(f"--per-photo must be at least 1, got {args.per_photo}")
    if args.size is not None and not 16 <= args.size <= 4096:
        errors.append(f"--size must be between 16 and 4096 pixels, got {args.size}")
    if not 0.0 <= args.restoration_fraction <= 1.0:
        errors.append(f"--restoration-fraction must be in [0, 1], got {args.restoration_fraction}")
    if args.num_train < 1 or args.num_eval < 1:
        errors.append("--num-train and --num-eval must be at least 1")
    if args.min_image_side < 1 or args.max_image_pixels < 1:
        errors.append("--min-image-side and --max-image-pixels must be positive")
    unknown = [d for d in _labels(args.degradations) if d not in DEGRADATIONS]
    if unknown:
        errors.append(f"--degradations: unknown label(s) {', '.join(unknown)}; choose from {', '.join(DEGRADATIONS)}")
    return errors


def _labels(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _print_summary(manifest: Path, tasks, rejected) -> None:
    kinds = Counter(task.kind for task in tasks)
    print(f"wrote {manifest}: {len(tasks)} accepted "
          f"({kinds.get('retouch', 0)} retouch, {kinds.get('restoration', 0)} restoration), "
          f"{len(rejected)} rejected")
    listing = manifest.with_name("rejected.jsonl")
    listing.unlink(missing_ok=True)  # never leave a previous run's refusals beside a new manifest
    if rejected:
        # Kept beside the manifest: with thousands of photos the console lines scroll away.
        listing.write_text("".join(json.dumps({"record_id": r.record_id, "reason": r.reason}) + "\n"
                                   for r in rejected))
        print(f"  reasons listed in {listing}")
    for record in rejected:
        # Image reasons already start with the file name; do not print it twice.
        shown = record.reason if record.reason.startswith(record.record_id) else f"{record.record_id}: {record.reason}"
        print(f"  rejected {shown}")


def run(args: argparse.Namespace) -> int:
    errors = _argument_errors(args)
    if errors:
        for line in errors:
            print(f"photocrafter make-data: {line}", file=sys.stderr)
        return 2
    from rollout.data import manifest as manifest_io
    from rollout.records.images import ImageLimits

    limits = ImageLimits(min_side=args.min_image_side, max_pixels=args.max_image_pixels)
    out = Path(args.out)
    try:
        if args.embedded:
            from rollout.data.synthesis import build_embedded_dataset

            size = args.size or _DEFAULTS.image_size
            train, evaluation = build_embedded_dataset(
                out, image_size=size, num_train=args.num_train, num_eval=args.num_eval,
                restoration_fraction=args.restoration_fraction, seed=args.seed)
            for path in (train, evaluation):
                _print_summary(path, manifest_io.read_manifest(path).tasks, [])
            return 0
        if args.pairs:
            from rollout.data.pairs import tasks_from_pair_folder

            tasks, rejected = tasks_from_pair_folder(args.pairs, limits=limits, kind=args.kind,
                                                     degradations=_labels(args.degradations))
            manifest = manifest_io.write_manifest(out / "manifest.jsonl", tasks)
        else:
            from rollout.data.synthesis import synthesise_from_folder

            report = synthesise_from_folder(args.from_dir, out, per_photo=args.per_photo, size=args.size or 512,
                                            restoration_fraction=args.restoration_fraction, seed=args.seed,
                                            limits=limits)
            manifest, tasks, rejected = report.manifest, report.tasks, report.rejected
    except (FileNotFoundError, FileExistsError) as exc:
        print(f"photocrafter make-data: {exc}", file=sys.stderr)
        return 2
    _print_summary(manifest, tasks, rejected)
    return 0 if tasks else 1
