"""ArtistSamplerActor without Ray: records in, versioned Edit records out; weight sync of the sampling LoRA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from artist_actor.actor import ArtistSamplerActor, edit_seed
from artist_actor.model import build_tiny_artist
from rollout.records.types import Conditioning, PhotoTask

HIDDEN = 64
INNER = 128  # the tiny DiT's attention width (4 heads × 32)
OUT = 48  # its output projection's width (2 × 2 patches of 4 × 4 RGB pixels)
CONFIG = {"num_steps": 3, "solver": "dpm2", "resolution": 64, "edits_per_critique": 2, "dtype": "float32"}


@pytest.fixture(scope="module")
def artist_path(tmp_path_factory):
    return str(build_tiny_artist(tmp_path_factory.mktemp("artist"), critic_hidden_size=HIDDEN))


@pytest.fixture(scope="module")
def actor(artist_path):
    return ArtistSamplerActor(0, artist_path, CONFIG, lora_alpha=16.0, num_threads=1)


def records(tokens=(7, 4)):
    rng = np.random.default_rng(0)
    tasks = [PhotoTask(task_id="photo-a", input=rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
                       target=np.zeros((64, 64, 3), np.uint8))]
    conditioning = [Conditioning(task_id="photo-a", critique_index=i, critic_version=3,
                                 hidden=rng.standard_normal((t, HIDDEN)).astype(np.float32))
                    for i, t in enumerate(tokens)]
    return tasks, conditioning


def lora_state(actor_or_rank, scale: float, seed: int = 0):
    """Adapter-free peft names for rank 4 on the tiny DiT's LoRA targets: every attention projection and the
    output projection (128 → 48)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for block in range(2):
        for proj in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"):
            prefix = f"transformer_blocks.{block}.attn.{proj}"
            state[f"{prefix}.lora_A.weight"] = torch.randn(4, INNER, generator=generator) * scale
            state[f"{prefix}.lora_B.weight"] = torch.randn(INNER, 4, generator=generator) * scale
    state["proj_out.lora_A.weight"] = torch.randn(4, INNER, generator=generator) * scale
    state["proj_out.lora_B.weight"] = torch.randn(OUT, 4, generator=generator) * scale
    return state


def test_sample_returns_k_versioned_edits_per_critique(actor):
    tasks, conditioning = records()
    result = actor.sample(tasks, conditioning, k=2, step=5)
    assert not result.rejected
    assert [(e.critique_index, e.edit_index) for e in result.edits] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    edit = result.edits[0]
    assert edit.image.shape == (64, 64, 3) and edit.image.dtype == np.uint8
    assert edit.x0.shape == (256, 48) and edit.sigmas.shape == (4,)
    assert edit.critic_version == 3 and edit.artist_version == actor.policy_version()
    assert edit.seed == edit_seed(0, 5, "photo-a", 0, 0)
    assert len({e.seed for e in result.edits}) == 4
    again = actor.sample(tasks, conditioning, k=2, step=5)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(result.edits, again.edits))


def test_unusable_records_are_rejected_not_fatal(actor):
    tasks, conditioning = records()
    conditioning.append(Conditioning(task_id="photo-a", critique_index=2, hidden=np.zeros((5000, HIDDEN), np.float32)))
    conditioning.append(Conditioning(task_id="missing", critique_index=0, hidden=np.zeros((3, HIDDEN), np.float32)))
    result = actor.sample(tasks, conditioning, k=1)
    assert len(result.edits) == 2
    reasons = {r.record_id: r.reason for r in result.rejected}
    assert "at most" in reasons["photo-a#2"] and "no task 'missing'" in reasons["missing#0"]


def test_set_weights_changes_the_policy_and_bad_state_is_refused(artist_path):
    actor = ArtistSamplerActor(1, artist_path, CONFIG, lora_alpha=8.0)
    tasks, conditioning = records((5,))
    base = actor.sample(tasks, conditioning, k=1).edits[0]
    zero = {name: torch.zeros_like(value) if "lora_B" in name else value
            for name, value in lora_state(actor, 0.5).items()}
    assert actor.set_weights(1, zero) == 34
    same = actor.sample(tasks, conditioning, k=1).edits[0]
    np.testing.assert_allclose(same.x0, base.x0, atol=1e-6)  # B = 0: the adapter adds nothing
    assert same.artist_version == 1
    actor.set_weights(2, {name: value.numpy() for name, value in lora_state(actor, 0.5).items()})
    moved = actor.sample(tasks, conditioning, k=1).edits[0]
    assert moved.artist_version == 2 and np.abs(moved.x0 - base.x0).max() > 1e-3
    with pytest.raises(KeyError, match="missing"):
        actor.set_weights(3, dict(list(lora_state(actor, 0.5).items())[:-1]))
    with pytest.raises(ValueError, match="rank changed"):
        actor.set_weights(3, {k: v[:2] if "lora_A" in k else v[:, :2] for k, v in lora_state(actor, 0.5).items()})
    assert actor.policy_version() == 2
    assert repr(actor) == "ArtistSamplerActor(artist-sampler-1, policy_version=2)"


def test_learner_adapter_state_loads_and_reproduces_the_learner_velocity(artist_path):
    from artist_actor.conditioning import build_conditioning, predict_velocity
    from artist_actor.model import load_artist
    from learner.config import LoraConfig
    from learner.lora import SAMPLING_ADAPTER, active_adapter, adapter_state, attach_nft_adapters

    learner_model = load_artist(artist_path)
    attach_nft_adapters(learner_model.transformer, LoraConfig(rank=4, alpha=8.0), learner_model.lora_targets)
    with torch.no_grad():
        for name, param in learner_model.transformer.named_parameters():
            if ".lora_" in name:
                param.normal_(0, 0.3)
    actor = ArtistSamplerActor(2, artist_path, CONFIG, lora_alpha=8.0)
    actor.set_weights(7, adapter_state(learner_model.transformer, SAMPLING_ADAPTER))
    latents = torch.randn(1, 12, 32, 32)
    cond = build_conditioning([np.ones((4, HIDDEN), np.float32)], latents, hidden_size=HIDDEN)
    x_t = torch.randn(1, 256, 48)
    with torch.no_grad(), active_adapter(learner_model.transformer, SAMPLING_ADAPTER):
        expected = predict_velocity(learner_model.transformer, x_t, 0.5, cond)
    with torch.no_grad():
        served = predict_velocity(actor.model.transformer, x_t, 0.5, cond)
    torch.testing.assert_close(served, expected, atol=1e-5, rtol=1e-4)


def test_bf16_sampler_serves_exactly_the_learners_float32_sampling_adapter(artist_path):
    """On a bf16 DiT both sides keep the adapter in float32, so v_old is bit-identical on sampler and learner."""
    from artist_actor.conditioning import build_conditioning, predict_velocity
    from artist_actor.model import load_artist
    from learner.config import LoraConfig
    from learner.lora import SAMPLING_ADAPTER, active_adapter, adapter_state, attach_nft_adapters, load_adapter_state

    learner_model = load_artist(artist_path, dtype="bfloat16")
    attach_nft_adapters(learner_model.transformer, LoraConfig(rank=4, alpha=8.0), learner_model.lora_targets)
    # Values with more mantissa than bf16 holds: what a soft-updated old adapter looks like.
    sent_values = {name: value * (1 + 1e-3) for name, value in lora_state(None, 0.3, seed=5).items()}
    load_adapter_state(learner_model.transformer, SAMPLING_ADAPTER, sent_values)
    sent = adapter_state(learner_model.transformer, SAMPLING_ADAPTER)
    assert all(value.dtype == torch.float32 for value in sent.values())

    actor = ArtistSamplerActor(4, artist_path, {**CONFIG, "dtype": "bfloat16"}, lora_alpha=8.0)
    actor.set_weights(3, sent)
    served = {name.replace(f".{SAMPLING_ADAPTER}.", ".", 1): param
              for name, param in actor.model.transformer.named_parameters() if ".lora_" in name}
    assert served.keys() == sent.keys()
    assert all(param.dtype == torch.float32 and torch.equal(param, sent[name]) for name, param in served.items())

    latents = torch.randn(1, 12, 32, 32)
    cond = build_conditioning([np.ones((4, HIDDEN), np.float32)], latents, hidden_size=HIDDEN, dtype=torch.bfloat16)
    x_t = torch.randn(1, 256, 48)
    with torch.no_grad(), active_adapter(learner_model.transformer, SAMPLING_ADAPTER):
        expected = predict_velocity(learner_model.transformer, x_t, 0.5, cond)
    with torch.no_grad():
        got = predict_velocity(actor.model.transformer, x_t, 0.5, cond)
    assert got.dtype == expected.dtype == torch.bfloat16
    assert torch.equal(got, expected)


def test_bf16_tensor_hidden_states_are_accepted(actor):
    tasks, conditioning = records((5,))
    as_array = actor.sample(tasks, conditioning, k=1).edits[0]
    conditioning[0].hidden = torch.as_tensor(conditioning[0].hidden).to(torch.bfloat16)
    as_bf16 = actor.sample(tasks, conditioning, k=1).edits[0]
    assert as_bf16.x0.shape == as_array.x0.shape and np.isfinite(as_bf16.x0).all()


def test_embedded_artist_is_conditioned_by_the_embedded_critic_states(embedded_models):
    from critic_actor.model import load_critic

    critic, processor = load_critic(embedded_models.critic, dtype="float32", device="cpu")
    ids = processor.tokenizer(["Increase the exposure slightly.", "Make it much cooler and reduce contrast."],
                              return_tensors="pt", padding=True)
    with torch.no_grad():
        states = critic(**ids, output_hidden_states=True).hidden_states[-1]
    hidden = [states[i][ids["attention_mask"][i].bool()].numpy() for i in range(2)]
    actor = ArtistSamplerActor(3, str(embedded_models.artist), CONFIG)
    assert actor.ready()["hidden_size"] == hidden[0].shape[1]  # joint_attention_dim = critic hidden size
    # The fresh DiT's output projection is zero (its edit is the identity whatever the text); give it one.
    with torch.no_grad():
        actor.model.transformer.proj_out.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    tasks = [PhotoTask(task_id="p", input=image, target=image)]
    conditioning = [Conditioning(task_id="p", critique_index=i, hidden=h) for i, h in enumerate(hidden)]
    edits = actor.sample(tasks, conditioning, k=1).edits
    assert len(edits) == 2
    # Same seed (same task and critique index), other critique text: the text changes the edit.
    swapped = actor.sample(tasks, [Conditioning(task_id="p", critique_index=0, hidden=hidden[1])], k=1).edits[0]
    assert swapped.seed == edits[0].seed
    assert np.abs(swapped.x0 - edits[0].x0).max() > 1e-4


def test_a_released_sampler_refuses_to_sample_until_it_wakes(actor):
    from rollout.cluster.residency import TurnReport

    released = TurnReport.from_dict(actor.release(offload=True))
    # on a CPU the DiT already lives in host memory: only activations and caches go
    assert released.name == "artist-sampler-0" and released.how == "activations and caches"
    assert released.after.rss_bytes > 0
    with pytest.raises(RuntimeError, match="wake it before it samples"):
        actor.sample(*records(), k=1)
    assert TurnReport.from_dict(actor.wake()).action == "wake"
    assert len(actor.sample(*records(), k=1).edits) == 2
