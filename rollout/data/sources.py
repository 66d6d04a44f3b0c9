"""The ``data`` config section turned into manifests and streams: the one entry point for train and evaluate.

Owns the choice between the embedded dataset (built once into the cache, keyed by its recipe hash) and
user manifests, and the size limits every loader applies. It must not parse manifests or synthesise pairs
itself; it only wires :mod:`rollout.data.synthesis`, :mod:`rollout.data.manifest` and
:mod:`rollout.data.stream` together from a :class:`~rollout.config.DataConfig`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from rollout.data.stream import PhotoTaskStream
from rollout.records.images import ImageLimits

if TYPE_CHECKING:
    from rollout.config import DataConfig


def image_limits(config: "DataConfig") -> ImageLimits:
    """``data.min_image_side`` / ``data.max_image_pixels`` as the limits every loader enforces."""
    return ImageLimits(min_side=config.min_image_side, max_pixels=config.max_image_pixels)


def manifest_paths(config: "DataConfig",
                   cache_dir: str | os.PathLike[str] | None = None) -> tuple[Path, Path | None]:
    """(train manifest, eval manifest or ``None``) for ``config``; builds the embedded dataset when needed.

    ``source: embedded`` uses the embedded training split and, unless ``data.eval_manifest`` names another
    file, its held-out split. ``source: manifest`` uses ``data.train_manifest`` and ``data.eval_manifest``
    (``None`` when empty).
    """
    if config.source == "embedded":
        from rollout.data.synthesis import ensure_embedded_dataset

        train, held_out = ensure_embedded_dataset(
            image_size=config.image_size, num_train=config.num_train, num_eval=config.num_eval,
            restoration_fraction=config.restoration_fraction, seed=config.seed, cache_dir=cache_dir)
        return train, Path(config.eval_manifest) if config.eval_manifest else held_out
    train = Path(config.train_manifest)
    if not train.is_file():
        raise FileNotFoundError(f"data.train_manifest {train}: no such file (make one with photocrafter make-data)")
    return train, Path(config.eval_manifest) if config.eval_manifest else None


def training_stream(config: "DataConfig", seed: int,
                    cache_dir: str | os.PathLike[str] | None = None) -> PhotoTaskStream:
    """The shuffled, resumable stream of training tasks described by ``config``; ``seed`` orders it."""
    train, _ = manifest_paths(config, cache_dir)
    return PhotoTaskStream.from_manifest(train, seed=seed, shuffle=True, limits=image_limits(config))


def evaluation_stream(config: "DataConfig", seed: int,
                      cache_dir: str | os.PathLike[str] | None = None) -> PhotoTaskStream:
    """The held-out tasks in manifest order (no shuffle), for ``evaluate``."""
    _, held_out = manifest_paths(config, cache_dir)
    if held_out is None:
        raise FileNotFoundError("no held-out data: set data.eval_manifest (source is 'manifest')")
    return PhotoTaskStream.from_manifest(held_out, seed=seed, shuffle=False, limits=image_limits(config))
