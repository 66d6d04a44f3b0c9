"""DiffusionNFT math against hand-computed values (ALGORITHMS.md §1.1–§1.4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from learner.nft import (DiffusionNFTLoss, low_variance_groups, num_training_timesteps, old_policy_decay,
                         optimality_probabilities, select_training_timesteps)

# One sample with two latent elements. x0 = 0, x_t = [1, 2], t = ½.
X0 = torch.tensor([[0.0, 0.0]])
XT = torch.tensor([[1.0, 2.0]])
T = torch.tensor([0.5])
V_THETA = torch.tensor([[2.0, 2.0]])
V_OLD = torch.tensor([[2.0, 6.0]])
# β = 1: v⁺ = v_θ → x̂0⁺ = [0, 1], ℓ⁺ = mean(e²)/mean|e| = 0.5/0.5 = 1.
#        v⁻ = 2·v_old − v_θ = [2, 10] → x̂0⁻ = [0, −3], ℓ⁻ = 4.5/1.5 = 3.


def _loss(r: float, beta: float = 1.0, kl_coef: float = 0.0, v_theta=V_THETA, v_ref=None):
    return DiffusionNFTLoss(beta=beta, adv_clip_max=5.0, kl_coef=kl_coef)(
        x0=X0, xt=XT, t=T, v_theta=v_theta, v_old=V_OLD, optimality=torch.tensor([r]), v_ref=v_ref)


@pytest.mark.parametrize("r, expected", [(1.0, 5.0 * 1.0), (0.0, 5.0 * 3.0), (0.5, 5.0 * 2.0)])
def test_loss_positive_and_negative_branches_beta_one(r, expected):
    terms = _loss(r)
    assert terms.positive_loss.tolist() == pytest.approx([1.0])
    assert terms.negative_loss.tolist() == pytest.approx([3.0])
    assert terms.policy_loss.item() == pytest.approx(expected)
    assert terms.loss.item() == pytest.approx(expected)


def test_loss_with_smaller_guidance_strength():
    # β = ½: v⁺ = [2, 4] → x̂0⁺ = x0 exactly (ℓ⁺ = 0, weight floored, no NaN);
    # v⁻ = 1.5·v_old − 0.5·v_θ = [2, 8] → x̂0⁻ = [0, −2], ℓ⁻ = 2/1 = 2.
    # r = ½: 5 · (½·0 + ½·2) / ½ = 10.
    terms = _loss(0.5, beta=0.5)
    assert terms.positive_loss.tolist() == pytest.approx([0.0])
    assert terms.negative_loss.tolist() == pytest.approx([2.0])
    assert terms.policy_loss.item() == pytest.approx(10.0)


def test_kl_term_uses_reference_velocity_and_coefficient():
    # mean (v_θ − v_ref)² = mean([4, 4]) = 4 with v_ref = 0; loss = 5 + 1e-4·4.
    terms = _loss(1.0, kl_coef=1e-4, v_ref=torch.zeros(1, 2))
    assert terms.kl_loss.item() == pytest.approx(4.0)
    assert terms.loss.item() == pytest.approx(5.0 + 4e-4)
    with pytest.raises(ValueError, match="v_ref"):
        _loss(1.0, kl_coef=1e-4)


def test_adaptive_weight_is_held_constant_in_the_gradient():
    # r = 1, β = 1: L = 5·mean(e²)/sg(mean|e|), e = x_t − t·v_θ − x0 = [0, 1], w = ½.
    # dL/dv_θ = 5 · (2e/2) · (−t) / w = [0, −5]. Differentiating through w would give [0, −2.5].
    v_theta = V_THETA.clone().requires_grad_(True)
    _loss(1.0, v_theta=v_theta).loss.backward()
    assert v_theta.grad.tolist() == [pytest.approx([0.0, -5.0])]


def test_positive_branch_pulls_and_negative_branch_pushes_when_theta_equals_old():
    # At θ = old (every update starts there) r = 1 moves v_θ's x0 toward the sample and r = 0 away from it,
    # with exactly opposite gradients.
    grads = {}
    for r in (1.0, 0.0):
        v_theta = V_OLD.clone().requires_grad_(True)
        _loss(r, v_theta=v_theta).loss.backward()
        grads[r] = v_theta.grad
    assert torch.allclose(grads[0.0], -grads[1.0]) and grads[1.0].abs().sum() > 0
    error = lambda v: (XT - T * v - X0).abs().sum().item()  # noqa: E731
    assert error(V_OLD - 0.01 * grads[1.0]) < error(V_OLD) < error(V_OLD - 0.01 * grads[0.0])


def test_loss_averages_samples_of_a_batch():
    x0 = torch.cat([X0, X0]); xt = torch.cat([XT, XT]); t = torch.cat([T, T])
    terms = DiffusionNFTLoss(kl_coef=0.0)(x0=x0, xt=xt, t=t, v_theta=torch.cat([V_THETA, V_THETA]),
                                          v_old=torch.cat([V_OLD, V_OLD]), optimality=torch.tensor([1.0, 0.0]))
    assert terms.policy_loss.item() == pytest.approx((5.0 + 15.0) / 2)


def test_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        DiffusionNFTLoss()(x0=X0, xt=XT, t=T, v_theta=torch.zeros(1, 3), v_old=V_OLD,
                           optimality=torch.tensor([1.0]), v_ref=torch.zeros(1, 2))


def test_optimality_uses_group_mean_and_global_population_std():
    rewards = [1.0, 2.0, 3.0, 10.0, 10.0, 10.0]
    r = optimality_probabilities(rewards, ["a", "a", "a", "b", "b", "b"], adv_clip_max=5.0)
    # Global population std: mean 6, squared deviations 25+16+9+16+16+16 = 98 → σ = √(98/6).
    sigma = math.sqrt(98 / 6) + 1e-4
    expected = [0.5 - 1 / sigma / 10, 0.5, 0.5 + 1 / sigma / 10, 0.5, 0.5, 0.5]
    assert r.dtype == np.float32
    assert r.tolist() == pytest.approx(expected, abs=1e-6)


def test_optimality_clips_at_adv_clip_max():
    # 30 zeros and one 1 in one group: σ = √30/31 ≈ 0.1767, advantage of the 1 ≈ 5.48 → clipped to 5 → r = 1.
    rewards = [0.0] * 30 + [1.0]
    r = optimality_probabilities(rewards, ["g"] * 31, adv_clip_max=5.0)
    assert r[-1] == pytest.approx(1.0)
    assert r[0] == pytest.approx(0.5 - (1 / 31) / (math.sqrt(30) / 31 + 1e-4) / 10, abs=1e-6)
    # A smaller clip saturates both ends.
    r_tight = optimality_probabilities([0.0, 1.0], ["g", "g"], adv_clip_max=0.5)
    assert r_tight.tolist() == pytest.approx([0.0, 1.0])


def test_optimality_rejects_bad_input_clearly():
    with pytest.raises(ValueError, match="group keys"):
        optimality_probabilities([1.0, 2.0], ["a"])
    with pytest.raises(ValueError, match="NaN"):
        optimality_probabilities([1.0, float("nan")], ["a", "a"])


def test_low_variance_groups_are_masked_only_when_asked():
    rewards = [0.5, 0.5, 0.5, 0.1, 0.9, 0.5]
    keys = ["a", "a", "a", "b", "b", "b"]
    assert low_variance_groups(rewards, keys, 0.0).tolist() == [False] * 6
    assert low_variance_groups(rewards, keys, 0.05).tolist() == [True, True, True, False, False, False]


@pytest.mark.parametrize("step, decay_type, expected", [
    (0, 0, 0.0), (500, 0, 0.0),
    (0, 1, 0.0), (100, 1, 0.1), (499, 1, 0.499), (600, 1, 0.5),
    (74, 2, 0.0), (75, 2, 0.0), (100, 2, 0.1875), (1000, 2, 0.999),
])
def test_old_policy_decay_schedules(step, decay_type, expected):
    assert old_policy_decay(step, decay_type) == pytest.approx(expected)


def test_old_policy_decay_rejects_unknown_type():
    with pytest.raises(ValueError, match="decay_type"):
        old_policy_decay(3, 5)


SCHEDULE = np.array([1.0, 0.8625, 0.7028, 0.5151, 0.2913, 0.02, 0.0])


def test_training_timesteps_are_n_minus_one_distinct_schedule_points_per_sample():
    generator = torch.Generator().manual_seed(0)
    chosen = select_training_timesteps(SCHEDULE, 64, 0.99, generator=generator)
    assert chosen.shape == (64, 5) and chosen.dtype == torch.float64
    points = set(SCHEDULE[:-1].tolist())
    for row in chosen.tolist():
        assert len(set(row)) == 5 and set(row) <= points
    # Samples draw their own subsets and orders, and every schedule point gets trained on.
    assert len({tuple(row) for row in chosen.tolist()}) > 1
    assert set(chosen.flatten().tolist()) == points


def test_training_timesteps_edge_cases():
    assert num_training_timesteps(1, 0.99) == 1
    assert num_training_timesteps(10, 0.99) == 9
    assert select_training_timesteps(np.array([1.0, 0.0]), 2, 0.99).tolist() == [[1.0], [1.0]]
    with pytest.raises(ValueError, match="terminal 0"):
        select_training_timesteps(np.array([0.0]), 1, 0.99)
