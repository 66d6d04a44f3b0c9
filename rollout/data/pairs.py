"""Loader for a folder of existing input/target pairs (``DIR/input/NAME.*`` + ``DIR/target/NAME.*``).

Owns matching files by name and validating each pair; the result is a list of path-based
:class:`~rollout.records.types.PhotoTask` records (ready for :func:`rollout.data.manifest.write_manifest`) and one
:class:`~rollout.records.types.RejectedRecord` per file or pair that cannot be used. It must not modify or copy the
images, and a bad file never stops the scan.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from rollout.records.images import ImageLimits, ImageRejected, is_image_file, read_pair
from rollout.records.types import Degradation, PhotoTask, RejectedRecord, TaskKind

PAIR_FOLDERS = ("input", "target")


def _by_stem(folder: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(folder.iterdir()):
        if path.is_file() and is_image_file(path):
            found[path.stem].append(path)
    return found


def task_id_for(name: str) -> str:
    """A manifest-safe id from a file stem (spaces and punctuation become ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "photo"


def tasks_from_pair_folder(folder: str | Path, *, limits: ImageLimits = ImageLimits(),
                           kind: TaskKind = "retouch", degradations: tuple[Degradation, ...] = (),
                           validate: bool = True) -> tuple[list[PhotoTask], list[RejectedRecord]]:
    """Match ``folder/input/NAME.*`` with ``folder/target/NAME.*`` and return (tasks, rejections).

    With ``validate`` every pair is decoded once through :func:`rollout.records.images.read_pair`, so unreadable,
    truncated, tiny, huge and mismatched-size pairs are refused here rather than during training.
    Every task gets the same ``kind`` and ``degradations`` (a folder holds one kind of pair).
    """
    folder = Path(folder)
    missing = [name for name in PAIR_FOLDERS if not (folder / name).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{folder} is not a pair folder: missing {', '.join(f'{name}/' for name in missing)} "
            f"(expected {folder}/input/NAME.png and {folder}/target/NAME.png)")
    inputs, targets = _by_stem(folder / "input"), _by_stem(folder / "target")
    tasks: list[PhotoTask] = []
    rejected: list[RejectedRecord] = []
    used_ids: set[str] = set()
    for stem in sorted(set(inputs) | set(targets)):
        record_id = f"{folder}/input/{stem}"
        if stem not in targets:
            rejected.append(RejectedRecord(record_id=str(inputs[stem][0]), stage="data",
                                           reason=f"input {inputs[stem][0].name} has no target/{stem}.*"))
            continue
        if stem not in inputs:
            rejected.append(RejectedRecord(record_id=str(targets[stem][0]), stage="data",
                                           reason=f"target {targets[stem][0].name} has no input/{stem}.*"))
            continue
        if len(inputs[stem]) > 1 or len(targets[stem]) > 1:
            names = ", ".join(p.name for p in inputs[stem] + targets[stem])
            rejected.append(RejectedRecord(record_id=record_id, stage="data",
                                           reason=f"name {stem!r} is ambiguous: several files share it ({names})"))
            continue
        input_path, target_path = inputs[stem][0], targets[stem][0]
        if validate:
            try:
                read_pair(input_path, target_path, limits)
            except ImageRejected as exc:
                rejected.append(RejectedRecord(record_id=record_id, stage="data", reason=exc.reason))
                continue
        task_id = task_id_for(stem)
        if task_id in used_ids:
            rejected.append(RejectedRecord(record_id=record_id, stage="data",
                                           reason=f"name {stem!r} maps to id {task_id!r}, already used"))
            continue
        used_ids.add(task_id)
        tasks.append(PhotoTask(task_id=task_id, input=str(input_path), target=str(target_path), kind=kind,
                               degradations=tuple(degradations), source=str(folder)))
    return tasks, rejected
