"""The explicit ODE sampler: solver accuracy, per-seed determinism, batching invariance, shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from artist_actor.conditioning import flow_match_sigmas
from artist_actor.model import QWEN_IMAGE_SCHEDULER_CONFIG, build_tiny_artist, load_artist
from artist_actor.sampler import EditRequest, FlowMatchSampler, artist_size, solve_flow_ode

HIDDEN = 64


def gaussian_velocity(mean: torch.Tensor, std: float):
    """Exact flow-matching velocity E[ε − x0 | x_σ] for data x0 ~ N(mean, std² I)."""
    def velocity(x, sigma):
        alpha = 1.0 - sigma
        variance = alpha ** 2 * std ** 2 + sigma ** 2
        residual = (x - alpha * mean) / variance
        return sigma * residual - (mean + alpha * std ** 2 * residual)
    return velocity


@pytest.mark.parametrize("solver", ["euler", "dpm2"])
def test_solvers_reach_the_exact_ode_solution(solver):
    # For Gaussian data the probability-flow ODE maps ε to mean + std·ε exactly.
    mean, std = torch.tensor([0.5, -1.0, 2.0]), 0.3
    noise = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    exact = mean + std * noise
    fine = solve_flow_ode(gaussian_velocity(mean, std), noise, flow_match_sigmas(200, 1024, QWEN_IMAGE_SCHEDULER_CONFIG), solver)
    torch.testing.assert_close(fine, exact, atol=2e-2, rtol=0)


def test_dpm2_is_more_accurate_than_euler_at_few_steps():
    mean, std = torch.tensor([0.5, -1.0, 2.0]), 0.3
    noise = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    exact = mean + std * noise
    sigmas = flow_match_sigmas(6, 1024, QWEN_IMAGE_SCHEDULER_CONFIG)
    errors = {solver: (solve_flow_ode(gaussian_velocity(mean, std), noise, sigmas, solver) - exact).abs().mean().item()
              for solver in ("euler", "dpm2")}
    assert errors["dpm2"] < 0.5 * errors["euler"], errors


def test_artist_size_keeps_aspect_on_the_16_grid():
    assert artist_size(64, 64, 64) == (64, 64)
    assert artist_size(300, 451, 512) == (336, 512)
    assert artist_size(10, 1000, 64) == (16, 64)


def with_trained_output(model):
    """A fresh tiny artist's output projection is zero (its edit is the input whatever the seed); give it a
    seeded default ``nn.Linear`` init, so that edits depend on noise and conditioning as a trained DiT's do."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        model.transformer.proj_out.reset_parameters()
    return model


@pytest.fixture(scope="module")
def artist(tmp_path_factory):
    return with_trained_output(load_artist(build_tiny_artist(tmp_path_factory.mktemp("artist"),
                                                             critic_hidden_size=HIDDEN)))


def requests(count: int, size=(64, 64), seed0: int = 0) -> list[EditRequest]:
    rng = np.random.default_rng(42)
    return [EditRequest(condition_image=rng.integers(0, 256, (*size, 3), dtype=np.uint8),
                        hidden=rng.standard_normal((5 + 3 * i, HIDDEN)).astype(np.float32), seed=seed0 + i)
            for i in range(count)]


def test_fixed_seed_gives_the_same_edit_and_other_seeds_differ(artist):
    sampler = FlowMatchSampler(artist, num_steps=4, solver="dpm2", resolution=64)
    first = sampler.sample(requests(2))
    again = sampler.sample(requests(2))
    for a, b in zip(first, again):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.x0, b.x0)
    reseeded = sampler.sample(requests(2, seed0=100))
    assert not np.array_equal(first[0].x0, reseeded[0].x0)


def test_batched_sampling_equals_single_requests(artist):
    sampler = FlowMatchSampler(artist, num_steps=3, solver="dpm2", resolution=64, max_batch_size=8)
    batch = requests(3)
    together = sampler.sample(batch)
    alone = [sampler.sample([request])[0] for request in batch]
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a.x0, b.x0, atol=1e-4, rtol=1e-4)
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1


def test_outputs_have_the_documented_shapes(artist):
    sampler = FlowMatchSampler(artist, num_steps=6, solver="euler", resolution=64)
    mixed = requests(2, size=(48, 80)) + requests(1, size=(64, 64))
    edits = sampler.sample(mixed)
    assert [e.image.shape for e in edits] == [(48, 80, 3), (48, 80, 3), (64, 64, 3)]
    assert all(e.image.dtype == np.uint8 for e in edits)
    # 48×80 → 32×64 pixels → 8×16 tokens of 4×4 pixels
    assert edits[0].x0.shape == (8 * 16, 48) and edits[2].x0.shape == (256, 48)
    assert edits[0].x0.dtype == np.float32
    assert edits[2].sigmas.dtype == np.float64 and edits[2].sigmas[0] == 1.0 and edits[2].sigmas[-1] == 0.0
    assert len(edits[2].sigmas) == 7


def test_guidance_changes_the_edit(artist):
    plain = FlowMatchSampler(artist, num_steps=3, resolution=64).sample(requests(1))[0]
    guided = FlowMatchSampler(artist, num_steps=3, resolution=64, guidance_scale=4.0).sample(requests(1))[0]
    assert np.isfinite(guided.x0).all() and not np.allclose(plain.x0, guided.x0)


def test_check_names_what_is_wrong(artist):
    sampler = FlowMatchSampler(artist, resolution=64)
    assert sampler.check(requests(1)[0]) == ""
    too_long = EditRequest(condition_image=np.zeros((64, 64, 3), np.uint8), hidden=np.zeros((5000, HIDDEN)), seed=0)
    assert "at most 4088" in sampler.check(too_long)  # 16×16 token grid: 4096 − 16/2
    grey = EditRequest(condition_image=np.zeros((64, 64), np.uint8), hidden=np.zeros((3, HIDDEN)), seed=0)
    assert "uint8 [H, W, 3]" in sampler.check(grey)


def test_vae_artist_samples_end_to_end(tmp_path):
    model = load_artist(build_tiny_artist(tmp_path / "vae", critic_hidden_size=HIDDEN, codec="vae"))
    edit = FlowMatchSampler(model, num_steps=2, resolution=32).sample(requests(1, size=(32, 32)))[0]
    assert edit.image.shape == (32, 32, 3) and edit.x0.shape == (4, 64)


def test_a_shared_condition_photo_is_encoded_once_per_batch(artist):
    from artist_actor.codec import PixelUnshuffleCodec
    from artist_actor.model import ArtistModel

    class CountingCodec(PixelUnshuffleCodec):
        encoded = 0

        def encode(self, pixels):
            CountingCodec.encoded += pixels.shape[0]
            return super().encode(pixels)

    counted = ArtistModel(transformer=artist.transformer, codec=CountingCodec(),
                          scheduler_config=artist.scheduler_config, path=artist.path)
    shared = requests(1)[0]
    batch = [EditRequest(condition_image=shared.condition_image, hidden=shared.hidden, seed=s) for s in range(4)]
    edits = FlowMatchSampler(counted, num_steps=2, resolution=64).sample(batch)
    assert CountingCodec.encoded == 1 and len({e.x0.tobytes() for e in edits}) == 4


def test_a_fresh_tiny_artist_makes_the_identity_edit(tmp_path):
    """The tiny artist starts at the identity edit: its DiT's output (the correction to the input) is zero at
    initialisation, so every seed, critique and both solvers give back the input photo exactly."""
    artist = load_artist(build_tiny_artist(tmp_path / "artist", critic_hidden_size=HIDDEN))
    assert artist.prediction == "input_residual"
    photos = requests(2, size=(64, 64))
    x_t = torch.randn(1, 256, 48)
    cond = FlowMatchSampler(artist, resolution=64).conditioning(photos[:1], (64, 64))
    with torch.no_grad():
        correction = artist.transformer(hidden_states=torch.cat([x_t, cond.image_latents], 1),
                                        encoder_hidden_states=cond.hidden, encoder_hidden_states_mask=cond.mask,
                                        timestep=torch.tensor([0.5]), img_shapes=cond.img_shapes,
                                        return_dict=False)[0]
    assert torch.count_nonzero(correction) == 0
    for solver in ("euler", "dpm2"):
        edits = FlowMatchSampler(artist, num_steps=6, solver=solver, resolution=64).sample(photos)
        for edit, request in zip(edits, photos):
            assert np.array_equal(edit.image, request.condition_image), solver


def test_exploration_off_leaves_the_ode_edit_untouched_bit_for_bit(artist):
    """Exploration 0 (the default) returns exactly the integrated ODE edit: the same x0 and image as solving the
    flow ODE from the request's own noise by hand."""
    from artist_actor.codec import pixels_to_images
    from artist_actor.conditioning import predict_velocity, unpack_latents
    from artist_actor.sampler import initial_noise

    batch = requests(2)
    default = FlowMatchSampler(artist, num_steps=4, resolution=64).sample(batch)
    off = FlowMatchSampler(artist, num_steps=4, resolution=64, exploration=0.0)
    explicit = off.sample(batch)
    cond = off.conditioning(batch, (64, 64))
    noise = torch.stack([initial_noise(r.seed, cond.num_image_tokens, cond.image_latents.shape[2]) for r in batch])
    with torch.no_grad():
        x0 = solve_flow_ode(lambda x, s: predict_velocity(artist.transformer, x, s, cond), noise,
                            off.schedule((64, 64)), "dpm2")
        images = pixels_to_images(artist.codec.decode(unpack_latents(x0, cond.grid)))
    for index, (a, b) in enumerate(zip(default, explicit)):
        assert np.array_equal(a.x0, b.x0) and np.array_equal(a.image, b.image)
        assert np.array_equal(b.x0, x0[index].numpy()) and np.array_equal(b.image, images[index])


def test_exploration_on_moves_the_measured_attributes_and_records_what_it_made(tmp_path):
    """K edits of one critique from a fresh (identity) artist differ in every measured attribute by more than
    the rewards' negligible-change tolerance across the group, and each recorded x0 decodes to its image."""
    from artist_actor.codec import pixels_to_images
    from artist_actor.conditioning import unpack_latents
    from rewards.attributes import NEGLIGIBLE_CHANGE, compute_attributes
    from rollout.data.synthesis import EMBEDDED_TRAIN_PHOTOS, embedded_photos, random_square_crop

    artist = load_artist(build_tiny_artist(tmp_path / "artist", critic_hidden_size=HIDDEN))
    photo = random_square_crop(embedded_photos(EMBEDDED_TRAIN_PHOTOS[:1])[0][1], 64, np.random.default_rng(0))
    hidden = np.random.default_rng(1).standard_normal((7, HIDDEN)).astype(np.float32)
    group = [EditRequest(condition_image=photo, hidden=hidden, seed=seed) for seed in range(8)]
    edits = FlowMatchSampler(artist, num_steps=2, resolution=64, exploration=1.0).sample(group)
    attributes = [compute_attributes(edit.image) for edit in edits]
    for name, tolerance in NEGLIGIBLE_CHANGE.items():
        values = [a[name] for a in attributes]
        assert max(values) - min(values) > tolerance, (name, values)
    for edit in edits:
        decoded = pixels_to_images(artist.codec.decode(unpack_latents(torch.from_numpy(edit.x0)[None], (16, 16))))
        assert np.array_equal(decoded[0], edit.image)
    again = FlowMatchSampler(artist, num_steps=2, resolution=64, exploration=1.0).sample(group[:2])
    assert all(np.array_equal(a.image, b.image) for a, b in zip(edits, again))  # a pure function of the seed
