"""Synthetic training pairs from good photos: tone perturbations with known inverse ops, and restorations.

Owns turning clean photos into (input, target) pairs and writing them as PNG files plus a manifest:
- retouch: 1–3 random :class:`~rollout.records.types.EditOp` (distinct attributes, random directions and levels)
  are applied to the good photo with ``rewards.operators.apply_edit_ops`` — the same rule-based operators the
  suggestion reward uses — to make the input; the target is the good photo and ``known_ops`` are the inverse
  ops (what fixes the input). Each pair is *verified*: every known op must move the measured attribute
  (``rewards.attributes``) from input toward target by more than half its negligible-change tolerance, as
  the compliance reward would require; op sets that fail (clipping, cross-talk, flat crops) are redrawn.
- restoration: labelled blur / noise / haze / low-light from :mod:`rollout.data.degradations`.
Also owns the embedded dataset (crops of the colour photos scikit-image, scikit-learn, matplotlib and mahotas
ship, held-out photos for evaluation, cached by recipe hash) and synthesis from a user's folder of photos. Every pair is a pure function of
``(seed, split, pair index)``, so adding pairs never changes existing ones. It must not load models.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from rewards.attributes import NEGLIGIBLE_CHANGE, attribute_distance, compute_attributes
from rewards.operators import apply_edit_ops, invert_op
from rollout.data.degradations import degrade, random_degradation_labels
from rollout.data.manifest import write_manifest
from rollout.data.pairs import task_id_for
from rollout.records.images import ImageLimits, ImageRejected, is_image_file, read_image, write_png
from rollout.records.types import TONE_ATTRIBUTES, EditOp, PhotoTask, RejectedRecord

DATA_RECIPE_VERSION = 3
"""Bump when synthesis changes what a given seed produces: cached embedded datasets are then rebuilt."""

EMBEDDED_PHOTO_SOURCES: dict[str, str] = {
    "astronaut": "scikit-image", "chelsea": "scikit-image", "coffee": "scikit-image", "rocket": "scikit-image",
    "stereo_motorcycle_left": "scikit-image", "stereo_motorcycle_right": "scikit-image",
    "hubble_deep_field": "scikit-image", "immunohistochemistry": "scikit-image", "retina": "scikit-image",
    "china": "scikit-learn", "flower": "scikit-learn",
    "grace_hopper": "matplotlib",
    "luispedro": "mahotas",
}
"""Every photo the embedded dataset uses and the package whose wheel ships it (no download; licences in
docs/data.md)."""

EMBEDDED_TRAIN_PHOTOS: tuple[str, ...] = (
    "astronaut", "stereo_motorcycle_left", "stereo_motorcycle_right", "china", "immunohistochemistry",
    "hubble_deep_field", "retina")
"""Photos the embedded training split is cropped from (six scenes: a portrait, a street scene in two views, a
temple, a micrograph, a telescope field, a retina scan). The telescope field (mean L* ≈ 7) and the retina scan
(≈ 600 mired) train here because they lie far outside every other photo's exposure and warmth: held out, they
measured only what a prior learned from the other scenes does to photos unlike any of them (docs/data.md)."""

EMBEDDED_EVAL_PHOTOS: tuple[str, ...] = (
    "chelsea", "coffee", "rocket", "flower", "grace_hopper", "luispedro")
"""Held-out photos: six natural scenes the training split never sees (a cat, a cup, a launch, a flower, two
portraits)."""

VERIFY_MARGIN = 0.5
"""A known op counts as real when the attribute moves toward the target by more than this × τ_k."""

MAX_DRAWS_PER_PAIR = 24
"""Crops / op sets tried for one pair before the pair is given up (only for photos with no tonal range)."""

MIN_CROP_CONTRAST = 4.0
"""Crops whose std L* is below this (flat sky, black borders of the retina photo) are redrawn."""


@dataclass(slots=True)
class SynthesisReport:
    """What a synthesis run produced: manifest path, accepted tasks and refusals with reasons."""

    manifest: Path
    tasks: list[PhotoTask] = field(default_factory=list)
    rejected: list[RejectedRecord] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        kinds = {"retouch": 0, "restoration": 0}
        for task in self.tasks:
            kinds[task.kind] += 1
        return {"accepted": len(self.tasks), **kinds, "rejected": len(self.rejected)}


def random_edit_ops(rng: np.random.Generator, max_ops: int = 3) -> tuple[EditOp, ...]:
    """1..``max_ops`` ops on distinct attributes (canonical order), each with a random direction and level."""
    count = int(rng.integers(1, max_ops + 1))
    chosen = set(rng.choice(len(TONE_ATTRIBUTES), size=count, replace=False).tolist())
    return tuple(
        EditOp(attribute=TONE_ATTRIBUTES[i], direction=int(rng.choice([-1, 1])), level=int(rng.integers(1, 4)))
        for i in sorted(chosen))


def retouch_pair_problem(source: np.ndarray, target: np.ndarray, known_ops: Sequence[EditOp]) -> str:
    """Why ``known_ops`` are not a truthful label for the pair ``source → target`` ("" when they are).

    Two checks, both measured with ``rewards.attributes``: every op's attribute must differ between source
    and target in the op's direction by more than ``VERIFY_MARGIN × τ_k`` (what the compliance reward asks
    of an edit), and applying the ops to the source must bring its attributes closer to the target's (what
    the suggestion reward asks of a critique) — so the known ops always earn the suggestion reward.
    """
    before, after = compute_attributes(source), compute_attributes(target)
    for op in known_ops:
        change = after[op.attribute] - before[op.attribute]
        if op.direction * change <= VERIFY_MARGIN * NEGLIGIBLE_CHANGE[op.attribute]:
            return f"{op.attribute} changes by {change:+.2f} from input to target, not in direction {op.direction:+d}"
    fixed = compute_attributes(apply_edit_ops(source, list(known_ops)))
    if attribute_distance(fixed, after) >= attribute_distance(before, after):
        return "applying the known ops to the input does not bring it closer to the target"
    return ""


def make_retouch_pair(good: np.ndarray, rng: np.random.Generator,
                      max_draws: int = MAX_DRAWS_PER_PAIR) -> tuple[np.ndarray, tuple[EditOp, ...]] | None:
    """Degrade ``good`` with random ops → (input, known inverse ops), verified; ``None`` if no draw verifies."""
    for _ in range(max_draws):
        perturbation = random_edit_ops(rng)
        degraded = apply_edit_ops(good, list(perturbation))
        known_ops = tuple(invert_op(op) for op in perturbation)
        if not retouch_pair_problem(degraded, good, known_ops):
            return degraded, known_ops
    return None


def make_restoration_pair(good: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, tuple[str, ...]]:
    """Degrade ``good`` with 1–2 labelled restoration degradations → (input, labels)."""
    labels = random_degradation_labels(rng)
    degraded, _ = degrade(good, labels, rng)
    return degraded, labels


def resize_to_long_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """Shrink (area filter) or enlarge (cubic) so the long side is ``long_side`` px, keeping the aspect."""
    height, width = image.shape[:2]
    scale = long_side / max(height, width)
    if scale == 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1.0 else cv2.INTER_CUBIC)


def random_square_crop(photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A square crop covering 35–100 % of the short side at a random place, resized to ``size`` px."""
    height, width = photo.shape[:2]
    short = min(height, width)
    side = int(round(short * rng.uniform(0.35, 1.0)))
    side = max(min(short, size), side)
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    return resize_to_long_side(np.ascontiguousarray(photo[top:top + side, left:left + side]), size)


def is_restoration_slot(index: int, fraction: float) -> bool:
    """Spread restoration pairs evenly: exactly ⌊n·fraction⌋ of the first n pairs are restoration."""
    return int((index + 1) * fraction) > int(index * fraction)


def _synthesise_pair(photo: np.ndarray, name: str, restoration: bool, rng: np.random.Generator,
                     crop_size: int | None, images_dir: Path, task_id: str,
                     target_path: Path | None) -> PhotoTask | RejectedRecord:
    """One pair from one photo: crop (optional), degrade, write PNGs, return its task (or why it failed)."""
    for _ in range(MAX_DRAWS_PER_PAIR):
        good = random_square_crop(photo, crop_size, rng) if crop_size else photo
        if compute_attributes(good).contrast < MIN_CROP_CONTRAST:
            if crop_size:
                continue
            return RejectedRecord(record_id=task_id, stage="data",
                                  reason=f"{name}: too flat for synthesis (std L* below {MIN_CROP_CONTRAST})")
        if restoration:
            degraded, labels = make_restoration_pair(good, rng)
            known_ops: tuple[EditOp, ...] = ()
        else:
            made = make_retouch_pair(good, rng)
            if made is None:
                if crop_size:
                    continue
                return RejectedRecord(record_id=task_id, stage="data",
                                      reason=f"{name}: no tone perturbation gave a measurable change")
            degraded, known_ops = made
            labels = ()
        input_path = images_dir / f"{task_id}-input.png"
        write_png(input_path, degraded)
        if target_path is None:
            target_path = images_dir / f"{task_id}-target.png"
            write_png(target_path, good)
        return PhotoTask(task_id=task_id, input=str(input_path), target=str(target_path),
                         kind="restoration" if restoration else "retouch", degradations=tuple(labels),
                         known_ops=known_ops, source=name)
    return RejectedRecord(record_id=task_id, stage="data",
                          reason=f"{name}: no crop of this photo has enough tonal range for a verified pair")


def _pair_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """Independent generator per (seed, stream, pair): pair i never depends on how many pairs are made."""
    stream_key = int.from_bytes(hashlib.sha256(stream.encode()).digest()[:4], "little")
    return np.random.default_rng([seed, stream_key, index])


def pair_plan(num_pairs: int, num_photos: int, restoration_fraction: float) -> list[tuple[int, bool]]:
    """(photo index, is restoration) of each pair of a split.

    Restoration slots are spread evenly (:func:`is_restoration_slot`). Retouch and restoration pairs then each
    cycle over the photos on their own count, retouch from the first photo forwards and restoration from the
    last backwards, so every photo (a scene of the held-out split) gets both kinds in the split's proportion
    and the first ``num_photos`` pairs still use every photo once. One count for both would tie the kind to the
    photo whenever the restoration period divides the number of photos: at 1/4 and eight photos every
    restoration pair came from the same two photos, which then had no retouch pair.
    """
    made = {False: 0, True: 0}
    plan = []
    for index in range(num_pairs):
        restoration = is_restoration_slot(index, restoration_fraction)
        position = made[restoration] % num_photos
        made[restoration] += 1
        plan.append((num_photos - 1 - position if restoration else position, restoration))
    return plan


def synthesise_split(photos: Sequence[tuple[str, np.ndarray]], out_dir: Path, *, num_pairs: int, image_size: int,
                     restoration_fraction: float, seed: int, split: str) -> SynthesisReport:
    """``num_pairs`` cropped pairs over ``photos`` as :func:`pair_plan` assigns them; PNGs under
    ``out_dir/images``, manifest last."""
    report = SynthesisReport(manifest=out_dir / "manifest.jsonl")
    for index, (photo_index, restoration) in enumerate(pair_plan(num_pairs, len(photos), restoration_fraction)):
        name, photo = photos[photo_index]
        outcome = _synthesise_pair(
            photo, name, restoration, _pair_rng(seed, split, index),
            image_size, out_dir / "images", f"{split}-{index:05d}-{task_id_for(name)}", None)
        (report.tasks if isinstance(outcome, PhotoTask) else report.rejected).append(outcome)
    write_manifest(report.manifest, report.tasks)
    return report


def synthesise_from_folder(source: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, per_photo: int = 4,
                           size: int = 512, restoration_fraction: float = 0.25, seed: int = 0,
                           limits: ImageLimits = ImageLimits(),
                           progress: Callable[[str], None] | None = None) -> SynthesisReport:
    """Pairs from every photo under ``source`` (recursive): each is resized to ``size`` long side (aspect kept,
    never cropped) and degraded ``per_photo`` times; the good photo is written once and is every pair's target.

    Unreadable or out-of-limit photos are refused with a reason and counted; they never stop the run.
    """
    source, out_dir = Path(source), Path(out_dir)
    if not source.is_dir():
        raise FileNotFoundError(f"--from {source}: not a folder of photos")
    files = sorted(p for p in source.rglob("*") if p.is_file() and is_image_file(p))
    report = SynthesisReport(manifest=out_dir / "manifest.jsonl")
    images_dir = out_dir / "images"
    used: set[str] = set()
    pair_index = 0
    for file in files:
        relative = file.relative_to(source).with_suffix("").as_posix()
        base_id = task_id_for(relative.replace("/", "__"))
        while base_id in used:
            base_id += "_"
        used.add(base_id)
        try:
            photo = read_image(file, limits)
        except ImageRejected as exc:
            report.rejected.append(RejectedRecord(record_id=str(file), stage="data", reason=exc.reason))
            continue
        good = resize_to_long_side(photo, size) if max(photo.shape[:2]) > size else photo
        target_path = images_dir / f"{base_id}-target.png"
        write_png(target_path, good)
        accepted = 0
        for k in range(per_photo):
            outcome = _synthesise_pair(
                good, relative, is_restoration_slot(pair_index, restoration_fraction),
                _pair_rng(seed, relative, k), None, images_dir, f"{base_id}-{k:03d}", target_path)
            accepted += isinstance(outcome, PhotoTask)
            (report.tasks if isinstance(outcome, PhotoTask) else report.rejected).append(outcome)
            pair_index += 1
        if not accepted:
            target_path.unlink()  # no manifest line refers to it
        if progress:
            progress(f"{relative}: {per_photo} pairs")
    write_manifest(report.manifest, report.tasks)
    return report


def embedded_photos(names: Sequence[str]) -> list[tuple[str, np.ndarray]]:
    """The named photos of :data:`EMBEDDED_PHOTO_SOURCES` as uint8 ``[H, W, 3]`` (shipped in the packages'
    wheels: no download)."""
    unknown = [name for name in names if name not in EMBEDDED_PHOTO_SOURCES]
    if unknown:
        raise ValueError(f"unknown embedded photo(s) {unknown}; known: {', '.join(EMBEDDED_PHOTO_SOURCES)}")
    return [(name, np.ascontiguousarray(_load_packaged_photo(name)[..., :3])) for name in names]


def _load_packaged_photo(name: str) -> np.ndarray:
    package = EMBEDDED_PHOTO_SOURCES[name]
    if package == "scikit-learn":
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    if package == "matplotlib":
        from matplotlib import cbook

        return read_image(cbook.get_sample_data(f"{name}.jpg", asfileobj=False))
    if package == "mahotas":
        from importlib.resources import files

        return read_image(files("mahotas") / "demos" / "data" / f"{name}.jpg")
    from skimage import data as skdata

    if name.startswith("stereo_motorcycle_"):
        left, right, _disparity = skdata.stereo_motorcycle()
        return left if name.endswith("_left") else right
    return getattr(skdata, name)()


def embedded_recipe(image_size: int, num_train: int, num_eval: int, restoration_fraction: float,
                    seed: int) -> dict[str, object]:
    from importlib.metadata import version

    packages = sorted(set(EMBEDDED_PHOTO_SOURCES.values()))
    return {"version": DATA_RECIPE_VERSION, "image_size": image_size, "num_train": num_train,
            "num_eval": num_eval, "restoration_fraction": restoration_fraction, "seed": seed,
            "train_photos": list(EMBEDDED_TRAIN_PHOTOS), "eval_photos": list(EMBEDDED_EVAL_PHOTOS),
            "packages": {package: version(package) for package in packages}}


def recipe_hash(recipe: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


RECIPE_FILE = "recipe.json"


def _cached(out_dir: Path, digest: str) -> tuple[Path, Path] | None:
    train, evaluation = out_dir / "train" / "manifest.jsonl", out_dir / "eval" / "manifest.jsonl"
    try:
        stored = json.loads((out_dir / RECIPE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if stored.get("hash") == digest and train.is_file() and evaluation.is_file():
        return train, evaluation
    return None


def build_embedded_dataset(out_dir: str | os.PathLike[str], image_size: int = 64, num_train: int = 48,
                           num_eval: int = 12, restoration_fraction: float = 0.25,
                           seed: int = 0) -> tuple[Path, Path]:
    """Build (or find cached) the embedded dataset; returns ``(train_manifest, eval_manifest)``.

    Training pairs are crops of :data:`EMBEDDED_TRAIN_PHOTOS`, held-out pairs crops of
    :data:`EMBEDDED_EVAL_PHOTOS`. The build happens in a private sibling folder that is renamed into place
    with its recipe file, so a concurrent reader never sees a half-built dataset; a folder holding the same
    recipe hash is reused as is.
    """
    out_dir = Path(out_dir)
    recipe = embedded_recipe(image_size, num_train, num_eval, restoration_fraction, seed)
    digest = recipe_hash(recipe)
    if (found := _cached(out_dir, digest)) is not None:
        return found
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.building-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    for split, names, count in (("train", EMBEDDED_TRAIN_PHOTOS, num_train),
                                ("eval", EMBEDDED_EVAL_PHOTOS, num_eval)):
        report = synthesise_split(embedded_photos(names), staging / split, num_pairs=count,
                                  image_size=image_size, restoration_fraction=restoration_fraction,
                                  seed=seed, split=split)
        if not report.tasks:
            raise RuntimeError(f"embedded {split} split produced no pairs: "
                               + "; ".join(r.reason for r in report.rejected[:3]))
    (staging / RECIPE_FILE).write_text(json.dumps({"hash": digest, "recipe": recipe}, indent=2) + "\n")
    if out_dir.exists():
        if (found := _cached(out_dir, digest)) is not None:  # another process finished first
            shutil.rmtree(staging, ignore_errors=True)
            return found
        if not (out_dir / RECIPE_FILE).is_file() and any(out_dir.iterdir()):
            shutil.rmtree(staging, ignore_errors=True)
            raise FileExistsError(f"{out_dir} exists and is not an embedded dataset folder; choose another path")
        retired = out_dir.parent / f".{out_dir.name}.retired-{os.getpid()}"
        os.replace(out_dir, retired)
        shutil.rmtree(retired, ignore_errors=True)
    try:
        os.replace(staging, out_dir)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if (found := _cached(out_dir, digest)) is not None:
            return found
        raise
    return out_dir / "train" / "manifest.jsonl", out_dir / "eval" / "manifest.jsonl"


def ensure_embedded_dataset(image_size: int, num_train: int, num_eval: int, restoration_fraction: float,
                            seed: int, cache_dir: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
    """The embedded dataset in the project cache, in a folder named by its recipe hash (built once)."""
    from rollout.config import default_cache_dir

    recipe = embedded_recipe(image_size, num_train, num_eval, restoration_fraction, seed)
    root = Path(cache_dir) if cache_dir else default_cache_dir() / "data"
    return build_embedded_dataset(root / f"embedded-{recipe_hash(recipe)}", image_size=image_size,
                                  num_train=num_train, num_eval=num_eval,
                                  restoration_fraction=restoration_fraction, seed=seed)
