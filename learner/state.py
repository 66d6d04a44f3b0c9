"""Learner state ↔ safetensors: model weights and optimizer states, in memory and on disk.

Owns the flat tensor layout both learners use for checkpoints and for handing state across Ray: a model
state is ``{parameter name: tensor}``; an optimizer state is flattened to ``{"state.<param index>.<key>":
tensor}`` plus a JSON description of its parameter groups and non-tensor entries, so it fits a single
safetensors file (tensors only, string metadata). Files are written to a temporary name and renamed, so a
crash never leaves a truncated shard that a resume would load. It must not decide what goes into a
checkpoint directory or when; the checkpoint manifest (rollout) does that.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

_OPTIMIZER_META_KEY = "photocrafter.optimizer"


def detach_state(tensors: Mapping[str, torch.Tensor], *, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Detached, contiguous copies on ``device`` that share no storage with each other or with the model.

    safetensors refuses tensors that alias one another (tied embeddings are the usual case), and a state that
    aliases live parameters would change under the caller's feet after the next optimizer step.
    """
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        out[name] = tensor.detach().to(device=device, copy=True).contiguous()
    return out


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``tensors`` to a safetensors file atomically (temporary file, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(detach_state(tensors), str(tmp), metadata=dict(metadata or {}))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_tensors(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file: its tensors (on ``device``) and its string metadata."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no safetensors file at {path}")
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device=str(device)) as handle:
        metadata = dict(handle.metadata() or {})
        for key in handle.keys():
            tensors[key] = handle.get_tensor(key)
    return tensors, metadata


def module_state(module: nn.Module, *, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """Detached CPU copy of a module's parameters (and buffers unless ``trainable_only``) by name."""
    if trainable_only:
        return detach_state({name: p for name, p in module.named_parameters() if p.requires_grad})
    return detach_state(module.state_dict())


def load_module_state(module: nn.Module, tensors: Mapping[str, torch.Tensor], *, strict: bool = True) -> None:
    """Copy ``tensors`` into ``module`` in place; with ``strict`` every name must match both ways.

    ``strict=False`` is for partial states (e.g. only the trainable LoRA tensors): then every given name must
    still exist in the module, so a typo or a state from another model fails loudly instead of loading nothing.
    """
    own = module.state_dict()
    unknown = sorted(set(tensors) - set(own))
    if unknown:
        raise KeyError(f"state has {len(unknown)} tensor(s) the model does not, e.g. {unknown[:3]}")
    if strict:
        missing = sorted(set(own) - set(tensors))
        if missing:
            raise KeyError(f"state lacks {len(missing)} tensor(s) of the model, e.g. {missing[:3]}")
    with torch.no_grad():
        for name, value in tensors.items():
            target = own[name]
            if target.shape != value.shape:
                raise ValueError(f"{name}: state has shape {tuple(value.shape)}, model has {tuple(target.shape)}")
            target.copy_(value.to(device=target.device, dtype=target.dtype))


def flatten_optimizer_state(state_dict: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """Split ``optimizer.state_dict()`` into flat tensors and a JSON string for everything else."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state_dict["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    meta = json.dumps({"param_groups": state_dict["param_groups"], "scalars": scalars})
    return detach_state(tensors), meta


def unflatten_optimizer_state(tensors: Mapping[str, torch.Tensor], meta: str) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer_state`: a dict ``optimizer.load_state_dict`` accepts."""
    described = json.loads(meta)
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        prefix, index, key = name.split(".", 2)
        if prefix != "state":
            raise KeyError(f"unexpected optimizer tensor name {name!r}")
        state.setdefault(int(index), {})[key] = value
    for index, entry in described["scalars"].items():
        state.setdefault(int(index), {}).update(entry)
    param_groups = described["param_groups"]
    for group in param_groups:
        # JSON turns the (beta1, beta2) tuple into a list; AdamW accepts either, but keep the original type.
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": param_groups}


def save_optimizer(path: str | Path, optimizer: torch.optim.Optimizer) -> Path:
    """Write an optimizer's moments and hyper-parameters to one safetensors file."""
    tensors, meta = flatten_optimizer_state(optimizer.state_dict())
    return save_tensors(path, tensors, {_OPTIMIZER_META_KEY: meta})


def load_optimizer(path: str | Path, optimizer: torch.optim.Optimizer) -> None:
    """Restore an optimizer written by :func:`save_optimizer` (same parameters, same order)."""
    tensors, metadata = load_tensors(path)
    if _OPTIMIZER_META_KEY not in metadata:
        raise ValueError(f"{path} is not an optimizer state written by learner.state.save_optimizer")
    optimizer.load_state_dict(unflatten_optimizer_state(tensors, metadata[_OPTIMIZER_META_KEY]))
