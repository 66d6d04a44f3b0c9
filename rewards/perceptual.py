"""Perceptual consistency r_perc = 1 − LPIPS(edit, target) with the lpips package (AlexNet trunk).

Owns finding the AlexNet backbone weights offline, building the LPIPS network exactly once per process,
and batched distances between uint8 photos. It must not download anything: lpips' own loader fetches
AlexNet from the internet, so the network is built with a random trunk (the wheel ships only the small
calibration layers) and the real trunk is then loaded from ``rewards.lpips_weights`` or the torch hub cache.

When no real trunk is found the scorer still works — LPIPS is then a fixed random-feature distance, fine
for plumbing, NOT a perceptual metric — and says so: a loud warning once per process and
:attr:`LPIPSScorer.backbone_is_random`, which the pool reports so the run is tagged. The random trunk is
seeded so every worker of a run computes the same numbers.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rewards.images import InvalidImageError, as_rgb_uint8, resize_long_side

logger = logging.getLogger(__name__)

ALEXNET_WEIGHTS_FILE = "alexnet-owt-7be5be79.pth"
"""File name torchvision's AlexNet weights have in the torch hub cache."""

RANDOM_BACKBONE_SEED = 0
"""Seed of the random AlexNet trunk used when no real weights are present."""

MIN_LPIPS_SIDE = 32
"""AlexNet's pooling stack needs at least this many pixels per side; smaller images are upscaled."""

# AlexNet `features` indices held by each LPIPS slice (lpips.pretrained_networks.alexnet).
_SLICE_OF_FEATURE = {index: f"slice{s}" for s, indices in
                     {1: range(0, 2), 2: range(2, 5), 3: range(5, 8), 4: range(8, 10), 5: range(10, 12)}.items()
                     for index in indices}

_warned_random_backbone = False


class LPIPSWeightsError(RuntimeError):
    """Configured backbone weights are missing or unusable, or real weights are required but absent."""


def find_backbone_weights(configured: str = "") -> Path | None:
    """Where real AlexNet weights are: the configured path (must exist), else the torch hub cache, else None."""
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise LPIPSWeightsError(
                f"rewards.lpips_weights is {configured!r} but no such file exists; point it at "
                f"{ALEXNET_WEIGHTS_FILE} or leave it empty to use the torch hub cache")
        return path
    hub_dirs = []
    if os.environ.get("TORCH_HOME"):
        hub_dirs.append(Path(os.environ["TORCH_HOME"]) / "hub")
    hub_dirs.append(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "torch" / "hub")
    for hub in hub_dirs:
        candidate = hub / "checkpoints" / ALEXNET_WEIGHTS_FILE
        if candidate.is_file():
            return candidate
    return None


def _backbone_state_for_lpips(alexnet_state: dict) -> dict:
    """Rename torchvision AlexNet ``features.<i>.<p>`` tensors to LPIPS' ``slice<k>.<i>.<p>`` names."""
    renamed = {}
    for key, tensor in alexnet_state.items():
        parts = key.split(".")
        if parts[0] != "features" or int(parts[1]) not in _SLICE_OF_FEATURE:
            continue
        renamed[f"{_SLICE_OF_FEATURE[int(parts[1])]}.{parts[1]}.{parts[2]}"] = tensor
    return renamed


def _warn_random_backbone_once() -> None:
    global _warned_random_backbone
    if _warned_random_backbone:
        return
    _warned_random_backbone = True
    logger.warning(
        "\n" + "!" * 100 + "\n"
        "LPIPS IS RUNNING WITH A RANDOM ALEXNET BACKBONE: r_perc is a random-feature distance, not a\n"
        f"perceptual metric. Put {ALEXNET_WEIGHTS_FILE} in $TORCH_HOME/hub/checkpoints or set\n"
        "rewards.lpips_weights, or lower rewards.perceptual_weight for this run.\n" + "!" * 100)


class LPIPSScorer:
    """LPIPS (AlexNet, v0.1) distances between same-sized uint8 photos, offline.

    ``resolution``: images are resized so their long side is at most this before the network (both images
    of a pair get the same size). ``require_real_backbone`` turns the random-trunk fallback into an error.
    """

    def __init__(self, weights_path: str = "", *, resolution: int = 256, device: str = "cpu",
                 require_real_backbone: bool = False, announce_random_backbone: bool = True):
        """``announce_random_backbone=False``: the caller reports a random trunk itself (the reward pool does,
        once for all its workers)."""
        import lpips
        import torch

        weights = find_backbone_weights(weights_path)
        if weights is None and require_real_backbone:
            raise LPIPSWeightsError(
                f"no AlexNet weights found ({ALEXNET_WEIGHTS_FILE} in the torch hub cache or "
                "rewards.lpips_weights) and rewards.require_real_lpips is set")
        # fork_rng keeps the caller's RNG stream untouched while making the random trunk reproducible.
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            # lpips still passes torchvision's deprecated `pretrained=` argument; the warning is noise.
            warnings.simplefilter("ignore", UserWarning)
            torch.manual_seed(RANDOM_BACKBONE_SEED)
            model = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
        if weights is not None:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            renamed = _backbone_state_for_lpips(state)
            missing = set(model.net.state_dict()) - set(renamed)
            if missing:
                raise LPIPSWeightsError(f"{weights} is not torchvision AlexNet weights (missing {sorted(missing)})")
            model.net.load_state_dict(renamed)
        self.model = model.eval().to(device)
        self.device = device
        self.resolution = resolution
        self.backbone_is_random = weights is None
        """True when the AlexNet trunk is random (no real weights found): r_perc is then not perceptual."""
        self.backbone_source = str(weights) if weights is not None else f"random (seed {RANDOM_BACKBONE_SEED})"
        if self.backbone_is_random and announce_random_backbone:
            _warn_random_backbone_once()

    def _prepare_pair(self, edit: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        edit = as_rgb_uint8(edit, "edit")
        target = as_rgb_uint8(target, "target")
        if edit.shape != target.shape:
            raise InvalidImageError(
                f"edit is {edit.shape[1]}x{edit.shape[0]} but target is {target.shape[1]}x{target.shape[0]}; "
                "edits must be at the target's resolution")
        long_side = min(self.resolution, max(target.shape[:2]))
        resize = lambda image: resize_long_side(image, max(long_side, MIN_LPIPS_SIDE),  # noqa: E731
                                                min_short_side=MIN_LPIPS_SIDE, upscale=True)
        return resize(edit), resize(target)

    def distances(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[float]:
        """LPIPS(edit, target) for each ``(edit, target)`` pair; pairs of equal size run as one batch.

        Raises :class:`InvalidImageError` for a bad image or a size mismatch (callers that need per-record
        isolation score records one by one on failure).
        """
        import torch

        prepared = [self._prepare_pair(edit, target) for edit, target in pairs]
        results: list[float] = [0.0] * len(prepared)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, (edit, _) in enumerate(prepared):
            by_shape.setdefault(edit.shape, []).append(index)
        with torch.inference_mode():
            for indices in by_shape.values():
                edits = np.stack([prepared[i][0] for i in indices])
                targets = np.stack([prepared[i][1] for i in indices])
                values = self.model(self._to_tensor(edits), self._to_tensor(targets))
                for i, value in zip(indices, values.reshape(-1).tolist()):
                    results[i] = float(value)
        return results

    def distance(self, edit: np.ndarray, target: np.ndarray) -> float:
        """LPIPS(edit, target) of one pair (0 = identical)."""
        return self.distances([(edit, target)])[0]

    def _to_tensor(self, images: np.ndarray):
        import torch

        tensor = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float()
        return tensor.div_(127.5).sub_(1.0)  # LPIPS expects [-1, 1]


def perceptual_reward(lpips_distance: float) -> float:
    """r_perc = 1 − LPIPS, clipped to [0, 1] (LPIPS of very different images can exceed 1)."""
    return float(np.clip(1.0 - lpips_distance, 0.0, 1.0))
