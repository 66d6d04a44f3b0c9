"""Exponential moving average of the trained adapter, for evaluation and checkpoints only.

Owns the EMA copy of ALGORITHMS.md §1.1: after each optimizer step s, ema ← d·ema + (1 − d)·θ with
d = min((1 + s)/(10 + s), cap), so early steps follow θ closely and later ones average over ~10 steps.
It must not feed the samplers during training (they run the "old" adapter) nor take part in the loss.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def ema_decay(step: int, cap: float = 0.9) -> float:
    """d = min((1 + step)/(10 + step), cap) for the update after optimizer step ``step``."""
    if step < 0:
        raise ValueError(f"optimizer step count must be ≥ 0, got {step}")
    return min((1.0 + step) / (10.0 + step), cap)


class AdapterEMA:
    """A float32 shadow copy of named tensors that tracks them with :func:`ema_decay`.

    The shadow lives where the tracked tensors live and is laid out like them: on a sharded learner each rank
    averages only its own shards (no communication), and a checkpoint saves the shards like any parameter.
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor], cap: float = 0.9):
        if not 0.0 <= cap < 1.0:
            raise ValueError(f"EMA decay cap must be in [0, 1), got {cap}")
        self.cap = cap
        self.shadow = {name: value.detach().to(torch.float32, copy=True) for name, value in tensors.items()}

    @torch.no_grad()
    def step(self, tensors: Mapping[str, torch.Tensor], step: int) -> float:
        """Fold the current ``tensors`` in after optimizer step ``step``; return the decay used."""
        if set(tensors) != set(self.shadow):
            raise KeyError("EMA update got a different set of tensors than it was created with")
        decay = ema_decay(step, self.cap)
        for name, value in tensors.items():
            self.shadow[name].mul_(decay).add_(value.detach().to(torch.float32), alpha=1.0 - decay)
        return decay

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Copies of the averaged tensors (adapter-free names, float32), laid out like the tracked tensors."""
        return {name: value.clone() for name, value in self.shadow.items()}

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Replace the averaged tensors with whole (or identically sharded) tensors of the same names/shapes."""
        from learner.distributed import local_tensor, shard_like

        if set(state) != set(self.shadow):
            missing, unknown = set(self.shadow) - set(state), set(state) - set(self.shadow)
            raise KeyError(f"EMA state mismatch: {len(missing)} missing, {len(unknown)} unknown tensors")
        for name, value in state.items():
            if tuple(value.shape) != tuple(self.shadow[name].shape):
                raise ValueError(f"EMA {name}: shape {tuple(value.shape)} != {tuple(self.shadow[name].shape)}")
            target = self.shadow[name]
            local_tensor(target).copy_(local_tensor(shard_like(value, target)))
