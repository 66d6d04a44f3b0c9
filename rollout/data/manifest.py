"""The JSONL photo-pair manifest: one :class:`~rollout.records.types.PhotoTask` per line, written and read here.

Format (docs/data.md): each line is a JSON object with ``id`` (unique string), ``input`` and ``target`` (paths
relative to the manifest's folder, or absolute), ``kind`` (``retouch`` | ``restoration``), ``degradations``
(list of labels from :data:`rollout.records.types.DEGRADATIONS`) and ``known_ops`` (list of
``{"attribute", "direction", "level"}``), plus an optional ``source`` string. Blank lines and lines starting
with ``#`` are ignored.

This module owns parsing and validation of that text only. It never opens the images (that is
:mod:`rollout.records.images`' job, done when a task is loaded), and a malformed line never raises: it becomes a
:class:`~rollout.records.types.RejectedRecord` that names the line number and what was wrong.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, get_args

from rollout.records.types import DEGRADATIONS, TONE_ATTRIBUTES, EditOp, PhotoTask, RejectedRecord, TaskKind

MANIFEST_KEYS = ("id", "input", "target", "kind", "degradations", "known_ops", "source")
TASK_KINDS: tuple[str, ...] = get_args(TaskKind)


@dataclass(slots=True)
class ManifestContents:
    """What a manifest yielded: the tasks that parsed and one rejection per line that did not."""

    path: Path
    tasks: list[PhotoTask] = field(default_factory=list)
    rejected: list[RejectedRecord] = field(default_factory=list)


class ManifestLineError(ValueError):
    """One manifest line that does not describe a valid task."""


def op_to_json(op: EditOp) -> dict[str, Any]:
    return {"attribute": op.attribute, "direction": op.direction, "level": op.level}


def op_from_json(value: Any) -> EditOp:
    """``{"attribute": "exposure", "direction": 1, "level": 2}`` → :class:`EditOp`, or a clear error."""
    if not isinstance(value, dict) or set(value) != {"attribute", "direction", "level"}:
        raise ManifestLineError(
            f"known_ops entry {value!r} must be an object with exactly attribute, direction and level")
    attribute, direction, level = value["attribute"], value["direction"], value["level"]
    if attribute not in TONE_ATTRIBUTES:
        raise ManifestLineError(f"known_ops attribute {attribute!r} is not one of {', '.join(TONE_ATTRIBUTES)}")
    if direction not in (-1, 1) or isinstance(direction, bool):
        raise ManifestLineError(f"known_ops direction {direction!r} must be -1 or 1")
    if level not in (1, 2, 3) or isinstance(level, bool):
        raise ManifestLineError(f"known_ops level {level!r} must be 1, 2 or 3")
    return EditOp(attribute=attribute, direction=direction, level=level)


def _path_for_manifest(image: Any, folder: Path) -> str:
    """Store a path relative to the manifest's folder when it lies inside it (so the folder can move)."""
    if not isinstance(image, (str, os.PathLike)):
        raise TypeError(f"manifest tasks need image paths, got {type(image).__name__}")
    path = Path(image)
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return str(path)


def task_to_json(task: PhotoTask, folder: Path) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": task.task_id,
        "input": _path_for_manifest(task.input, folder),
        "target": _path_for_manifest(task.target, folder),
        "kind": task.kind,
        "degradations": list(task.degradations),
        "known_ops": [op_to_json(op) for op in task.known_ops],
    }
    if task.source:
        record["source"] = task.source
    return record


def write_manifest(path: str | os.PathLike[str], tasks: Iterable[PhotoTask]) -> Path:
    """Write ``tasks`` (with path-string images) as JSONL, atomically; returns the manifest path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = path.parent
    seen: set[str] = set()
    lines = []
    for task in tasks:
        if task.task_id in seen:
            raise ValueError(f"duplicate task id {task.task_id!r}; manifest ids must be unique")
        seen.add(task.task_id)
        lines.append(json.dumps(task_to_json(task, folder), sort_keys=False))
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text("".join(line + "\n" for line in lines))
    os.replace(partial, path)
    return path


def _string(record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ManifestLineError(f"{key!r} must be a non-empty string, got {value!r}")
    return value


def task_from_json(record: Any, folder: Path, source: str) -> PhotoTask:
    """Validate one decoded manifest object and build its task (image paths resolved against ``folder``)."""
    if not isinstance(record, dict):
        raise ManifestLineError(f"expected a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - set(MANIFEST_KEYS))
    if unknown:
        raise ManifestLineError(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(MANIFEST_KEYS)}")
    task_id = _string(record, "id")
    images = {}
    for key in ("input", "target"):
        path = Path(_string(record, key))
        images[key] = str(path if path.is_absolute() else folder / path)
    kind = record.get("kind", "retouch")
    if kind not in TASK_KINDS:
        raise ManifestLineError(f"kind {kind!r} must be one of {', '.join(TASK_KINDS)}")
    degradations = record.get("degradations", [])
    if not isinstance(degradations, list):
        raise ManifestLineError(f"degradations must be a list, got {degradations!r}")
    for label in degradations:
        if label not in DEGRADATIONS:
            raise ManifestLineError(f"degradation {label!r} is not one of {', '.join(DEGRADATIONS)}")
    known_ops = record.get("known_ops", [])
    if not isinstance(known_ops, list):
        raise ManifestLineError(f"known_ops must be a list, got {known_ops!r}")
    task_source = record.get("source", source)
    if not isinstance(task_source, str):
        raise ManifestLineError(f"source must be a string, got {task_source!r}")
    return PhotoTask(
        task_id=task_id, input=images["input"], target=images["target"], kind=kind,
        degradations=tuple(degradations), known_ops=tuple(op_from_json(op) for op in known_ops),
        source=task_source)


def read_manifest(path: str | os.PathLike[str]) -> ManifestContents:
    """Parse a JSONL manifest. Raises only when the file itself cannot be read; bad lines are rejected."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise OSError(f"cannot read manifest {path}: {exc}") from None
    contents = ManifestContents(path=path)
    seen: set[str] = set()
    folder = path.parent
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{path}:{number}"
        try:
            try:
                record = json.loads(stripped)
            except json.JSONDecodeError as exc:
                raise ManifestLineError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
            task = task_from_json(record, folder, source=str(path))
            if task.task_id in seen:
                raise ManifestLineError(f"duplicate id {task.task_id!r} (ids must be unique)")
        except ManifestLineError as exc:
            contents.rejected.append(RejectedRecord(record_id=where, stage="data", reason=f"line {number}: {exc}"))
            continue
        seen.add(task.task_id)
        contents.tasks.append(task)
    return contents
