"""The tiny artist: deterministic offline build, diffusers layout, reload through the real loading paths."""

from __future__ import annotations

import json

import pytest
import torch

from artist_actor.codec import PixelUnshuffleCodec, VaeCodec
from artist_actor.model import PROJECT_FILE, build_tiny_artist, load_artist

HIDDEN = 64


@pytest.fixture(scope="module")
def tiny_artist(tmp_path_factory):
    return build_tiny_artist(tmp_path_factory.mktemp("artist"), critic_hidden_size=HIDDEN, seed=0)


def test_layout_and_project_file(tiny_artist):
    for part in ("transformer/config.json", "vae/config.json", "scheduler/scheduler_config.json"):
        assert (tiny_artist / part).is_file(), part
    project = json.loads((tiny_artist / PROJECT_FILE).read_text())
    assert project["codec"] == "pixel_unshuffle" and project["critic_hidden_size"] == HIDDEN


def test_reloads_through_diffusers_from_pretrained(tiny_artist):
    from diffusers import QwenImageTransformer2DModel

    direct = QwenImageTransformer2DModel.from_pretrained(tiny_artist / "transformer")
    assert direct.config.joint_attention_dim == HIDDEN
    assert direct.config.in_channels == 48
    model = load_artist(tiny_artist)
    assert isinstance(model.codec, PixelUnshuffleCodec)
    assert model.hidden_size == HIDDEN and model.dtype == torch.float32
    for (name, a), (_, b) in zip(direct.state_dict().items(), model.transformer.state_dict().items()):
        assert torch.equal(a, b), name
    assert model.scheduler_config["shift_terminal"] == pytest.approx(0.02)


def test_build_is_deterministic(tiny_artist, tmp_path):
    from safetensors.torch import load_file

    again = build_tiny_artist(tmp_path / "again", critic_hidden_size=HIDDEN, seed=0)
    other = build_tiny_artist(tmp_path / "other", critic_hidden_size=HIDDEN, seed=1)
    weights = "transformer/diffusion_pytorch_model.safetensors"
    first, second, third = (load_file(d / weights) for d in (tiny_artist, again, other))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], third[k]) for k in first)


def test_vae_artist_loads_with_its_vae_codec(tmp_path):
    path = build_tiny_artist(tmp_path / "vae-artist", critic_hidden_size=HIDDEN, codec="vae")
    model = load_artist(path)
    assert isinstance(model.codec, VaeCodec)
    assert model.transformer.config.in_channels == 64


def test_codec_that_does_not_fit_the_dit_is_refused(tiny_artist):
    with pytest.raises(ValueError, match="in_channels=48"):
        load_artist(tiny_artist, codec="vae")


def test_missing_parts_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="transformer/"):
        load_artist(tmp_path)
