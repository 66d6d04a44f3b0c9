"""Photo data: manifests, synthetic pairs, folder loaders and the training loop's task stream.

Modules, one role each:
- :mod:`rollout.data.manifest` — the JSONL manifest format (write, read, per-line rejections);
- :mod:`rollout.data.pairs` — a folder of existing input/target pairs → tasks;
- :mod:`rollout.data.degradations` — labelled restoration degradations (blur, noise, haze, low light);
- :mod:`rollout.data.synthesis` — synthetic retouch/restoration pairs, the embedded dataset, ``make-data``;
- :mod:`rollout.data.stream` — :class:`PhotoTaskStream`, the seeded, resumable batch source;
- :mod:`rollout.data.sources` — the ``data`` config section → manifests and streams for train/evaluate.
Images are read and validated only through :mod:`rollout.records.images`. See docs/data.md.

This package only re-exports; importing it does not import the synthesis code (and through it the reward
operators) until one of those names is used.
"""

from __future__ import annotations

from typing import Any

from rollout.data.manifest import ManifestContents, read_manifest, write_manifest
from rollout.data.pairs import tasks_from_pair_folder
from rollout.data.sources import evaluation_stream, image_limits, manifest_paths, training_stream
from rollout.data.stream import NoUsableRecordsError, PhotoTaskStream, load_task_images

_SYNTHESIS_NAMES = ("build_embedded_dataset", "ensure_embedded_dataset", "synthesise_from_folder",
                    "SynthesisReport", "make_retouch_pair", "make_restoration_pair")

__all__ = ["ManifestContents", "NoUsableRecordsError", "PhotoTaskStream", "evaluation_stream", "image_limits",
           "load_task_images", "manifest_paths", "read_manifest", "tasks_from_pair_folder", "training_stream",
           "write_manifest", *_SYNTHESIS_NAMES]


def __getattr__(name: str) -> Any:
    if name in _SYNTHESIS_NAMES:
        from rollout.data import synthesis

        return getattr(synthesis, name)
    raise AttributeError(f"module 'rollout.data' has no attribute {name!r}")
