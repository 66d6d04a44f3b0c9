"""LPIPS offline: backbone discovery, loading real weights, the random fallback, and the lpips package's numbers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from rewards.config import RewardsConfig
from rewards.images import InvalidImageError
from rewards.perceptual import ALEXNET_WEIGHTS_FILE, LPIPSScorer, LPIPSWeightsError, find_backbone_weights


@pytest.fixture(scope="module")
def images():
    target = cv2.resize(data.astronaut(), (96, 96), interpolation=cv2.INTER_AREA)
    return target, cv2.GaussianBlur(target, (0, 0), 2.0)


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory):
    """A torchvision AlexNet checkpoint in the hub-cache layout (random values: no real weights ship here)."""
    import torchvision

    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("torch_home") / "hub" / "checkpoints" / ALEXNET_WEIGHTS_FILE
    path.parent.mkdir(parents=True)
    torch.save(torchvision.models.alexnet().state_dict(), path)
    return path


def test_random_backbone_is_flagged_and_identical_in_every_process(images):
    first, second = LPIPSScorer(resolution=64), LPIPSScorer(resolution=64)
    assert first.backbone_is_random and first.backbone_source.startswith("random")
    assert first.distance(*images) == second.distance(*images) > 0.0


def test_scorer_matches_the_lpips_package_called_directly(images):
    import lpips

    scorer = LPIPSScorer(resolution=96)
    edit, target = images
    direct = scorer.model(lpips.im2tensor(edit), lpips.im2tensor(target)).item()
    assert scorer.distance(edit, target) == pytest.approx(direct, rel=1e-5)


def test_configured_weights_are_loaded_into_the_backbone(alexnet_file, images):
    scorer = LPIPSScorer(str(alexnet_file), resolution=64)
    assert not scorer.backbone_is_random and scorer.backbone_source == str(alexnet_file)
    state = torch.load(alexnet_file, weights_only=True)
    assert torch.equal(scorer.model.net.slice1[0].weight, state["features.0.weight"])
    assert torch.equal(scorer.model.net.slice5[0].bias, state["features.10.bias"])
    assert scorer.distance(*images) != LPIPSScorer(resolution=64).distance(*images)


def test_hub_cache_is_searched(alexnet_file, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(alexnet_file.parents[2]))
    assert find_backbone_weights("") == alexnet_file


def test_missing_configured_weights_and_required_real_backbone_fail_clearly(tmp_path, monkeypatch):
    with pytest.raises(LPIPSWeightsError, match="no such file"):
        LPIPSScorer(str(tmp_path / "nope.pth"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(LPIPSWeightsError, match="require_real_lpips"):
        LPIPSScorer(require_real_backbone=RewardsConfig(require_real_lpips=True).require_real_lpips)


def test_tiny_and_mismatched_images(images):
    scorer = LPIPSScorer(resolution=64)
    pixel = np.array([[[10, 200, 30]]], np.uint8)
    assert scorer.distance(pixel, pixel) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(InvalidImageError, match="target's resolution"):
        scorer.distance(images[0][:50], images[1])
