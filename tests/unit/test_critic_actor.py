"""CriticRolloutActor without Ray, on the transformers engine: records, sync faults, stale-weight refusal, and the
replica side of a collective sync (a sender thread in this process): full model, LoRA adapter merged on the
replica, an adapter that binds to nothing, and the served-output probe."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from skimage import data

from critic_actor.actor import CriticRolloutActor, WeightSyncError
from critic_actor.config import CriticConfig
from rollout.records.types import PhotoTask
from rollout.sync.weight_transport import LoraSpec, ProbeSpec, SyncManifest, TensorSpec, tensor_digest


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


def test_sync_loads_weights_and_reports_version_digest_and_time(actor, state):
    shifted = {name: value + np.float32(0.01) for name, value in state.items()}
    report = actor.set_weights(5, shifted)
    assert report["policy_version"] == 5 and actor.policy_version() == 5
    assert report["digest"] == tensor_digest(shifted) == actor.weights_digest()["digest"]
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


def test_a_replica_on_fake_gpus_reports_the_dtype_its_cpu_engine_serves(embedded_models):
    """On a simulated cluster a replica granted a GPU runs on the CPU: syncs must send what it serves (float32 for
    ``dtype: auto``), not the bfloat16 a real GPU would serve."""
    config = CriticConfig(engine="transformers", max_new_tokens=8, min_pixels=3136, max_pixels=12544, dtype="auto",
                          gpus_per_replica=1)
    replica = CriticRolloutActor(embedded_models.critic, config, cpu_fallback=True)
    assert replica.ready()["dtype"] == "float32" == str(next(replica.engine.model.parameters()).dtype)[6:]


# ------------------------------------------------------------------------------------------ collective sync
def _collective(actor, version: int, tensors: dict, **manifest_fields):
    """Send ``tensors`` from a sender thread in this process while ``actor`` receives them as the only replica."""
    from learner.weight_sender import WeightSender

    sender = WeightSender()
    endpoint = sender.open_endpoint("127.0.0.1", num_receivers=1, timeout_s=20.0)
    dtypes = manifest_fields.pop("dtypes", {})
    manifest = SyncManifest(version=version, tensors=tuple(TensorSpec(n, tuple(t.shape), dtypes.get(n))
                                                           for n, t in tensors.items()),
                            wire_dtype="float32", num_senders=1, bucket_bytes=1 << 16, **manifest_fields)
    sent: list = []
    thread = threading.Thread(target=lambda: sent.append(sender.send(endpoint, manifest, tensors.items())))
    thread.start()
    try:
        return actor.receive_weights(version, endpoint, 0, manifest.to_dict()), manifest
    finally:
        thread.join(30)
        assert sent, "the sender did not finish"


def _probe(learner, tolerance: float = 1e-4) -> ProbeSpec:
    ids = list(range(20, 52))
    return ProbeSpec(tuple(ids), tuple(learner.probe_log_probs(ids).tolist()), tolerance)


@pytest.fixture(scope="module")
def lora_learner(embedded_models):
    from learner.config import CriticLearnerConfig, LoraConfig
    from learner.critic_learner import CriticLearner

    learner = CriticLearner(embedded_models.critic, CriticLearnerConfig(lora=LoraConfig(rank=8, alpha=16.0)),
                            min_pixels=3136, max_pixels=12544, device="cpu")
    with torch.no_grad():  # a trained-looking adapter: B is zero at initialisation
        for name, param in learner.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return learner


def test_collective_full_sync_serves_the_learners_weights_and_passes_the_probe(actor, state, lora_learner):
    merged = {name: tensor.clone() for name, tensor in lora_learner.get_weights().items()}
    report, manifest = _collective(actor, 11, merged, probe=_probe(lora_learner))
    assert report["policy_version"] == 11 and report["probe_abs_diff"] < 1e-4
    assert report["bytes_received"] >= manifest.dense_bytes
    for name, tensor in actor.engine.model.state_dict().items():
        torch.testing.assert_close(tensor, merged[name], rtol=0, atol=0)
    actor.set_weights(12, state)


def test_lora_adapter_sync_merges_on_the_replica_like_the_learner(actor, state, lora_learner):
    from learner.lora import adapter_sync_state

    tensors, modules, scaling = adapter_sync_state(lora_learner.model, "default", include_base=True)
    factors = {n: "float32" for n in tensors if ".lora_" in n}
    assert 0 < sum(t.numel() for n, t in tensors.items() if n in factors) < sum(v.size for v in state.values())
    report, _ = _collective(actor, 13, tensors, kind="lora", lora=LoraSpec(scaling, tuple(modules), True),
                            dtypes=factors, probe=_probe(lora_learner))
    assert report["lora_modules_bound"] == report["lora_modules_expected"] == len(modules) == 14
    merged = lora_learner.get_weights()
    for name, tensor in actor.engine.model.state_dict().items():
        torch.testing.assert_close(tensor, merged[name], rtol=1e-6, atol=1e-6)
    # The next sync carries only the factors: the replica merges them into the base it kept.
    factors_only = {n: t for n, t in tensors.items() if n in factors}
    report, manifest = _collective(actor, 14, factors_only, kind="lora", lora=LoraSpec(scaling, tuple(modules), False),
                                   dtypes=factors, probe=_probe(lora_learner))
    assert report["policy_version"] == 14 and manifest.dense_bytes == sum(t.numel() * 4 for t in factors_only.values())
    actor.set_weights(15, state)


def test_an_adapter_that_binds_to_no_module_fails_loudly_and_the_replica_refuses_work(actor, state, lora_learner):
    from learner.lora import adapter_sync_state

    tensors, modules, scaling = adapter_sync_state(lora_learner.model, "default", include_base=False)
    # peft's saved-adapter names carry a "base_model.model." prefix: loaded as they are they match no module.
    renamed = {f"base_model.model.{n}": t for n, t in tensors.items()}
    lora = LoraSpec(scaling, tuple(f"base_model.model.{m}" for m in modules), False)
    with pytest.raises(WeightSyncError, match=r"bound to 0 of 14 modules"):
        _collective(actor, 16, renamed, kind="lora", lora=lora, dtypes={n: "float32" for n in renamed})
    with pytest.raises(WeightSyncError, match="refuses to serve"):
        actor.generate(TASKS[:1], n=1, step=0)
    actor.set_weights(17, state)
    assert actor.health()["ok"]


def test_a_replica_whose_output_does_not_follow_the_learner_fails_the_probe(actor, state, lora_learner):
    probe = _probe(lora_learner)  # the adapted learner's log-probs; the replica is sent the base weights
    with pytest.raises(WeightSyncError, match="does not serve the learner's weights"):
        _collective(actor, 18, {n: torch.from_numpy(v) for n, v in state.items()}, probe=probe)
    assert not actor.health()["ok"]
    actor.set_weights(19, state)


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
