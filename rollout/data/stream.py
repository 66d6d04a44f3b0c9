"""The training loop's photo source: an endless, resumable, seeded shuffle over a manifest's tasks.

Owns the data cursor. :class:`PhotoTaskStream` walks the tasks of one manifest in a permutation drawn from
``(seed, epoch)``, crosses epoch boundaries inside a batch when it has to (a batch is never short and the loop
never sees an empty epoch), loads each task's images as uint8 arrays through :mod:`rollout.records.images`, and
skips records whose images are refused — each is counted once as a :class:`~rollout.records.types.RejectedRecord`
and never retried. ``next_records`` / ``refuse`` serve loops that read images elsewhere (in Ray tasks) so
pixels never pass through the driver. ``state_dict()`` / ``load_state_dict()`` carry ``(epoch, position)`` so
a checkpoint resumes the exact same sequence. It must not synthesise data or know about models.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rollout.data.manifest import read_manifest
from rollout.records.images import ImageLimits, ImageRejected, check_array, check_same_size, read_image
from rollout.records.types import PhotoTask, RejectedRecord


class NoUsableRecordsError(RuntimeError):
    """Every record of the stream was refused, so no batch can ever be produced."""


def load_task_images(task: PhotoTask, limits: ImageLimits) -> PhotoTask:
    """A copy of ``task`` whose ``input`` and ``target`` are uint8 ``[H, W, 3]`` arrays.

    Path strings are read with :func:`rollout.records.images.read_image`; arrays are checked and converted with the
    same rules. Raises :class:`~rollout.records.images.ImageRejected` naming the side (input/target) that failed.
    """
    images = {}
    for side in ("input", "target"):
        handle = getattr(task, side)
        try:
            if isinstance(handle, np.ndarray):
                images[side] = check_array(handle, limits)
            elif isinstance(handle, (str, os.PathLike)):
                images[side] = read_image(handle, limits)
            else:
                raise ImageRejected(f"is a {type(handle).__name__}; expected a path or a numpy array")
        except ImageRejected as exc:
            raise ImageRejected(f"{side} {exc.reason}") from None
    check_same_size(images["input"], images["target"])
    return replace(task, input=images["input"], target=images["target"])


def readable_tasks(tasks: Sequence[PhotoTask], limits: ImageLimits) -> tuple[list[PhotoTask], list[RejectedRecord]]:
    """Each task with its images loaded (:func:`load_task_images`), or a :class:`RejectedRecord` naming the file
    and what is wrong with it; for commands that read a whole manifest up front (``evaluate``, ``sft``)."""
    loaded, rejected = [], []
    for task in tasks:
        try:
            loaded.append(load_task_images(task, limits))
        except ImageRejected as exc:
            rejected.append(RejectedRecord(record_id=task.task_id, stage="data", reason=exc.reason))
    return loaded, rejected


class PhotoTaskStream:
    """Seeded, endless, resumable batches of :class:`PhotoTask` with images loaded as arrays."""

    def __init__(self, tasks: Sequence[PhotoTask], *, seed: int = 0, shuffle: bool = True,
                 limits: ImageLimits = ImageLimits(), rejected: Sequence[RejectedRecord] = ()):
        if not tasks:
            raise NoUsableRecordsError("the stream has no records (empty manifest or every line was malformed)")
        self.tasks = list(tasks)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.limits = limits
        self.rejected: list[RejectedRecord] = list(rejected)
        """Every record refused so far (manifest lines given at construction, then images as they fail)."""
        self._refused_indices: set[int] = set()
        self._index_of = {task.task_id: index for index, task in enumerate(self.tasks)}
        self._epoch = 0
        self._position = 0
        self._order = self._permutation(0)

    @classmethod
    def from_manifest(cls, path: str | os.PathLike[str], *, seed: int = 0, shuffle: bool = True,
                      limits: ImageLimits = ImageLimits()) -> "PhotoTaskStream":
        """A stream over a JSONL manifest; malformed lines start out in :attr:`rejected`."""
        contents = read_manifest(path)
        if not contents.tasks:
            reasons = "; ".join(r.reason for r in contents.rejected[:3])
            raise NoUsableRecordsError(f"manifest {Path(path)} has no valid records"
                                       + (f" ({len(contents.rejected)} rejected: {reasons})" if reasons else ""))
        return cls(contents.tasks, seed=seed, shuffle=shuffle, limits=limits, rejected=contents.rejected)

    def __len__(self) -> int:
        """Records per epoch (refused records included until they are found to be bad)."""
        return len(self.tasks)

    @property
    def epoch(self) -> int:
        return self._epoch

    def _permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.tasks))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.tasks))

    def _advance(self) -> int:
        """The index of the next task in the walk, moving the cursor (and the epoch at its end)."""
        if self._position >= len(self._order):
            self._epoch += 1
            self._position = 0
            self._order = self._permutation(self._epoch)
        index = int(self._order[self._position])
        self._position += 1
        return index

    def _next_usable_index(self) -> int:
        """Advance to the next record not refused yet; raise once every record has been refused."""
        while True:
            if len(self._refused_indices) == len(self.tasks):
                reasons = "; ".join(r.reason for r in self.rejected[-3:])
                raise NoUsableRecordsError(
                    f"all {len(self.tasks)} records were refused, so no batch can be made (last reasons: {reasons})")
            index = self._advance()
            if index not in self._refused_indices:
                return index

    def _refuse_index(self, index: int, reason: str) -> None:
        if index not in self._refused_indices:
            self._refused_indices.add(index)
            self.rejected.append(RejectedRecord(record_id=self.tasks[index].task_id, stage="data", reason=reason))

    def next_batch(self, batch_size: int) -> list[PhotoTask]:
        """The next ``batch_size`` usable tasks with images loaded, crossing epochs as needed.

        Raises :class:`NoUsableRecordsError` once every record has been refused (never loops forever).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        batch: list[PhotoTask] = []
        while len(batch) < batch_size:
            index = self._next_usable_index()
            try:
                batch.append(load_task_images(self.tasks[index], self.limits))
            except ImageRejected as exc:
                self._refuse_index(index, exc.reason)
        return batch

    def next_records(self, count: int) -> list[PhotoTask]:
        """The next ``count`` tasks not yet refused, images NOT loaded (handles as in the manifest).

        For loaders that read images elsewhere (the training loop reads them in Ray tasks with
        :func:`load_task_images`, so the driver never holds them); report records that fail there with
        :meth:`refuse`. Walks the same cursor as :meth:`next_batch`.
        """
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        return [self.tasks[self._next_usable_index()] for _ in range(count)]

    def refuse(self, task: PhotoTask, reason: str) -> None:
        """Mark a task from :meth:`next_records` as unusable: it is skipped from now on and counted once."""
        index = self._index_of.get(task.task_id)
        if index is None:
            raise KeyError(f"task {task.task_id!r} is not a record of this stream")
        self._refuse_index(index, reason)

    def state_dict(self) -> dict[str, Any]:
        """The cursor as plain JSON-able values (stored in checkpoints)."""
        return {"epoch": self._epoch, "position": self._position, "seed": self.seed,
                "num_records": len(self.tasks), "shuffle": self.shuffle}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at a cursor from :meth:`state_dict`; refuses a cursor that belongs to different data."""
        expected = {"seed": self.seed, "num_records": len(self.tasks), "shuffle": self.shuffle}
        for key, value in expected.items():
            if state.get(key) != value:
                raise ValueError(
                    f"data cursor does not match this stream: {key} is {state.get(key)!r} in the checkpoint "
                    f"but {value!r} now (did the manifest or data seed change?)")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= len(self.tasks):
            raise ValueError(f"data cursor out of range: epoch {epoch}, position {position} of {len(self.tasks)}")
        self._epoch, self._position = epoch, position
        self._order = self._permutation(epoch)
