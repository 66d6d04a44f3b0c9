"""CriticRolloutActor without Ray, on the transformers engine: records, sync faults, stale-weight refusal."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from skimage import data

from critic_actor.actor import CriticRolloutActor, WeightSyncError
from critic_actor.config import CriticConfig
from critic_actor.engines import state_checksum
from rollout.types import PhotoTask


@pytest.fixture(scope="module")
def actor(embedded_models):
    config = CriticConfig(engine="transformers", max_new_tokens=10, temperature=1.0, min_pixels=3136,
                          max_pixels=12544, dtype="float32")
    return CriticRolloutActor(embedded_models.critic, config, index=2, sync_timeout_s=30.0)


@pytest.fixture(scope="module")
def state(actor):
    return {name: tensor.detach().clone().numpy() for name, tensor in actor.engine.model.state_dict().items()}


TASKS = [PhotoTask(task_id="rocket", input=data.rocket()[:200, :200], target=data.rocket()[:200, :200]),
         PhotoTask(task_id="coffee", input=data.coffee()[:150, :300], target=data.coffee()[:150, :300])]


def test_transformers_engine_produces_complete_records(actor):
    critiques = actor.generate(TASKS, n=2, step=0)
    assert [(c.task_id, c.index) for c in critiques] == [("rocket", 0), ("rocket", 1), ("coffee", 0), ("coffee", 1)]
    for critique in critiques:
        assert critique.rollout_logprobs.shape == (len(critique.completion_token_ids),)
        assert critique.finish_reason in ("stop", "length") and critique.policy_version == 0
        assert critique.image.shape[0] % 28 == 0 and critique.image.shape[1] % 28 == 0
    assert "index=2" in repr(actor) and actor.ready()["engine"] == "transformers"


def test_sync_loads_weights_and_reports_version_checksum_and_time(actor, state):
    shifted = {name: value + np.float32(0.01) for name, value in state.items()}
    report = actor.set_weights(5, shifted)
    assert report["policy_version"] == 5 and actor.policy_version() == 5
    assert report["checksum"] == state_checksum(shifted) == actor.weights_checksum()["received"]
    name = next(iter(shifted))
    assert np.allclose(actor.engine.model.state_dict()[name].numpy(), shifted[name])
    assert actor.generate(TASKS[:1], n=1, step=0)[0].policy_version == 5
    actor.set_weights(6, state)


def test_a_stalled_sync_fails_after_the_timeout_and_the_replica_refuses_work(actor, state, monkeypatch):
    release = threading.Event()
    monkeypatch.setattr(actor.engine, "load_weights", lambda tensors: release.wait(30))
    monkeypatch.setattr(actor, "sync_timeout_s", 0.2)
    with pytest.raises(WeightSyncError, match="stalled past"):
        actor.set_weights(7, state)
    release.set()
    assert not actor.health()["ok"] and "stalled" in actor.health()["problem"]
    with pytest.raises(WeightSyncError, match="refuses to serve"):
        actor.generate(TASKS[:1], n=1, step=0)
    with pytest.raises(WeightSyncError, match="refuses to serve"):
        actor.rescore([TASKS[0].input])
    monkeypatch.undo()
    actor.set_weights(8, state)
    assert actor.health()["ok"] and actor.generate(TASKS[:1], n=1, step=0)[0].policy_version == 8


def test_rescore_is_greedy_and_returns_none_for_unscorable_text(actor):
    first = actor.rescore([TASKS[0].input, TASKS[1].input])
    assert first == actor.rescore([TASKS[0].input, TASKS[1].input])
    assert all(score is None or 0 <= score <= 100 for score in first)


def test_bad_requests_are_clear_errors(actor, state):
    with pytest.raises(ValueError, match="task 'grey' input"):
        actor.generate([PhotoTask(task_id="grey", input=np.zeros((64, 64), np.uint8), target=None)], n=1, step=0)
    with pytest.raises(ValueError, match="n must be"):
        actor.generate(TASKS, n=0, step=0)
    with pytest.raises(WeightSyncError, match="unknown names"):
        actor.set_weights(9, {**state, "model.extra.weight": np.zeros(3, np.float32)})
    assert actor.health()["ok"]


def test_temperature_zero_config_is_greedy(embedded_models):
    config = CriticConfig(engine="transformers", max_new_tokens=8, temperature=0.0, min_pixels=3136,
                          max_pixels=12544, dtype="float32")
    greedy = CriticRolloutActor(embedded_models.critic, config)
    a = greedy.generate(TASKS[:1], n=2, step=0)
    assert a[0].completion_token_ids == a[1].completion_token_ids
    torch.testing.assert_close(torch.from_numpy(a[0].rollout_logprobs), torch.from_numpy(a[1].rollout_logprobs))


def test_image_files_that_cannot_be_decoded_are_named_not_raised_as_decoder_errors(tmp_path):
    from PIL import Image

    from critic_actor.inputs import resolve_image

    (tmp_path / "notes.jpg").write_text("text, not a photo")
    Image.fromarray(data.coffee()[:64, :64]).save(tmp_path / "whole.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "whole.jpg").read_bytes()[:400])
    for name, reason in (("notes.jpg", "cannot identify"), ("cut.jpg", "(?i)truncated")):
        with pytest.raises(ValueError, match=reason) as caught:
            resolve_image(str(tmp_path / name), "task t input")
        assert str(tmp_path / name) in str(caught.value) and str(caught.value).startswith("task t input")
