"""``photocrafter init-models``: build (or find cached) the embedded tiny critic and artist (and, with
``--warm-start``, their embedded warm start), and report how well the embedded artist's latent codec preserves
photos.

The report is the bar the embedded codec must clear: encode→decode of held-out photo crops keeps ≥ 30 dB PSNR
and every Lab attribute within the rewards' negligible-change thresholds. The crops come from photos that the
embedded training data does not use.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

PSNR_BAR_DB = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="copy the built models into this directory "
                                                    "(default: only the cache, ~/.cache/photocrafter/models)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed of the tiny models")
    parser.add_argument("--json", action="store_true", help="print the codec report as JSON")
    parser.add_argument("--warm-start", action="store_true",
                        help="also build (or find cached) the embedded warm start that trainer.init_from: "
                             "embedded uses (a few minutes the first time)")


def held_out_crops(size: int = 64) -> list:
    """Crops of scikit-image photos that the embedded training split does not use."""
    import numpy as np

    from rollout.data.synthesis import EMBEDDED_EVAL_PHOTOS, embedded_photos, random_square_crop

    rng = np.random.default_rng(1234)
    crops = []
    for _, photo in embedded_photos(EMBEDDED_EVAL_PHOTOS):
        for _ in range(4):
            crops.append(random_square_crop(photo, size, rng))
    return crops


def codec_report(artist_dir: Path) -> dict:
    from artist_actor.model import load_artist
    from rewards.attributes import NEGLIGIBLE_CHANGE, compute_attributes
    from artist_actor.codec import codec_reconstruction_report

    artist = load_artist(artist_dir, dtype="float32", device="cpu")
    report = codec_reconstruction_report(artist.codec, held_out_crops(),
                                         attributes=lambda image: compute_attributes(image).as_dict())
    thresholds = {k: float(v) for k, v in NEGLIGIBLE_CHANGE.items()}
    report["negligible_change"] = thresholds
    report["meets_bar"] = bool(report["psnr_db_min"] >= PSNR_BAR_DB and all(
        report["max_abs_attribute_delta"][k] < thresholds[k] for k in thresholds))
    return report


def run(args: argparse.Namespace) -> int:
    from rollout.models import ensure_embedded_models

    models = ensure_embedded_models(seed=args.seed)
    print(f"critic: {models.critic}")
    print(f"artist: {models.artist}")
    if args.warm_start:
        from rollout.models import ensure_embedded_warm_start

        print(f"warm start: {ensure_embedded_warm_start()}")
    if args.out:
        out = Path(args.out)
        for name, path in (("critic", models.critic), ("artist", models.artist)):
            shutil.copytree(path, out / name, dirs_exist_ok=True)
        print(f"copied to {out}/critic and {out}/artist")
    report = codec_report(models.artist)
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    else:
        psnr = report["psnr_db_min"]
        shown = "inf (lossless)" if math.isinf(psnr) else f"{psnr:.2f} dB"
        deltas = ", ".join(f"{k} {v:.3f} (< {report['negligible_change'][k]:g})"
                           for k, v in report["max_abs_attribute_delta"].items())
        print(f"embedded codec {report['codec']}: min PSNR over {report['num_images']} held-out crops {shown} "
              f"(bar {PSNR_BAR_DB:g} dB); max |Δ attribute|: {deltas}")
    if not report["meets_bar"]:
        print("the embedded codec does NOT meet the bar: photometric rewards would be meaningless")
        return 1
    return 0
