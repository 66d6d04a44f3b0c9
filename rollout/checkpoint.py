"""Checkpoint directories: what a checkpoint holds, how it is written atomically and found again.

A checkpoint is ``<run_dir>/checkpoints/step_<N>/`` holding

- ``critic_learner/`` and ``artist_learner/``: each learner's sharded state in ``torch.distributed.checkpoint``
  format (trained tensors or LoRA adapters, the artist's sampling and EMA adapters, AdamW moments), one shard
  file per rank, written by the learner ranks themselves so weights never pass through the controller; beside
  each, ``<learner>.json`` (version, world size) and ``<learner>_rng.{safetensors,json}`` (rank 0's RNG states).
  The state reshards on load: a checkpoint written by N ranks resumes on M;
- ``controller.json``: step, policy versions, data cursor, RNG states, MLflow run id, resolved config;
- ``manifest.json``: written LAST, listing every file with its size, and the SHA-256 of the small ones (the
  learners' shards at real size are tens of GB: the driver does not re-read them). A directory without a valid
  manifest is incomplete (a crash mid-write) and is never loaded.

Shards are written into ``.step_<N>.partial`` and the directory is renamed into place after the manifest,
so readers see either nothing or a complete checkpoint. State trees use safetensors for tensors and JSON for
structure; the learners' sharded directories use torch.distributed.checkpoint, whose ``.metadata`` file is a
pickle: :func:`verify_checkpoint` reads each one with an unpickler that admits only checkpoint-metadata classes
(``learner.checkpoint_reader``) and refuses a checkpoint whose metadata names anything else, before any actor
starts; the learners read them the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
HASHED_FILE_BYTES = 64 * 1024 * 1024
"""Files up to this size get a SHA-256 in the manifest; larger ones (learner shards) are checked by size."""


# ---------------------------------------------------------------------------------------------------- state trees
def _encode(node: Any, path: str, tensors: dict) -> Any:
    import torch

    if isinstance(node, torch.Tensor):
        tensors[path] = node.detach().to("cpu").contiguous().clone()
        return {"__tensor__": path}
    if isinstance(node, np.ndarray):
        tensors[path] = torch.from_numpy(np.ascontiguousarray(node).copy())
        return {"__ndarray__": path}
    if isinstance(node, dict):
        return {"__dict__": [[_encode_key(k), _encode(v, f"{path}/{k}", tensors)] for k, v in node.items()]}
    if isinstance(node, (list, tuple)):
        items = [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(node)]
        return {"__tuple__": items} if isinstance(node, tuple) else items
    if isinstance(node, (np.integer, np.floating, np.bool_)):
        return node.item()
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    raise TypeError(f"cannot checkpoint a {type(node).__name__} at {path or '<root>'}")


def _encode_key(key: Any) -> list:
    if isinstance(key, bool) or not isinstance(key, (int, str)):
        raise TypeError(f"checkpoint dict keys must be str or int, got {key!r}")
    return ["int", key] if isinstance(key, int) else ["str", key]


def _decode(node: Any, tensors: dict) -> Any:
    if isinstance(node, dict):
        if "__tensor__" in node:
            return tensors[node["__tensor__"]]
        if "__ndarray__" in node:
            return tensors[node["__ndarray__"]].numpy()
        if "__tuple__" in node:
            return tuple(_decode(v, tensors) for v in node["__tuple__"])
        if "__dict__" in node:
            return {(int(v) if kind == "int" else v): _decode(item, tensors) for (kind, v), item in node["__dict__"]}
        raise ValueError(f"unknown node in checkpoint structure: {sorted(node)}")
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    return node


def save_state_tree(tree: Any, directory: str | Path, name: str) -> list[str]:
    """Write a nested state (dicts, lists, tensors, arrays, scalars) as ``name.safetensors`` + ``name.json``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict = {}
    structure = _encode(tree, "", tensors)
    save_file(tensors, str(directory / f"{name}.safetensors"))
    (directory / f"{name}.json").write_text(json.dumps({"format": FORMAT_VERSION, "structure": structure}))
    return [f"{name}.safetensors", f"{name}.json"]


def load_state_tree(directory: str | Path, name: str) -> Any:
    """Inverse of :func:`save_state_tree`. Reads only safetensors and JSON."""
    from safetensors.torch import load_file

    directory = Path(directory)
    described = json.loads((directory / f"{name}.json").read_text())
    if described.get("format") != FORMAT_VERSION:
        raise ValueError(f"{directory / name}.json: unsupported checkpoint format {described.get('format')!r}")
    tensors = load_file(str(directory / f"{name}.safetensors"))
    return _decode(described["structure"], tensors)


# ----------------------------------------------------------------------------------------------- directories
@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    path: Path
    step: int
    manifest: dict


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def partial_dir(run_dir: Path, step: int) -> Path:
    """Where shards of the checkpoint at ``step`` are written before it is committed."""
    path = Path(run_dir) / "checkpoints" / f".step_{step:08d}.partial"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def commit_checkpoint(partial: Path, step: int, extra: dict | None = None) -> Path:
    """Write the manifest last, then move the directory into place. Returns the final path."""
    files = sorted(p for p in partial.rglob("*") if p.is_file())
    manifest = {
        "format": FORMAT_VERSION,
        "step": step,
        "files": {str(p.relative_to(partial)): {"bytes": p.stat().st_size,
                                                **({"sha256": _sha256(p)} if p.stat().st_size <= HASHED_FILE_BYTES
                                                   else {})} for p in files},
        **(extra or {}),
    }
    tmp = partial / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, partial / MANIFEST)
    final = partial.parent / f"step_{step:08d}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    return final


def verify_checkpoint(path: Path) -> CheckpointInfo:
    """Check a checkpoint directory against its manifest; raise ``ValueError`` naming what is wrong, and
    ``learner.checkpoint_reader.UnsafeCheckpointError`` for a learner ``.metadata`` that would run code."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ValueError(f"{path}: no {MANIFEST} (incomplete checkpoint)")
    manifest = json.loads(manifest_path.read_text())
    for rel, meta in manifest["files"].items():
        file = path / rel
        if not file.is_file():
            raise ValueError(f"{path}: {rel} listed in the manifest is missing")
        if file.stat().st_size != meta["bytes"]:
            raise ValueError(f"{path}: {rel} has {file.stat().st_size} bytes, manifest says {meta['bytes']}")
    from learner.checkpoint_reader import check_checkpoint_metadata

    check_checkpoint_metadata(path)  # UnsafeCheckpointError (not a ValueError): refused, never skipped silently
    return CheckpointInfo(path=path, step=int(manifest["step"]), manifest=manifest)


def latest_checkpoint(run_dir: Path) -> CheckpointInfo | None:
    """The newest complete checkpoint of a run (incomplete ones are skipped), or None."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    for candidate in sorted(root.glob("step_*"), reverse=True):
        try:
            return verify_checkpoint(candidate)
        except (ValueError, OSError, json.JSONDecodeError):
            continue
    return None


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints (0 keeps all)."""
    if keep <= 0:
        return
    root = Path(run_dir) / "checkpoints"
    for old in sorted(root.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
