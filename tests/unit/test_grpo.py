"""GRPO math against hand-computed values (ALGORITHMS.md §2): advantages, clip branches, aggregation, k3 KL."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from learner.grpo import (
    GRPOLoss,
    agg_loss,
    grpo_advantages,
    k3_kl,
    logprob_agreement,
    overlong_penalty,
    token_entropy,
    token_log_probs,
    zero_variance_groups,
)


# ------------------------------------------------------------------------------------------- advantages


def test_advantages_use_unbiased_group_std_and_ignore_other_groups():
    # Group "a" is interleaved with group "b"; a lone response "c" has no baseline.
    rewards = [1.0, 10.0, 0.0, 0.0, 20.0, 1.0, 7.0]
    groups = ["a", "b", "a", "a", "b", "a", "c"]
    adv = grpo_advantages(rewards, groups)
    # a: mean 0.5, unbiased std sqrt(4·0.25/3) = 0.57735 -> ±0.5/0.57735 = ±0.866025
    # b: mean 15, unbiased std sqrt(2·25/1) = 7.0711 -> ∓0.707107
    expected = [0.866025, -0.707107, -0.866025, -0.866025, 0.707107, 0.866025, 0.0]
    assert adv.dtype == np.float32
    np.testing.assert_allclose(adv, expected, atol=1e-5)


def test_advantages_without_std_normalisation_are_only_centred():
    adv = grpo_advantages([1.0, 0.0, 0.0, 1.0], [0, 0, 0, 0], norm_by_std=False)
    np.testing.assert_allclose(adv, [0.5, -0.5, -0.5, 0.5])


def test_equal_rewards_give_zero_advantage_and_are_flagged_for_filtering():
    rewards = [1.0, 1.0, 1.0, 0.0, 1.0, 3.0]
    groups = ["same", "same", "same", "mixed", "mixed", "alone"]
    np.testing.assert_allclose(grpo_advantages(rewards, groups)[:3], 0.0)
    assert zero_variance_groups(rewards, groups) == {"same"}


def test_advantages_reject_bad_input_with_a_clear_message():
    with pytest.raises(ValueError, match="non-finite reward at positions \\[1\\]"):
        grpo_advantages([0.0, float("nan")], ["a", "a"])
    with pytest.raises(ValueError, match="3 rewards but 2 group ids"):
        grpo_advantages([0.0, 1.0, 2.0], ["a", "a"])


def test_overlong_penalty_is_zero_then_linear_then_capped():
    shaped = overlong_penalty([50, 80, 90, 100, 130], max_length=100, buffer=20, penalty=1.0)
    np.testing.assert_allclose(shaped, [0.0, 0.0, -0.5, -1.0, -1.0])
    np.testing.assert_allclose(overlong_penalty([100], max_length=100, buffer=0), [0.0])


# ------------------------------------------------------------------------------------- clip branches


def _one_token_loss(advantage: float, ratio: float, **kwargs):
    loss_fn = GRPOLoss(**kwargs)
    log_probs = torch.tensor([[math.log(ratio)]], requires_grad=True)
    out = loss_fn(log_probs, torch.zeros(1, 1), torch.tensor([advantage]), torch.ones(1, 1))
    out.loss.backward()
    return out, float(log_probs.grad)


@pytest.mark.parametrize(
    "advantage, ratio, expected_loss, expected_grad, clipped, dual",
    [
        # A>0, ratio above 1+ε_high: clipped to -1.2, no gradient
        (1.0, 1.5, -1.2, 0.0, True, False),
        # A>0, ratio below 1: unclipped branch -ρ, gradient -ρ
        (1.0, 0.5, -0.5, -0.5, False, False),
        # A<0, ratio below 1-ε_low: clipped to 0.8 (lower clip), no gradient
        (-1.0, 0.5, 0.8, 0.0, True, False),
        # A<0, ratio 2 (< c=3): unclipped -A·ρ = 2, gradient ρ = 2
        (-1.0, 2.0, 2.0, 2.0, False, False),
        # A<0, ratio 5 (> c=3): dual clip bounds the loss at -A·c = 3, no gradient
        (-1.0, 5.0, 3.0, 0.0, False, True),
    ],
)
def test_policy_loss_clip_branches(advantage, ratio, expected_loss, expected_grad, clipped, dual):
    out, grad = _one_token_loss(advantage, ratio, clip_ratio_low=0.2, clip_ratio_high=0.2, clip_ratio_c=3.0)
    assert out.loss.item() == pytest.approx(expected_loss, abs=1e-6)
    assert grad == pytest.approx(expected_grad, abs=1e-6)
    assert out.clip_fraction == (1.0 if clipped else 0.0)
    assert out.dual_clip_fraction == (1.0 if dual else 0.0)


def test_clip_higher_is_separate_from_clip_lower():
    symmetric, _ = _one_token_loss(1.0, 1.25, clip_ratio_low=0.2, clip_ratio_high=0.2)
    dapo, grad = _one_token_loss(1.0, 1.25, clip_ratio_low=0.2, clip_ratio_high=0.28)
    assert symmetric.loss.item() == pytest.approx(-1.2)
    assert dapo.loss.item() == pytest.approx(-1.25)
    assert grad == pytest.approx(-1.25)
    lower, _ = _one_token_loss(-1.0, 0.75, clip_ratio_low=0.2, clip_ratio_high=0.28)
    assert lower.loss.item() == pytest.approx(0.8)  # -A·(1-0.2)


def test_log_ratio_is_clamped_so_extreme_tokens_stay_finite():
    out, _ = _one_token_loss(1.0, math.exp(80.0))
    assert math.isfinite(out.loss.item()) and out.loss.item() == pytest.approx(-1.2)
    assert out.ratio_mean == pytest.approx(math.exp(20.0), rel=1e-5)


# -------------------------------------------------------------------------------------- aggregation


def _uneven_batch():
    # Sequence 0 has 3 response tokens with A=+1, sequence 1 has 1 token with A=-2; ratio 1 everywhere, so the
    # per-token loss is -A: [-1, -1, -1] and [2].
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    log_probs = torch.full((2, 3), -1.0)
    return log_probs, torch.tensor([1.0, -2.0]), mask


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token-mean", (-3.0 + 2.0) / 4),          # every token weighs the same
        ("seq-mean-token-mean", (-1.0 + 2.0) / 2),  # each sequence weighs the same
        ("seq-mean-token-sum", (-3.0 + 2.0) / 2),
        ("seq-mean-token-sum-norm", (-3.0 + 2.0) / (3 * 2)),  # Dr.GRPO, constant T=3
    ],
)
def test_aggregation_modes_with_uneven_lengths(mode, expected):
    log_probs, adv, mask = _uneven_batch()
    out = GRPOLoss(loss_agg_mode=mode)(log_probs, log_probs.clone(), adv, mask)
    assert out.loss.item() == pytest.approx(expected)
    assert out.num_tokens == 4


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_micro_batches_sum_to_the_mini_batch_loss(mode):
    log_probs, adv, mask = _uneven_batch()
    loss_fn = GRPOLoss(loss_agg_mode=mode)
    whole = float(loss_fn(log_probs, log_probs.clone(), adv, mask).loss)
    parts = sum(
        float(loss_fn(log_probs[i:i + 1], log_probs[i:i + 1].clone(), adv[i:i + 1], mask[i:i + 1],
                      num_tokens=4, num_sequences=2).loss)
        for i in range(2))
    assert parts == pytest.approx(whole)


def test_padding_tokens_do_not_change_the_loss():
    log_probs, adv, mask = _uneven_batch()
    noisy = log_probs.clone()
    noisy[1, 1:] = 50.0  # garbage log-probs under the padding
    out = GRPOLoss()(noisy, log_probs.clone(), adv, mask)
    assert out.loss.item() == pytest.approx(-0.25)


def test_agg_loss_rejects_unknown_modes():
    with pytest.raises(ValueError, match="unknown loss_agg_mode 'mean'"):
        agg_loss(torch.zeros(1, 1), torch.ones(1, 1), "mean")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------- KL, entropy


def test_k3_kl_hand_values_and_clamps():
    # log π = log 0.5, log π_ref = log 0.25 -> Δ = log 0.5; e^Δ − Δ − 1 = 0.5 + ln 2 − 1
    value = k3_kl(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)]))
    assert float(value) == pytest.approx(0.5 + math.log(2.0) - 1.0)
    assert float(k3_kl(torch.tensor([-1.3]), torch.tensor([-1.3]))) == 0.0
    # Δ = −30 is clamped to −20 -> e^-20 + 19 -> clamped to 10; a huge positive Δ also ends at 10.
    assert float(k3_kl(torch.tensor([0.0]), torch.tensor([-30.0]))) == pytest.approx(10.0)
    assert float(k3_kl(torch.tensor([-30.0]), torch.tensor([0.0]))) == pytest.approx(10.0)


def test_kl_and_entropy_terms_enter_the_loss_with_their_coefficients():
    log_probs, adv, mask = _uneven_batch()
    ref = log_probs + math.log(0.5)  # Δ = log 0.5 on every token
    entropy = torch.full((2, 3), 2.0)
    out = GRPOLoss(kl_coef=0.1, entropy_coef=0.01)(log_probs, log_probs.clone(), adv, mask,
                                                   ref_log_probs=ref, entropy=entropy)
    k3 = 0.5 + math.log(2.0) - 1.0
    assert out.kl == pytest.approx(k3)
    assert out.entropy == pytest.approx(2.0)
    assert out.loss.item() == pytest.approx(-0.25 + 0.1 * k3 - 0.01 * 2.0)


def test_kl_gradient_pulls_the_policy_toward_the_reference():
    log_probs = torch.tensor([[-1.0]], requires_grad=True)
    out = GRPOLoss(kl_coef=1.0)(log_probs, log_probs.detach().clone(), torch.zeros(1), torch.ones(1, 1),
                                ref_log_probs=torch.tensor([[-2.0]]))
    out.loss.backward()
    # d/dlogp (e^{ref−logp} − (ref−logp) − 1) = 1 − e^{ref−logp} = 1 − e^{-1} > 0: lowering log π lowers KL.
    assert float(log_probs.grad) == pytest.approx(1.0 - math.exp(-1.0))


def test_token_log_probs_and_entropy_match_their_definitions():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    tokens = torch.randint(0, 11, (2, 5))
    expected = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(token_log_probs(logits, tokens), expected)
    assert float(token_entropy(torch.zeros(1, 1, 4))) == pytest.approx(math.log(4.0))
    probs = torch.softmax(logits, -1)
    torch.testing.assert_close(token_entropy(logits), -(probs * probs.log()).sum(-1))


def test_shape_mismatch_names_the_tensors():
    with pytest.raises(ValueError, match="log_probs \\(2, 3\\), old_log_probs \\(2, 4\\)"):
        GRPOLoss()(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2), torch.ones(2, 3))


# ---------------------------------------------------------------------------------------- agreement


def test_logprob_agreement_is_zero_for_identical_and_measures_a_shift():
    rollout = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    same = logprob_agreement(rollout, rollout.clone(), mask)
    assert same.mean_abs_diff == 0.0 and same.kl == 0.0 and same.num_tokens == 4
    shifted = rollout + torch.tensor([[0.1, 0.1, 0.1], [0.1, 9.0, 9.0]])  # padding differences must not count
    agreement = logprob_agreement(rollout, shifted, mask)
    assert agreement.mean_abs_diff == pytest.approx(0.1, abs=1e-6)
    assert agreement.max_abs_diff == pytest.approx(0.1, abs=1e-6)
    assert agreement.kl == pytest.approx(math.exp(0.1) - 0.1 - 1.0, rel=1e-4)
