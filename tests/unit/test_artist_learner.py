"""ArtistLearner on the tiny real artist: one DiffusionNFT step, old-policy publishing, masking, state."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from artist_actor.conditioning import flow_match_sigmas
from artist_actor.model import PROJECT_FILE, QWEN_IMAGE_SCHEDULER_CONFIG
from artist_actor.config import ArtistConfig
from learner.artist_learner import ArtistLearner
from learner.config import ArtistLearnerConfig, LoraConfig
from learner.nft import optimality_probabilities
from rollout.records.types import ArtistGroup, Conditioning, Edit

SIZE = 32  # pixels: an 8 × 8 packed latent grid of 48 features per token
STEPS = 4


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """One intra-op thread: tiny matmuls on a shared 2-core machine are ~10× slower with two spinning threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def artist_dir(embedded_models):
    return embedded_models.artist


@pytest.fixture(scope="module")
def make_groups(artist_dir):
    """Synthetic groups whose H_c width matches the embedded artist (its critic's hidden size)."""
    hidden = json.loads((artist_dir / PROJECT_FILE).read_text())["critic_hidden_size"]
    return lambda **kwargs: _groups(hidden=hidden, **kwargs)


ARTIST = ArtistConfig(resolution=SIZE)


def _config(**overrides) -> ArtistLearnerConfig:
    return ArtistLearnerConfig(lora=LoraConfig(rank=4, alpha=8.0), micro_batch_size=2, **overrides)


def _groups(hidden: int, seed: int = 0, num_groups: int = 2, k: int = 3, rewards=None,
            version: int = 0) -> list[ArtistGroup]:
    """``version``: the artist version the edits claim to come from (the learner's v_old for them)."""
    rng = np.random.default_rng(seed)
    sigmas = flow_match_sigmas(STEPS, (SIZE // 4) ** 2, QWEN_IMAGE_SCHEDULER_CONFIG)
    groups = []
    for g in range(num_groups):
        tokens = int(rng.integers(3, 7))
        conditioning = Conditioning(task_id=f"photo{g}", critique_index=0,
                                    hidden=rng.standard_normal((tokens, hidden)).astype(np.float32))
        edits = [Edit(task_id=f"photo{g}", critique_index=0, edit_index=e, seed=e, image=None,
                      x0=rng.uniform(-1, 1, ((SIZE // 4) ** 2, 48)).astype(np.float32), sigmas=sigmas,
                      artist_version=version, critic_version=0) for e in range(k)]
        group_rewards = (np.asarray(rewards[g], dtype=np.float32) if rewards is not None
                         else rng.uniform(0, 1, k).astype(np.float32))
        groups.append(ArtistGroup(task_id=f"photo{g}", critique_index=0, conditioning=conditioning,
                                  condition_image=rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
                                  edits=edits, rewards=group_rewards, optimality=np.zeros(k, np.float32)))
    return groups


def test_one_update_trains_default_and_soft_updates_the_published_old_adapter(artist_dir, make_groups):
    learner = ArtistLearner(artist_dir, _config(), ARTIST)
    version, before = learner.get_sampler_weights()
    assert version == 0
    assert learner.ready()["sync_bytes"] == sum(t.numel() * 4 for t in before.values())
    groups = make_groups()
    metrics = learner.update(groups)

    assert metrics["learner/nft/skipped"] == 0.0 and metrics["learner/nft/version"] == 1.0 and metrics["learner/nft/step"] == 1.0
    for key in ("learner/nft/loss", "learner/nft/policy_loss", "learner/nft/kl_loss", "learner/nft/grad_norm", "learner/nft/r_mean", "learner/nft/r_std"):
        assert np.isfinite(metrics[key]), key
    assert metrics["learner/nft/grad_norm"] > 0 and metrics["learner/nft/old_decay"] == pytest.approx(0.001)
    # θ = old at the first step: v⁺ = v⁻ = v_old, so ℓ⁺ = ℓ⁻ and the policy loss is 5·mean(ℓ) whatever r is.
    assert metrics["learner/nft/positive_loss"] == pytest.approx(metrics["learner/nft/negative_loss"], rel=1e-5)

    state = learner.get_state()
    version, after = learner.get_sampler_weights()
    assert version == 1
    changed = [name for name in after if not torch.equal(after[name], before[name])]
    assert changed, "the published sampling adapter did not move"
    for name in after:  # old ← 0.001·old + 0.999·θ
        assert torch.allclose(after[name], 0.001 * before[name] + 0.999 * state["trained"][name], atol=1e-7)

    # r was computed here, once, from the raw rewards (per-group mean, global std) and written back.
    rewards = np.concatenate([g.rewards for g in groups])
    expected = optimality_probabilities(rewards, [g.task_id for g in groups for _ in g.edits], 5.0)
    assert np.concatenate([g.optimality for g in groups]) == pytest.approx(expected)


def test_masked_groups_and_bad_rewards_skip_the_step_without_touching_weights(artist_dir, make_groups):
    learner = ArtistLearner(artist_dir, _config(mask_std_threshold=0.05), ARTIST)
    _, before = learner.get_sampler_weights()
    flat = make_groups(rewards=[[0.5, 0.5, 0.5], [0.2, 0.2, 0.21]])
    metrics = learner.update(flat)
    assert metrics["learner/nft/skipped"] == 1.0 and metrics["learner/nft/masked_fraction"] == 1.0
    assert [g.valid for g in flat] == [False, False]
    invalid = make_groups()
    for group in invalid:
        group.valid = False
    assert learner.update(invalid)["learner/nft/skipped"] == 1.0
    broken = make_groups(rewards=[[0.1, float("nan"), 0.3], [0.2, 0.4, 0.6]])
    assert learner.update(broken)["learner/nft/skipped"] == 1.0
    version, after = learner.get_sampler_weights()
    assert version == 0 and learner.step == 0
    assert all(torch.equal(after[name], before[name]) for name in before)


def test_only_the_unmasked_group_is_trained_on(artist_dir, make_groups):
    learner = ArtistLearner(artist_dir, _config(mask_std_threshold=0.05), ARTIST)
    groups = make_groups(rewards=[[0.5, 0.5, 0.5], [0.1, 0.5, 0.9]])
    metrics = learner.update(groups)
    assert metrics["learner/nft/skipped"] == 0.0 and metrics["learner/nft/num_samples"] == 3.0
    assert [g.valid for g in groups] == [False, True]


def test_state_round_trip_resumes_identically(artist_dir, make_groups, tmp_path):
    first = ArtistLearner(artist_dir, _config(), ARTIST, seed=3)
    first.update(make_groups(seed=1))
    resumed = ArtistLearner(artist_dir, _config(), ARTIST, seed=3)
    resumed.set_state(first.get_state())
    from_disk = ArtistLearner(artist_dir, _config(), ARTIST, seed=3)
    from_disk.load_state(first.save_state(tmp_path / "checkpoint"))
    assert (resumed.step, resumed.version) == (from_disk.step, from_disk.version) == (1, 1)
    metrics = [learner.update(make_groups(seed=2, version=1)) for learner in (first, resumed, from_disk)]
    assert metrics[0]["learner/nft/loss"] == pytest.approx(metrics[1]["learner/nft/loss"], rel=1e-6)
    assert metrics[0]["learner/nft/loss"] == pytest.approx(metrics[2]["learner/nft/loss"], rel=1e-6)
    weights_a = first.get_sampler_weights()[1]
    for other in (resumed, from_disk):
        weights_b = other.get_sampler_weights()[1]
        assert all(torch.allclose(weights_a[name], weights_b[name], atol=1e-7) for name in weights_a)
    _, ema = first.get_ema_weights()
    assert set(ema) == set(weights_a)


def test_bad_latents_are_rejected_with_a_clear_message(artist_dir, make_groups):
    learner = ArtistLearner(artist_dir, _config(), ARTIST)
    groups = make_groups(num_groups=1)
    groups[0].edits[0].x0 = np.zeros((4, 16), np.float32)
    with pytest.raises(ValueError, match=r"x0 has shape \(4, 16\)"):
        learner.update(groups)
    # A full-size photo is resized to the artist resolution exactly as the samplers do, then trained on.
    groups = make_groups(num_groups=1)
    groups[0].condition_image = np.zeros((96, 96, 3), np.uint8)
    assert learner.update(groups)["learner/nft/skipped"] == 0.0
    groups = make_groups(num_groups=1, version=1)
    groups[0].condition_image = np.zeros((32, 64, 3), np.uint8)  # another aspect ratio: another latent grid
    with pytest.raises(ValueError, match="condition_image"):
        learner.update(groups)
    groups = make_groups(num_groups=1, version=1)
    groups[0].condition_image = np.zeros((32, 32), np.uint8)
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\]"):
        learner.update(groups)


def test_overlapped_update_uses_the_sampling_adapter_that_made_the_edits(artist_dir, make_groups, monkeypatch):
    """With the samplers one version behind (trainer.max_staleness 1), update k trains on edits of version v while
    the learner has already published v+1: v_old must be version v's adapter, the one the samplers ran."""
    import artist_actor.conditioning as conditioning
    from learner.lora import SAMPLING_ADAPTER, adapter_state

    learner = ArtistLearner(artist_dir, _config(), ARTIST, kept_versions=2)
    _, served_v0 = learner.get_sampler_weights()
    learner.update(make_groups(seed=1, version=0))
    _, published_v1 = learner.get_sampler_weights()
    assert any(not torch.equal(served_v0[n], published_v1[n]) for n in served_v0)

    seen: list[dict[str, torch.Tensor]] = []
    real = conditioning.predict_velocity

    def spy(transformer, *args, **kwargs):
        layer = next(m for m in transformer.modules() if hasattr(m, "active_adapters") and hasattr(m, "lora_A"))
        if layer.active_adapters == [SAMPLING_ADAPTER] and not layer.disable_adapters:
            seen.append(adapter_state(transformer, SAMPLING_ADAPTER))
        return real(transformer, *args, **kwargs)

    import learner.artist_learner as artist_learner

    loads: list[str] = []
    real_load = artist_learner.load_local_adapter_state

    def counting_load(transformer, name, state):
        loads.append(name)
        return real_load(transformer, name, state)

    monkeypatch.setattr(conditioning, "predict_velocity", spy)
    monkeypatch.setattr(artist_learner, "load_local_adapter_state", counting_load)
    learner.update(make_groups(seed=2, version=0))  # edits sampled by version 0, learner at version 1
    assert len(seen) > 2, "the update should make several v_old forwards"
    # Version 0's adapter is swapped in once for all of them and version 1's put back once (at real size an
    # adapter is hundreds of MB: not a copy per forward).
    assert loads == [SAMPLING_ADAPTER, SAMPLING_ADAPTER]
    for state in seen:
        assert all(torch.equal(state[n], served_v0[n]) for n in served_v0)
    # The published chain continues from version 1, untouched by the swap.
    _, published_v2 = learner.get_sampler_weights()
    trained = learner.get_state()["trained"]
    decay = 0.002  # old_policy_decay(2, type 1)
    for n in published_v2:
        assert torch.allclose(published_v2[n], decay * published_v1[n] + (1 - decay) * trained[n], atol=1e-6)
    # An edit from a version the learner no longer keeps is refused, naming the versions it has.
    with pytest.raises(ValueError, match=r"artist version 0.*versions \[1, 2\]"):
        learner.update(make_groups(seed=3, version=0))


def test_every_edit_weighs_the_same_whatever_micro_batch_it_lands_in(artist_dir, make_groups):
    """5 edits in micro-batches of 2 (2 + 2 + 1, ragged) or of 5 give the same step: each edit's loss is weighted
    1 / (edits × timesteps), not 1 / (micro-batches × timesteps)."""
    weights = []
    for micro_batch_size in (2, 5):
        config = ArtistLearnerConfig(lora=LoraConfig(rank=4, alpha=8.0), micro_batch_size=micro_batch_size)
        learner = ArtistLearner(artist_dir, config, ARTIST, seed=4)
        groups = make_groups(seed=5, num_groups=1, k=5)
        metrics = learner.update(groups)
        assert metrics["learner/nft/num_samples"] == 5.0
        weights.append(learner.get_state()["trained"])
    worst = max(float((weights[0][n] - weights[1][n]).abs().max()) for n in weights[0])
    assert worst < 1e-6, worst
