"""The controller's grouping: GRPO groups per photo, DiffusionNFT groups per (photo, critique) normalised per
critique or per photo."""

from __future__ import annotations

import numpy as np
import pytest

from learner.config import CriticLearnerConfig
from rollout.controller import artist_groups, critic_groups, summarise
from rollout.records.types import Conditioning, Critique, CritiqueReward, Edit, EditReward, ParsedCritique, PhotoTask


def _critique(task: str, index: int, length: int = 2) -> Critique:
    return Critique(task_id=task, index=index, text="", prompt_token_ids=[1], completion_token_ids=[2] * length,
                    rollout_logprobs=np.zeros(length, np.float32), finish_reason="stop", parsed=ParsedCritique(),
                    policy_version=0)


def _critique_reward(critique: Critique, total: float) -> CritiqueReward:
    return CritiqueReward(task_id=critique.task_id, critique_index=critique.index, total=total, format=1.0,
                          rank=0.0, suggestion=0.0)


def test_critic_groups_are_per_photo_with_normalised_advantages():
    critiques = [_critique(t, i) for t in ("a", "b") for i in range(3)]
    rewards = [_critique_reward(c, v) for c, v in zip(critiques, [1.0, 0.0, 0.0, 0.5, 0.5, 0.5])]
    groups, zero_fraction = critic_groups(critiques, rewards, CriticLearnerConfig(), max_new_tokens=48)
    assert [g.task_id for g in groups] == ["a", "b"]
    # (r - mean) / (unbiased std + 1e-6): mean 1/3, std 0.57735.
    np.testing.assert_allclose(groups[0].advantages, [1.1547, -0.57735, -0.57735], atol=1e-4)
    np.testing.assert_array_equal(groups[1].advantages, [0.0, 0.0, 0.0])
    assert zero_fraction == 0.5
    kept, _ = critic_groups(critiques, rewards, CriticLearnerConfig(filter_zero_variance_groups=True), 48)
    assert [g.task_id for g in kept] == ["a"]


def _two_photos_two_critiques_two_edits(values):
    tasks = [PhotoTask(task_id=t, input=np.zeros((16, 16, 3), np.uint8), target=np.zeros((16, 16, 3), np.uint8))
             for t in ("a", "b")]
    conditionings = [Conditioning(task_id=t, critique_index=i, hidden=np.zeros((4, 8), np.float32))
                     for t in ("a", "b") for i in range(2)]
    edits, rewards = [], []
    values = iter(values)
    for c in conditionings:
        for k in range(2):
            edits.append(Edit(task_id=c.task_id, critique_index=c.critique_index, edit_index=k, seed=k, image=None,
                              x0=np.zeros((1, 4), np.float32), sigmas=np.linspace(1, 0, 4), artist_version=0,
                              critic_version=0))
            rewards.append(EditReward(task_id=c.task_id, critique_index=c.critique_index, edit_index=k,
                                      total=next(values), compliance=1.0, photometric=0.0, perceptual=0.0))
    return tasks, conditionings, edits, rewards


def test_artist_groups_are_per_photo_and_critique_with_optimality_in_unit_interval():
    tasks, conditionings, edits, rewards = _two_photos_two_critiques_two_edits([0.1, 0.9, 0.5, 0.5, 0.2, 0.4, 0.3, 0.3])
    groups, shares = artist_groups(tasks, conditionings, edits, rewards, group_by="critique",
                                   adv_clip_max=5.0, mask_std_threshold=0.05)
    assert [(g.task_id, g.critique_index) for g in groups] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert all(len(g.edits) == 2 and g.conditioning.critique_index == g.critique_index for g in groups)
    r = np.concatenate([g.optimality for g in groups])
    assert np.all((r >= 0) & (r <= 1))
    # Within a group the better edit gets the higher optimality; a flat group sits at exactly 1/2.
    assert groups[0].optimality[1] > 0.5 > groups[0].optimality[0]
    np.testing.assert_allclose(groups[1].optimality, [0.5, 0.5])
    assert shares["groups/artist/zero_variance_frac"] == pytest.approx(0.5)
    assert shares["groups/artist/low_std_frac"] == pytest.approx(0.5)
    assert [g.valid for g in groups] == [True, False, True, False]  # std ≤ 0.05 masked


def test_solved_artist_groups_are_banned_at_the_mean_threshold():
    """Edit-R1: a group whose edits already score ≥ 0.9 on average is not trained on (it has nothing to learn)."""
    tasks, conditionings, edits, rewards = _two_photos_two_critiques_two_edits([0.95, 0.9, 0.5, 0.7, 0.2, 0.4, 0.3, 0.1])
    groups, shares = artist_groups(tasks, conditionings, edits, rewards, group_by="critique", adv_clip_max=5.0,
                                   mask_std_threshold=0.0, ban_mean_threshold=0.9)
    assert [g.valid for g in groups] == [False, True, True, True]
    assert shares["groups/artist/banned_frac"] == pytest.approx(0.25)
    kept, shares = artist_groups(tasks, conditionings, edits, rewards, group_by="critique", adv_clip_max=5.0,
                                 mask_std_threshold=0.0, ban_mean_threshold=0.0)
    assert all(g.valid for g in kept) and shares["groups/artist/banned_frac"] == 0.0


def test_summarise_ignores_missing_and_non_finite_values():
    assert summarise("x", [1.0, None, float("nan"), 3.0]) == {"x/mean": 2.0, "x/std": 1.0, "x/min": 1.0,
                                                              "x/max": 3.0}
    assert summarise("x", [None]) == {}


def test_auto_grouping_normalises_two_edit_critiques_per_photo():
    """With K = 2 an edit is compared with every edit of its photo, so a critique whose both edits beat the
    photo's other critique gets two optimalities above 1/2 (per critique it would get one above, one below)."""
    tasks, conditionings, edits, rewards = _two_photos_two_critiques_two_edits([0.8, 0.9, 0.1, 0.2, 0.5, 0.5, 0.5, 0.5])
    groups, _ = artist_groups(tasks, conditionings, edits, rewards, group_by="auto", adv_clip_max=5.0,
                              mask_std_threshold=0.0)
    assert np.all(groups[0].optimality > 0.5) and np.all(groups[1].optimality < 0.5)
    per_critique, _ = artist_groups(tasks, conditionings, edits, rewards, group_by="critique", adv_clip_max=5.0,
                                    mask_std_threshold=0.0)
    assert per_critique[0].optimality[0] < 0.5 < per_critique[0].optimality[1]


def test_normalisation_key_resolves_auto_by_edits_per_critique():
    from learner.nft import normalisation_key

    assert normalisation_key("a", 1, "auto", 2) == ("a",)
    assert normalisation_key("a", 1, "auto", 4) == ("a", 1)
    assert normalisation_key("a", 1, "photo", 8) == ("a",)
    assert normalisation_key("a", 1, "critique", 1) == ("a", 1)
    with pytest.raises(ValueError, match="group_by 'prompt'"):
        normalisation_key("a", 1, "prompt", 4)


def test_failed_critique_rewards_are_left_out_of_the_critic_groups():
    """A critique whose reward could not be computed (lost worker, unreadable edit) is not a real zero: it
    leaves its group instead of becoming the group's worst response."""
    critiques = [_critique("a", i) for i in range(3)] + [_critique("b", 0)]
    rewards = [_critique_reward(c, v) for c, v in zip(critiques, [1.0, 0.5, 0.0, 0.7])]
    rewards[2].error = "reward worker lost"
    rewards[3].error = "reward worker lost"
    groups, _ = critic_groups(critiques, rewards, CriticLearnerConfig(), max_new_tokens=48)
    assert [g.task_id for g in groups] == ["a"]  # b had only a failed critique
    assert [c.index for c in groups[0].critiques] == [0, 1]
    assert [r.total for r in groups[0].rewards] == [1.0, 0.5]
    np.testing.assert_allclose(groups[0].advantages, [0.7071, -0.7071], atol=1e-4)


def test_failed_edit_rewards_are_left_out_of_the_artist_groups_and_the_normalisation():
    values = [0.1, 0.9, 0.5, 0.7, 0.2, 0.4, 0.3, 0.6]
    tasks, conditionings, edits, rewards = _two_photos_two_critiques_two_edits(values)
    rewards[3].total, rewards[3].error = 0.0, "LPIPS failed"
    groups, _ = artist_groups(tasks, conditionings, edits, rewards, group_by="critique", adv_clip_max=5.0,
                              mask_std_threshold=0.0)
    trained = [(e.task_id, e.critique_index, e.edit_index) for g in groups for e in g.edits]
    assert ("a", 1, 1) not in trained and len(trained) == 7
    # Same optimalities as if the failed edit had never been made (its 0 would move the global std).
    keep = [i for i in range(8) if i != 3]
    alone, _ = artist_groups(tasks, conditionings, [edits[i] for i in keep], [rewards[i] for i in keep],
                             group_by="critique", adv_clip_max=5.0, mask_std_threshold=0.0)
    np.testing.assert_array_equal(np.concatenate([g.optimality for g in groups]),
                                  np.concatenate([g.optimality for g in alone]))
    assert groups[1].rewards.tolist() == [np.float32(0.5)]


def test_with_photo_grouping_the_photo_decides_the_mask():
    """group_by=photo: a critique whose edits score alike but differ from the photo's mean still carries signal
    (optimality ≠ ½) and is trained; only a photo whose edits all score alike is masked."""
    tasks, conditionings, edits, rewards = _two_photos_two_critiques_two_edits([0.9, 0.9, 0.1, 0.1, 0.5, 0.5, 0.5, 0.5])
    groups, _ = artist_groups(tasks, conditionings, edits, rewards, group_by="photo", adv_clip_max=5.0,
                              mask_std_threshold=0.05)
    assert groups[0].optimality[0] > 0.5 > groups[1].optimality[0]
    assert [g.valid for g in groups] == [True, True, False, False]
