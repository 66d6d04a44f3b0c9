"""Optimizer helpers shared by both learners: AdamW construction and a guarded clip-and-step.

Owns how a learner turns gradients into a weight update: which parameters are trained, the AdamW
construction, global gradient-norm clipping, and the rule that a step whose gradients are not finite is
skipped (weights and optimizer moments untouched) and reported instead of poisoning a long run.
It must not know about losses, models or records; learners call it after their backward passes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``module`` that require gradients (LoRA adapters, or every weight in a full fine-tune)."""
    return [p for p in module.parameters() if p.requires_grad]


def build_adamw(
    parameters: Iterable[nn.Parameter],
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over ``parameters`` with decoupled weight decay applied to every tensor.

    Every tensor is decayed, as verl's actor and the DiffusionNFT trainer both do (no bias/norm exclusion),
    so the learners reproduce the reference hyper-parameters (ALGORITHMS.md §1.6, §2.4) as written.
    ``foreach`` is left to torch: it picks the fused multi-tensor path where the device supports it.
    """
    params = list(parameters)
    if not params:
        raise ValueError("build_adamw: no trainable parameters (is every weight frozen, or LoRA missing?)")
    if not lr > 0.0:
        raise ValueError(f"build_adamw: lr must be positive, got {lr}")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """What happened to one optimizer step."""

    grad_norm: float
    """Global L2 norm of the gradients before clipping (inf/NaN when they were not finite)."""
    applied: bool
    """False when the step was skipped because the gradients were not finite."""


def clip_and_step(
    optimizer: torch.optim.Optimizer,
    parameters: Iterable[nn.Parameter],
    *,
    max_norm: float,
) -> StepOutcome:
    """Clip the global gradient norm to ``max_norm`` and step, unless the gradients are not finite.

    The gradients are cleared either way, so the next accumulation starts from zero. A skipped step leaves
    the weights and the optimizer moments exactly as they were: one bad batch (a NaN reward, an overflowing
    log-ratio) costs one step, not the run.
    """
    params = [p for p in parameters if p.grad is not None]
    if not params:
        optimizer.zero_grad(set_to_none=True)
        return StepOutcome(grad_norm=0.0, applied=False)
    # error_if_nonfinite=False: we want the norm back to report it, not an exception mid-run.
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm, error_if_nonfinite=False)
    # On a sharded learner the norm is a DTensor over the ranks' shards: its full value is the global norm.
    total_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    applied = math.isfinite(total_norm)
    if applied:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepOutcome(grad_norm=total_norm, applied=applied)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group (schedules, or a resumed run with a new lr)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
