"""A single-process learner's state in memory: model tensors and optimizer states as flat, copyable values.

Owns the flat layout of the critic learner's ``get_state``/``set_state``: a model state is ``{parameter name:
tensor}``; an optimizer state is flattened to ``{"state.<param index>.<key>": tensor}`` plus a JSON description of its parameter groups
and non-tensor entries. Copies share no storage with the model, so a held state never changes under the next
step. Checkpoints on disk are sharded and written by ``torch.distributed.checkpoint`` (``learner.distributed``);
this module must not decide what goes into a checkpoint directory or when.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

def detach_state(tensors: Mapping[str, torch.Tensor], *, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Detached, contiguous copies on ``device`` that share no storage with each other or with the model.

    A state that aliases live parameters would change under the caller's feet after the next optimizer step, and
    tensors that alias one another (tied embeddings are the usual case) would be loaded back as two.
    """
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        out[name] = tensor.detach().to(device=device, copy=True).contiguous()
    return out


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


