"""RewardWorker without Ray: batched scoring, per-record error isolation, every bad input gets a reason."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from skimage import data

from rewards.config import RewardsConfig
from rewards.operators import apply_edit_ops
from rewards.worker import CritiqueScoringRequest, EditScoringRequest, RewardWorker
from rollout.records.types import EditOp, ParsedCritique, Suggestion

BRIGHTER = EditOp(attribute="exposure", direction=1, level=2)


@pytest.fixture(scope="module")
def worker():
    return RewardWorker(RewardsConfig(attribute_resolution=128, lpips_resolution=64))


@pytest.fixture(scope="module")
def pair():
    photo = cv2.resize(data.astronaut(), (96, 96), interpolation=cv2.INTER_AREA)
    return photo, apply_edit_ops(photo, [BRIGHTER])


def _edit(i, source, edit, target, suggestions=(Suggestion(text="brighten", op=BRIGHTER),)):
    return EditScoringRequest(task_id="t", critique_index=0, edit_index=i, input=source, edit=edit, target=target,
                              suggestions=suggestions)


def test_worker_reports_its_lpips_backbone(worker):
    info = worker.ready()
    assert info["threads"] == 1 and info["backbone_is_random"] is True
    assert info["backbone_source"].startswith("random")


def test_batch_scores_every_edit_in_order(worker, pair):
    source, target = pair
    rewards = worker.score_edits([_edit(0, source, target, target), _edit(1, source, source, target)])
    assert [r.edit_index for r in rewards] == [0, 1]
    perfect, unchanged = rewards
    assert perfect.error == "" and perfect.total == pytest.approx(1.0 + 0.5 * 1.0, abs=1e-4)
    assert unchanged.compliance == 0.0 and unchanged.total == 0.0 and not unchanged.gate_passed


@pytest.mark.parametrize("bad_edit, fragment", [
    (np.full((96, 96, 3), np.nan, np.float32), "NaN"),
    (np.zeros((96, 96), np.uint8), "shape"),
    (np.zeros((96, 96, 4), np.uint8), "shape"),
    (np.zeros((48, 96, 3), np.uint8), "edits must be at the target's size"),
    (None, "NoneType"),
])
def test_bad_edit_gets_an_error_result_and_the_rest_are_scored(worker, pair, bad_edit, fragment):
    source, target = pair
    rewards = worker.score_edits([_edit(0, source, target, target), _edit(1, source, bad_edit, target),
                                  _edit(2, source, target, target)])
    assert [r.error == "" for r in rewards] == [True, False, True]
    assert fragment in rewards[1].error
    assert rewards[1].total == 0.0 and not rewards[1].gate_passed
    assert rewards[0].total == rewards[2].total > 1.0


@pytest.mark.parametrize("value", [0, 255])
def test_all_black_and_all_white_edits_get_finite_rewards(worker, pair, value):
    source, target = pair
    reward = worker.score_edits([_edit(0, source, np.full_like(target, value), target)])[0]
    assert reward.error == "" and all(math.isfinite(v) for v in (reward.total, reward.photometric, reward.perceptual))


def test_single_pixel_triple_is_scored(worker):
    pixel = np.array([[[120, 80, 60]]], np.uint8)
    reward = worker.score_edits([_edit(0, pixel, pixel, pixel, suggestions=())])[0]
    assert reward.error == "" and reward.total == pytest.approx(1.5, abs=1e-4)


def test_mismatched_input_and_target_is_refused(worker, pair):
    source, target = pair
    reward = worker.score_edits([_edit(0, source[:50], target, target)])[0]
    assert "a pair must have one size" in reward.error


def test_unreadable_path_is_refused_with_its_name(worker, pair, tmp_path):
    source, target = pair
    missing = tmp_path / "missing.png"
    reward = worker.score_edits([_edit(0, source, str(missing), target)])[0]
    assert "missing.png" in reward.error


def test_image_files_are_read_as_rgb(worker, pair, tmp_path):
    source, target = pair
    path = tmp_path / "edit.png"
    cv2.imwrite(str(path), cv2.cvtColor(target, cv2.COLOR_RGB2BGR))
    from_file, from_array = worker.score_edits([_edit(0, source, str(path), target), _edit(1, source, target, target)])
    assert from_file.total == pytest.approx(from_array.total)


def test_critiques_are_scored_with_reasons(worker, pair):
    source, target = pair
    parsed = ParsedCritique(format_ok=True, score=40.0, suggestions=[Suggestion(text="brighten", op=BRIGHTER)])
    good, unparsed, bad_image = worker.score_critiques([
        CritiqueScoringRequest(task_id="t", critique_index=0, parsed=parsed, input=source, target=target,
                               edit_scores=(70.0,)),
        CritiqueScoringRequest(task_id="t", critique_index=1, parsed=ParsedCritique(error="no <think> block"),
                               input=source, target=target, edit_scores=(None,)),
        CritiqueScoringRequest(task_id="t", critique_index=2, parsed=parsed, input=np.zeros((4, 4)), target=target),
    ])
    assert (good.total, good.format, good.rank, good.suggestion) == (3.0, 1.0, 1.0, 1.0)
    assert unparsed.total == 0.0 and unparsed.reasons["format"] == "no <think> block" and "rank" in unparsed.reasons
    assert bad_image.error and "shape" in bad_image.error
