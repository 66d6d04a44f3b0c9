"""RewardPool on a local Ray cluster: named workers, completion-order streaming, isolation, restarts."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from skimage import data

from rewards.config import RewardsConfig
from rewards.operators import apply_edit_ops
from rewards.pool import RewardPool
from rewards.worker import CritiqueScoringRequest, EditScoringRequest, RewardWorker
from rollout.records.types import EditOp, ParsedCritique, Suggestion

NAMESPACE = "reward-pool-test"
BRIGHTER = EditOp(attribute="exposure", direction=1, level=2)
CONFIG = RewardsConfig(num_workers=2, attribute_resolution=128, lpips_resolution=64, batch_size=2)


@pytest.fixture(scope="module")
def pool(ray_local):
    pool = RewardPool(CONFIG, namespace=NAMESPACE, max_restarts=2)
    yield pool
    pool.shutdown()


@pytest.fixture(scope="module")
def triples(ray_local):
    photo = cv2.resize(data.chelsea(), (96, 64), interpolation=cv2.INTER_AREA)
    target = apply_edit_ops(photo, [BRIGHTER])
    half = apply_edit_ops(photo, [EditOp(attribute="exposure", direction=1, level=1)])
    return {name: ray_local.put(image) for name, image in
            {"input": photo, "target": target, "half": half, "nan": np.full((64, 96, 3), np.nan, np.float32)}.items()}


def _requests(refs, edits):
    suggestion = (Suggestion(text="brighten", op=BRIGHTER),)
    return [EditScoringRequest(task_id=f"task-{i}", critique_index=0, edit_index=i, input=refs["input"],
                               edit=refs[name], target=refs["target"], suggestions=suggestion)
            for i, name in enumerate(edits)]


def test_workers_are_named_in_the_run_namespace(pool, ray_local):
    for i in range(CONFIG.num_workers):
        assert ray_local.get_actor(f"reward-{i}", namespace=NAMESPACE) is not None
    assert [info["index"] for info in pool.worker_info] == list(range(CONFIG.num_workers))
    assert pool.tracking_tags()["rewards.lpips_backbone"] == "random"
    assert pool.backbone_is_random


def test_workers_run_at_the_clusters_cpu_priority(pool, ray_local):
    """Not at Ray's background worker niceness (15 below the raylet, which is this process's child here)."""
    import os

    assert ray_local.get([w.__ray_call__.remote(lambda worker: os.nice(0)) for w in pool.workers]) == \
        [os.nice(0)] * len(pool.workers)


def test_pool_returns_one_result_per_request_matching_a_local_worker(pool, triples, ray_local):
    edits = ["target", "half", "nan", "input", "target", "half", "target"]
    requests = _requests(triples, edits)
    by_index = {r.edit_index: r for r in pool.score_edits(requests)}
    assert sorted(by_index) == list(range(len(edits)))
    assert "NaN" in by_index[2].error and by_index[2].total == 0.0
    local = RewardWorker(CONFIG).score_edits(
        [EditScoringRequest(task_id=r.task_id, critique_index=0, edit_index=r.edit_index,
                            input=ray_local.get(r.input), edit=ray_local.get(r.edit), target=ray_local.get(r.target),
                            suggestions=r.suggestions) for r in requests])
    for expected in local:
        assert by_index[expected.edit_index].total == pytest.approx(expected.total, abs=1e-6)
    assert by_index[0].total > by_index[1].total > by_index[3].total == 0.0


def test_pool_scores_critiques(pool, triples):
    parsed = ParsedCritique(format_ok=True, score=30.0, suggestions=[Suggestion(text="brighten", op=BRIGHTER)])
    requests = [CritiqueScoringRequest(task_id="task", critique_index=i, parsed=parsed, input=triples["input"],
                                       target=triples["target"], edit_scores=(score,))
                for i, score in enumerate([60.0, 10.0, None])]
    results = {r.critique_index: r for r in pool.score_critiques(requests)}
    assert [results[i].total for i in range(3)] == [3.0, 2.0, 2.0]
    assert "rank" in results[2].reasons


def test_pool_survives_a_worker_crash(pool, triples, ray_local):
    ray_local.kill(pool.workers[0], no_restart=False)  # Ray restarts it; the pool waits for it
    results = list(pool.score_edits(_requests(triples, ["target", "half", "target", "half"])))
    assert len(results) == 4 and all(r.error == "" for r in results)


def test_a_worker_lost_mid_call_is_waited_for_and_its_records_scored_once(pool, triples, ray_local):
    # The edits arrive from a task that takes two seconds: each worker's call waits for them, so the kill below
    # lands while worker 0 is in its call.
    @ray_local.remote(num_cpus=0)
    def after(seconds: float, image):
        time.sleep(seconds)
        return image

    slow = {**triples, "slow": after.remote(2.0, triples["target"])}
    before = pool.restarts, pool.retried_items
    results = pool.score_edits(_requests(slow, ["slow", "slow", "slow", "slow"]))  # calls start here
    time.sleep(0.5)
    ray_local.kill(pool.workers[0], no_restart=False)
    results = list(results)
    assert sorted(r.edit_index for r in results) == [0, 1, 2, 3] and all(r.error == "" for r in results)
    assert pool.restarts == before[0] + 1 and pool.retried_items == before[1] + 2


def test_a_worker_restarted_while_idle_is_counted_once_and_redoes_nothing(pool, triples, ray_local):
    from rollout.cluster.recovery import actor_restarts, actor_state

    worker = pool.workers[1]
    before, restarts = (pool.restarts, pool.retried_items), actor_restarts(worker)
    ray_local.kill(worker, no_restart=False)
    deadline = time.monotonic() + 60
    while (actor_restarts(worker) == restarts or actor_state(worker) != "ALIVE") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray_local.get(worker.ready.remote(), timeout=60)["index"] == 1  # back before the pool calls it
    results = list(pool.score_edits(_requests(triples, ["target", "half", "target", "half"])))
    assert len(results) == 4 and all(r.error == "" for r in results)
    assert (pool.restarts, pool.retried_items) == (before[0] + 1, before[1])
    assert list(pool.score_edits(_requests(triples, ["target"])))[0].error == ""
    assert pool.restarts == before[0] + 1


def test_edits_and_critiques_run_together_and_empty_requests_yield_nothing(pool, triples):
    edits = pool.score_edits(_requests(triples, ["target", "half"]))
    critiques = pool.score_critiques([CritiqueScoringRequest(
        task_id="task", critique_index=0, parsed=ParsedCritique(format_ok=True, score=50.0),
        input=triples["input"], target=triples["target"], edit_scores=(60.0,))])
    assert [r.total for r in critiques] == [2.0]
    assert len(list(edits)) == 2
    assert list(pool.score_edits([])) == []
