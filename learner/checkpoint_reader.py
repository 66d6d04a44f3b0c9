"""Reading a learner's sharded checkpoint without running code from it.

Owns the two places where ``torch.distributed.checkpoint`` would unpickle what a checkpoint directory holds, and
their safe replacements:

- the ``.metadata`` file (which tensor lives in which file, at which offset): torch's ``FileSystemReader`` reads it
  with ``pickle.load``, which calls whatever the pickle names. :class:`SafeFileSystemReader` reads it with
  :class:`MetadataUnpickler`, which admits only the classes a checkpoint's metadata is made of (the dataclasses of
  ``torch.distributed.checkpoint.metadata``, the file-location record, ``torch.Size``, dtypes, layouts, a path) and
  refuses anything else with :class:`UnsafeCheckpointError` before calling it;
- non-tensor values (an optimizer's ``param_groups``: learning rates, betas, flags): torch's default load planner
  reads them with ``torch.load(weights_only=False)``. :class:`SafeLoadPlanner` reads them with
  ``weights_only=True``, torch's own restricted unpickler (containers, numbers, strings, tensors).

Tensor data is already read with ``weights_only=True`` by torch. So a checkpoint directory from elsewhere can hold
wrong numbers, but loading it cannot execute code. It must not know about learners or Ray.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

METADATA_FILE = ".metadata"

_ALLOWED = {
    ("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # maps a layout's name ("torch.strided") to the layout object
    ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "Path"),
    ("collections", "OrderedDict"),
}
"""(module, name) pairs a DCP ``.metadata`` pickle may name: every one builds data, none runs anything else."""


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint file that would run code (or load something no checkpoint holds) when read."""


class MetadataUnpickler(pickle.Unpickler):
    """Unpickles a DCP ``.metadata`` file, admitting only :data:`_ALLOWED` classes and torch dtypes."""

    def __init__(self, handle: Any, source: str):
        super().__init__(handle)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        import torch

        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UnsafeCheckpointError(
            f"{self.source}: refusing to load {module}.{name}; a checkpoint's metadata holds only tensor "
            f"descriptions, so this file was not written by a learner (or was altered) and is not read")


def read_metadata(path: str | Path) -> Any:
    """The ``Metadata`` of a DCP ``.metadata`` file, read with :class:`MetadataUnpickler`."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            return MetadataUnpickler(handle, str(path)).load()
    except UnsafeCheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - any other failure: a truncated or foreign file
        raise UnsafeCheckpointError(f"{path}: not a readable checkpoint metadata file ({type(exc).__name__}: "
                                    f"{exc})") from exc


def check_checkpoint_metadata(directory: str | Path) -> None:
    """Read every DCP ``.metadata`` under ``directory`` safely; raise :class:`UnsafeCheckpointError` for one that
    names anything but checkpoint-metadata classes (nothing it names is called)."""
    for path in sorted(Path(directory).rglob(METADATA_FILE)):
        metadata = read_metadata(path)
        if type(metadata).__name__ != "Metadata":
            raise UnsafeCheckpointError(f"{path}: holds a {type(metadata).__name__}, not checkpoint metadata")


def safe_reader(directory: str | Path) -> Any:
    """A ``FileSystemReader`` for ``directory`` whose metadata is read with :func:`read_metadata`."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeFileSystemReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            rank = kwargs.get("rank")
            metadata = read_metadata(Path(self.path) / (METADATA_FILE if rank is None else f"__{rank}{METADATA_FILE}"))
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeFileSystemReader(str(directory))


def safe_load_planner(*, allow_partial_load: bool = False) -> Any:
    """A ``DefaultLoadPlanner`` that reads non-tensor values with ``torch.load(weights_only=True)``."""
    import torch
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint._traverse import set_element

    class SafeLoadPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            try:
                loaded = torch.load(value, weights_only=True)
            except pickle.UnpicklingError as exc:
                raise UnsafeCheckpointError(f"checkpoint value {read_item.dest_index.fqn!r} is not plain data: "
                                            f"{str(exc).splitlines()[0]}") from exc
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
            else:
                self.state_dict[read_item.dest_index.fqn] = loaded

    return SafeLoadPlanner(allow_partial_load=allow_partial_load)


__all__ = ["MetadataUnpickler", "UnsafeCheckpointError", "check_checkpoint_metadata", "read_metadata",
           "safe_load_planner", "safe_reader"]
