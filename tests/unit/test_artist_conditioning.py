"""Conditioning: the Qwen-Image schedule, H_c padding and its invariance, the text RoPE limit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from artist_actor.codec import PixelUnshuffleCodec, images_to_pixels
from artist_actor.conditioning import (
    ConditioningError,
    build_conditioning,
    flow_match_sigmas,
    max_text_tokens,
    pad_hidden_states,
    predict_velocity,
)
from artist_actor.model import QWEN_IMAGE_SCHEDULER_CONFIG, build_tiny_artist, load_artist

HIDDEN = 64


@pytest.mark.parametrize("steps, tokens, expected", [
    (6, 1024, [1.0, .8625, .7028, .5151, .2913, .02, 0.0]),
    (10, 1024, [1.0, .929, .8515, .7666, .6733, .5701, .4555, .3274, .1833, .02, 0.0]),
    (6, 4096, [1.0, .8753, .7257, .5427, .3141, .02, 0.0]),
])
def test_schedule_matches_reference_numbers(steps, tokens, expected):
    sigmas = flow_match_sigmas(steps, tokens, QWEN_IMAGE_SCHEDULER_CONFIG)
    assert sigmas.dtype == np.float64
    np.testing.assert_allclose(sigmas, expected, atol=6e-5)


def test_schedule_matches_the_diffusers_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    cfg = QWEN_IMAGE_SCHEDULER_CONFIG
    scheduler = FlowMatchEulerDiscreteScheduler(**cfg)
    tokens, steps = 256, 8
    slope = (cfg["max_shift"] - cfg["base_shift"]) / (cfg["max_image_seq_len"] - cfg["base_image_seq_len"])
    mu = tokens * slope + cfg["base_shift"] - slope * cfg["base_image_seq_len"]
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / steps, steps), mu=mu)
    np.testing.assert_allclose(flow_match_sigmas(steps, tokens, cfg), scheduler.sigmas.numpy(), atol=1e-6)


def test_padding_is_on_the_right_with_a_mask_and_prefix_drop():
    a, b = np.ones((5, HIDDEN), np.float32), np.full((3, HIDDEN), 2.0, np.float32)
    hidden, mask = pad_hidden_states([a, b], HIDDEN, grid=(4, 4), drop_prefix_tokens=1)
    assert hidden.shape == (2, 4, HIDDEN)
    assert mask.tolist() == [[True] * 4, [True, True, False, False]]
    assert torch.all(hidden[1, 2:] == 0) and torch.all(hidden[1, :2] == 2.0)


def test_too_long_hidden_states_are_rejected_with_the_limit():
    grid = (64, 64)  # a 1024² image
    assert max_text_tokens(grid) == 4064
    with pytest.raises(ConditioningError, match="at most 4064"):
        pad_hidden_states([np.zeros((4065, HIDDEN), np.float32)], HIDDEN, grid)
    hidden, _ = pad_hidden_states([np.zeros((4064, HIDDEN), np.float32)], HIDDEN, grid)
    assert hidden.shape[1] == 4064


def test_wrong_width_is_rejected_naming_the_expected_shape():
    with pytest.raises(ConditioningError, match=r"\[T, 64\]"):
        pad_hidden_states([np.zeros((4, 32), np.float32)], HIDDEN, (4, 4))


@pytest.fixture(scope="module")
def artist(tmp_path_factory):
    model = load_artist(build_tiny_artist(tmp_path_factory.mktemp("artist"), critic_hidden_size=HIDDEN))
    # The fresh DiT's output projection is zero (the identity edit whatever the conditioning): give it one, so the
    # velocities below depend on what they are conditioned on.
    with torch.no_grad():
        model.transformer.proj_out.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    return model


def test_right_padded_batch_gives_the_same_velocities_as_singles(artist):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    hidden = [rng.standard_normal((length, HIDDEN)).astype(np.float32) for length in (9, 4, 6)]
    latents = PixelUnshuffleCodec().encode(images_to_pixels(images))
    x_t = torch.randn(3, 256, 48, generator=torch.Generator().manual_seed(1))
    sigmas = torch.tensor([0.9, 0.5, 0.2])
    with torch.no_grad():
        cond = build_conditioning(hidden, latents, hidden_size=HIDDEN)
        assert cond.mask.sum(1).tolist() == [9, 4, 6]
        batched = predict_velocity(artist.transformer, x_t, sigmas, cond)
        singles = [predict_velocity(artist.transformer, x_t[i:i + 1], sigmas[i],
                                    build_conditioning([hidden[i]], latents[i:i + 1], hidden_size=HIDDEN))
                   for i in range(3)]
    assert batched.shape == (3, 256, 48)
    torch.testing.assert_close(batched, torch.cat(singles), atol=1e-5, rtol=1e-4)
    # The conditioning matters: other H_c gives other velocities (otherwise the check above proves nothing).
    with torch.no_grad():
        other = predict_velocity(artist.transformer, x_t[:1], sigmas[0],
                                 build_conditioning([hidden[1]], latents[:1], hidden_size=HIDDEN))
    assert (other - singles[0]).abs().max() > 1e-3


def test_the_embedded_artist_predicts_a_correction_to_the_input(artist):
    assert artist.prediction == "input_residual"
    assert getattr(artist.transformer, "edit_prediction") == "input_residual"


def test_input_residual_velocity_denoises_onto_the_input_plus_the_output(artist):
    """x_t − σ·v is the condition latents plus the DiT's raw output, at every σ: with a zero output the
    clean-photo estimate is the input photo itself."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    latents = PixelUnshuffleCodec().encode(images_to_pixels([image]))
    cond = build_conditioning([rng.standard_normal((5, HIDDEN)).astype(np.float32)], latents, hidden_size=HIDDEN)
    x_t = torch.randn(1, 256, 48, generator=torch.Generator().manual_seed(2))
    transformer = artist.transformer
    with torch.no_grad():
        raw = transformer(hidden_states=torch.cat([x_t, cond.image_latents], dim=1), encoder_hidden_states=cond.hidden,
                          encoder_hidden_states_mask=cond.mask, timestep=torch.tensor([0.4]),
                          img_shapes=cond.img_shapes, return_dict=False)[0][:, :256]
        v = predict_velocity(transformer, x_t, 0.4, cond)
    torch.testing.assert_close(x_t - 0.4 * v, cond.image_latents + raw, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="σ > 0"):
        predict_velocity(transformer, x_t, 0.0, cond)
