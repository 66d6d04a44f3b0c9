"""The shared optimizer and state helpers: guarded clip-and-step, in-memory state round trips, clear load errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from learner.optim import build_adamw, clip_and_step, trainable_parameters
from learner.state import detach_state, flatten_optimizer_state, load_module_state, unflatten_optimizer_state


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))


def test_clip_and_step_reports_the_pre_clip_norm_and_clips():
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    for p in model.parameters():
        p.grad = torch.full_like(p, 2.0)
    count = sum(p.numel() for p in model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    outcome = clip_and_step(optimizer, model.parameters(), max_norm=1.0)
    assert outcome.applied and outcome.grad_norm == pytest.approx(2.0 * count ** 0.5, rel=1e-5)
    step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())])
    assert float(step.norm()) == pytest.approx(1.0, rel=1e-4)  # SGD lr 1: the update is the clipped gradient
    assert all(p.grad is None for p in model.parameters())


def test_non_finite_gradients_skip_the_step_and_leave_weights_and_moments_alone():
    model = _model()
    optimizer = build_adamw(trainable_parameters(model), lr=1e-2, weight_decay=0.1)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    clip_and_step(optimizer, model.parameters(), max_norm=1.0)
    weights = [p.detach().clone() for p in model.parameters()]
    moments = {k: v.clone() for k, v in optimizer.state[next(model.parameters())].items()}
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    next(model.parameters()).grad[0, 0] = float("nan")
    outcome = clip_and_step(optimizer, model.parameters(), max_norm=1.0)
    assert not outcome.applied
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    for key, value in optimizer.state[next(model.parameters())].items():
        assert torch.equal(value, moments[key]), key


def test_build_adamw_refuses_a_model_with_nothing_to_train():
    model = _model().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_adamw(trainable_parameters(model), lr=1e-3, weight_decay=0.0)


def test_model_and_optimizer_round_trip_through_flat_states():
    model = _model()
    optimizer = build_adamw(model.parameters(), lr=1e-2, weight_decay=0.0)
    model(torch.ones(2, 3)).sum().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    tensors, meta = flatten_optimizer_state(optimizer.state_dict())
    model_state = detach_state(model.state_dict())

    restored = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    load_module_state(restored, model_state)
    restored_optimizer = build_adamw(restored.parameters(), lr=1.0, weight_decay=0.5)
    restored_optimizer.load_state_dict(unflatten_optimizer_state(tensors, meta))
    assert restored_optimizer.param_groups[0]["lr"] == 1e-2
    for a, b in zip(model.parameters(), restored.parameters()):
        assert torch.equal(a, b)
    # The same next step from both.
    for m, opt in ((model, optimizer), (restored, restored_optimizer)):
        m(torch.ones(2, 3)).sum().backward()
        opt.step()
    for a, b in zip(model.parameters(), restored.parameters()):
        assert torch.equal(a, b)


def test_held_states_share_no_storage_with_the_model_or_each_other():
    shared = torch.arange(6.0).reshape(2, 3)
    copies = detach_state({"embed.weight": shared, "lm_head.weight": shared})
    assert torch.equal(copies["embed.weight"], copies["lm_head.weight"])
    copies["embed.weight"].add_(1.0)
    assert not torch.equal(copies["embed.weight"], copies["lm_head.weight"]) and shared[0, 0] == 0.0


def test_loading_a_foreign_state_names_the_problem():
    model = _model()
    state = detach_state(model.state_dict())
    with pytest.raises(KeyError, match="the model does not"):
        load_module_state(model, {**state, "extra.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match="lacks 1 tensor"):
        load_module_state(model, {k: v for k, v in state.items() if k != "1.bias"})
    with pytest.raises(ValueError, match="0.weight: state has shape \\(4, 2\\), model has \\(4, 3\\)"):
        load_module_state(model, {**state, "0.weight": torch.zeros(4, 2)})
