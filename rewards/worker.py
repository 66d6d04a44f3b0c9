"""RewardWorker: scores batches of edits and critiques in one process, one record's failure at a time.

Owns the request records the pool sends, resolving image handles (ObjectRef, path or array), measuring
each distinct image once per batch, batched LPIPS, and turning any per-record failure (bad image, size
mismatch, non-finite value) into an error result with a reason while the rest of the batch is scored.
It is a plain class: :class:`rewards.pool.RewardPool` applies ``ray.remote`` to it, and unit tests and the
``score`` command construct it directly. It must not know about other workers or the training loop.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rewards.artist import artist_reward, failed_edit_reward
from rewards.attributes import PhotometricAttributes, compute_attributes
from rewards.config import RewardsConfig
from rewards.critic import critic_reward, failed_critique_reward, format_reward, rank_reward, suggestion_reward
from rewards.images import InvalidImageError, as_rgb_uint8
from rollout.cluster.startup import actor_device
from rollout.records.types import (
    CritiqueReward,
    Degradation,
    EditReward,
    ImageHandle,
    ParsedCritique,
    Suggestion,
    TaskKind,
)

logger = logging.getLogger(__name__)


@dataclass(kw_only=True, slots=True)
class EditScoringRequest:
    """One edit to score with r_PA."""

    task_id: str
    critique_index: int
    edit_index: int
    input: ImageHandle
    """The photo the artist edited."""
    edit: ImageHandle
    """The artist's output, at the target's resolution."""
    target: ImageHandle
    """The reference photo."""
    suggestions: tuple[Suggestion, ...] = ()
    """The critique's suggestions the edit was conditioned on (tone ones feed the compliance gate)."""


@dataclass(kw_only=True, slots=True)
class CritiqueScoringRequest:
    """One critique to score with r_C."""

    task_id: str
    critique_index: int
    parsed: ParsedCritique
    """The critique as the critic's grammar parsed it."""
    input: ImageHandle
    target: ImageHandle
    kind: TaskKind = "retouch"
    degradations: tuple[Degradation, ...] = ()
    edit_scores: tuple[float | None, ...] = ()
    """The critic's re-scores of the edits made from this critique (``None`` = did not parse)."""


def _is_object_ref(handle: Any) -> bool:
    return type(handle).__name__ == "ObjectRef" and type(handle).__module__.startswith("ray")


def load_image_file(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 RGB; unreadable or non-8-bit-RGB files raise :class:`InvalidImageError`."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InvalidImageError(f"cannot read image file {str(path)!r}")
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return as_rgb_uint8(image, f"image file {str(path)!r}")


class RewardWorker:
    """Computes artist and critic rewards for batches of requests (CPU; LPIPS may use a GPU).

    Thread counts of torch and OpenCV are pinned to ``config.cpus_per_worker`` so several workers on one
    machine do not oversubscribe its cores (unpinned LPIPS was seen to run 10× slower under contention).
    """

    def __init__(self, config: RewardsConfig, *, index: int = 0, lpips_device: str | None = "cpu",
                 cpu_fallback: bool = False):
        """``lpips_device`` None (the pool's actors): CUDA when granted ``rewards.gpus_per_worker`` GPUs, CPU when
        granted none, and a start-up failure when granted GPUs without CUDA unless ``cpu_fallback``."""
        import cv2
        import torch

        from rewards.perceptual import LPIPSScorer

        self.config = config
        self.index = index
        if lpips_device is None:
            lpips_device = actor_device(f"reward-{index}", config.gpus_per_worker, cpu_fallback)
        self.threads = max(1, int(config.cpus_per_worker))
        torch.set_num_threads(self.threads)
        cv2.setNumThreads(self.threads)
        self.lpips = LPIPSScorer(config.lpips_weights, resolution=config.lpips_resolution, device=lpips_device,
                                 require_real_backbone=config.require_real_lpips)

    def __repr__(self) -> str:
        # Ray shows this in the dashboard and in log prefixes.
        lpips = getattr(self, "lpips", None)  # absent when the constructor failed (Ray formats that with repr)
        backbone = "none" if lpips is None else "random" if lpips.backbone_is_random else "pretrained"
        return f"RewardWorker(reward-{self.index}, lpips={backbone}, threads={self.threads})"

    def ready(self) -> dict[str, Any]:
        """What this worker runs with (for the pool's start-up report and run tags)."""
        return {"index": self.index, "pid": os.getpid(), "threads": self.threads, "lpips_device": self.lpips.device,
                "backbone_is_random": self.lpips.backbone_is_random,
                "backbone_source": self.lpips.backbone_source}

    # ------------------------------------------------------------------ image handling

    def _resolve(self, handle: ImageHandle, name: str) -> np.ndarray:
        if isinstance(handle, np.ndarray):
            return as_rgb_uint8(handle, name)
        if isinstance(handle, (str, Path)):
            return load_image_file(handle)
        if _is_object_ref(handle):
            import ray

            return as_rgb_uint8(ray.get(handle), name)
        raise InvalidImageError(f"{name} is a {type(handle).__name__}; expected an array, a path or an ObjectRef")

    def _measure(self, handle: ImageHandle, name: str,
                 cache: dict[Any, Any]) -> tuple[np.ndarray, PhotometricAttributes]:
        """Resolve and measure an image once per batch (inputs and targets repeat across edits)."""
        key = handle.hex() if _is_object_ref(handle) else (handle if isinstance(handle, (str, Path)) else id(handle))
        if key not in cache:
            image = self._resolve(handle, name)
            cache[key] = (image, compute_attributes(image, self.config.attribute_resolution))
        return cache[key]

    # ------------------------------------------------------------------ artist

    def score_edits(self, requests: Sequence[EditScoringRequest]) -> list[EditReward]:
        """r_PA with every component for each request, in request order; failures become error results."""
        cache: dict[Any, Any] = {}
        measured: dict[int, tuple] = {}
        results: list[EditReward | None] = [None] * len(requests)
        for i, request in enumerate(requests):
            try:
                input_image, input_attrs = self._measure(request.input, "input", cache)
                edit_image, edit_attrs = self._measure(request.edit, "edit", cache)
                target_image, target_attrs = self._measure(request.target, "target", cache)
                if input_image.shape != target_image.shape:
                    raise InvalidImageError(
                        f"input is {input_image.shape[1]}x{input_image.shape[0]} but target is "
                        f"{target_image.shape[1]}x{target_image.shape[0]}; a pair must have one size")
                if edit_image.shape != target_image.shape:
                    raise InvalidImageError(
                        f"edit is {edit_image.shape[1]}x{edit_image.shape[0]} but target is "
                        f"{target_image.shape[1]}x{target_image.shape[0]}; edits must be at the target's size")
                measured[i] = (edit_image, target_image, input_attrs, edit_attrs, target_attrs)
            except Exception as exc:  # noqa: BLE001 - one bad record must not fail the batch
                results[i] = self._edit_failure(request, exc)
        distances = self._lpips_distances({i: (m[0], m[1]) for i, m in measured.items()})
        for i, (_, _, input_attrs, edit_attrs, target_attrs) in measured.items():
            request = requests[i]
            if isinstance(distances[i], Exception):
                results[i] = self._edit_failure(request, distances[i])
                continue
            reward = artist_reward(
                task_id=request.task_id, critique_index=request.critique_index, edit_index=request.edit_index,
                input_attrs=input_attrs, edit_attrs=edit_attrs, target_attrs=target_attrs,
                suggestions=request.suggestions, lpips_distance=distances[i],
                photometric_weight=self.config.photometric_weight, perceptual_weight=self.config.perceptual_weight,
                compliance_margin=self.config.compliance_margin)
            values = [reward.total, reward.compliance, reward.photometric, reward.perceptual,
                      *reward.attribute_scores.values()]
            if not all(math.isfinite(v) for v in values):
                reward = self._edit_failure(request, ValueError(f"non-finite reward component in {values}"))
            results[i] = reward
        return [r for r in results if r is not None]

    def _lpips_distances(self, pairs: dict[int, tuple[np.ndarray, np.ndarray]]) -> dict[int, float | Exception]:
        if not pairs:
            return {}
        keys = list(pairs)
        try:
            return dict(zip(keys, self.lpips.distances([pairs[k] for k in keys])))
        except Exception:  # noqa: BLE001 - fall back to one pair at a time to isolate the bad one
            out: dict[int, float | Exception] = {}
            for key in keys:
                try:
                    out[key] = self.lpips.distance(*pairs[key])
                except Exception as exc:  # noqa: BLE001
                    out[key] = exc
            return out

    @staticmethod
    def _edit_failure(request: EditScoringRequest, exc: BaseException) -> EditReward:
        reason = str(exc) if isinstance(exc, (InvalidImageError, ValueError)) else f"{type(exc).__name__}: {exc}"
        logger.warning("edit %s/%d/%d not scored: %s", request.task_id, request.critique_index,
                       request.edit_index, reason)
        return failed_edit_reward(task_id=request.task_id, critique_index=request.critique_index,
                                  edit_index=request.edit_index, reason=reason)

    # ------------------------------------------------------------------ critic

    def score_critiques(self, requests: Sequence[CritiqueScoringRequest]) -> list[CritiqueReward]:
        """r_C with every component for each request, in request order; failures become error results."""
        cache: dict[Any, Any] = {}
        results = []
        for request in requests:
            try:
                results.append(self._score_critique(request, cache))
            except Exception as exc:  # noqa: BLE001 - one bad record must not fail the batch
                reason = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
                logger.warning("critique %s/%d not scored: %s", request.task_id, request.critique_index, reason)
                results.append(failed_critique_reward(task_id=request.task_id,
                                                      critique_index=request.critique_index, reason=reason))
        return results

    def _score_critique(self, request: CritiqueScoringRequest, cache: dict[Any, Any]) -> CritiqueReward:
        parsed = request.parsed
        reasons: dict[str, str] = {}
        if not parsed.format_ok:
            reasons["format"] = parsed.error or "response does not match the output grammar"
        rank, rank_reason = rank_reward(parsed.score, request.edit_scores)
        if rank_reason:
            reasons["rank"] = rank_reason
        if request.kind == "restoration" and request.degradations:
            suggestion = suggestion_reward(kind=request.kind, suggestions=parsed.suggestions,
                                           degradations=request.degradations, input_image=None,
                                           target_attrs=None)
        else:
            input_image, input_attrs = self._measure(request.input, "input", cache)
            _, target_attrs = self._measure(request.target, "target", cache)
            suggestion = suggestion_reward(kind=request.kind, suggestions=parsed.suggestions,
                                           degradations=request.degradations, input_image=input_image,
                                           target_attrs=target_attrs, input_attrs=input_attrs,
                                           resolution=self.config.attribute_resolution)
            if not any(s.op is not None for s in parsed.suggestions):
                reasons["suggestion"] = "no colour/tone suggestion to build a pseudo-edit from"
        return critic_reward(task_id=request.task_id, critique_index=request.critique_index,
                             format_value=format_reward(parsed), rank_value=rank, suggestion_value=suggestion,
                             format_weight=self.config.format_weight, rank_weight=self.config.rank_weight,
                             suggestion_weight=self.config.suggestion_weight, reasons=reasons)
