"""Warm-start SFT: annotation targets parse back to what they were made from; both SFT losses fall."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from critic_actor.grammar import parse_critique
from learner.sft import (ArtistSFT, CriticSFT, annotate_task, annotation_score, degradation_severity, ops_of,
                         run_sft_loop)
from rollout.records.types import EditOp, PhotoTask

PIXELS = dict(min_pixels=3136, max_pixels=12544)


def _task(task_id: str, ops=(), degradations=(), seed: int = 0) -> PhotoTask:
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    source = np.clip(target.astype(int) - 40, 0, 255).astype(np.uint8)
    return PhotoTask(task_id=task_id, input=source, target=target, known_ops=tuple(ops),
                     degradations=tuple(degradations), kind="restoration" if degradations else "retouch")


@pytest.mark.parametrize("ops,degradations", [
    ((EditOp(attribute="exposure", direction=1, level=1),), ()),
    ((EditOp(attribute="warmth", direction=-1, level=3), EditOp(attribute="contrast", direction=1, level=2),
      EditOp(attribute="saturation", direction=-1, level=1)), ()),
    ((), ("blur", "haze")),
    ((EditOp(attribute="exposure", direction=-1, level=2),), ("noise",)),
])
def test_annotation_parses_back_to_the_same_ops(ops, degradations):
    task = _task("t", ops, degradations)
    parsed = parse_critique(annotate_task(task))
    assert parsed.format_ok, parsed.error
    assert ops_of(parsed.suggestions) == list(ops)
    # The grammar also tags "increase the exposure" as low-light restoration; restoration-only clauses are ours.
    assert [s.restoration for s in parsed.suggestions if s.op is None] == list(degradations)
    assert parsed.unrecognised == []
    assert parsed.score == annotation_score(task)


def test_annotation_score_falls_with_severity():
    mild = _task("a", [EditOp(attribute="exposure", direction=1, level=1)])
    strong = _task("b", [EditOp(attribute="exposure", direction=1, level=3)])
    worse = _task("c", [EditOp(attribute="exposure", direction=1, level=3)], ["blur"])
    severities = [degradation_severity(t) for t in (mild, strong, worse)]
    scores = [parse_critique(annotate_task(t)).score for t in (mild, strong, worse)]
    assert severities == sorted(severities) and len(set(severities)) == 3
    assert scores[0] > scores[1] > scores[2]


def test_a_task_with_nothing_known_to_fix_is_refused_by_name():
    with pytest.raises(ValueError, match="'plain'"):
        annotate_task(_task("plain"))


def test_critic_sft_loss_decreases_on_a_tiny_batch(embedded_models):
    trainer = CriticSFT(embedded_models.critic, lr=3e-3, **PIXELS)
    tasks = [_task("a", [EditOp(attribute="exposure", direction=1, level=2)]), _task("b", (), ["haze"], seed=1)]
    with torch.no_grad():
        before = float(trainer.loss(tasks))
    run_sft_loop(trainer, tasks, steps=8, batch_size=2, log=None)
    with torch.no_grad():
        after = float(trainer.loss(tasks))
    assert after < 0.7 * before


@pytest.mark.parametrize("stage", ["artist", "annotated", "adapt"])
def test_artist_sft_loss_decreases_on_a_tiny_batch(embedded_models, stage):
    trainer = ArtistSFT(embedded_models.artist, embedded_models.critic, stage=stage, lr=2e-3,
                        max_new_tokens=16, **PIXELS)
    tasks = [_task("a", [EditOp(attribute="exposure", direction=1, level=2)]), _task("b", (), ["haze"], seed=1)]
    generator = torch.Generator().manual_seed(7)
    sigmas = torch.tensor([0.3, 0.7])
    noise = torch.randn(2, 256, 48, generator=generator)  # 64×64 photos: 16×16 tokens of 4×4 pixels
    with torch.no_grad():
        before = float(trainer.loss(tasks, sigmas, noise))
    run_sft_loop(trainer, tasks, steps=15, batch_size=2, log=None)
    with torch.no_grad():
        after = float(trainer.loss(tasks, sigmas, noise))
    assert after < 0.9 * before


def test_saved_directories_load_through_the_standard_paths(embedded_models, tmp_path):
    from artist_actor.model import load_artist
    from critic_actor.model import load_critic

    critic = CriticSFT(embedded_models.critic, **PIXELS)
    critic.save(tmp_path / "critic")
    artist = ArtistSFT(embedded_models.artist, embedded_models.critic, **PIXELS)
    artist.save(tmp_path / "artist")
    model, _ = load_critic(tmp_path / "critic", dtype="float32", device="cpu")
    assert torch.equal(model.lm_head.weight, critic.model.lm_head.weight)
    loaded = load_artist(tmp_path / "artist", dtype="float32")
    assert loaded.hidden_size == artist.artist.hidden_size
    assert type(loaded.codec).__name__ == "PixelUnshuffleCodec"


def test_embedded_warm_start_is_built_once_and_reused(tmp_path, monkeypatch):
    """``trainer.init_from: embedded`` resolves to a cached warm start: a critic and an input-residual artist
    trained by the recipe, built on first use, found again (not rebuilt) on the next call."""
    from artist_actor.model import load_artist
    from rollout import models
    from rollout.config import load_config

    small = {**models.EMBEDDED_WARM_START_RECIPE, "critic": {"steps": 2, "batch_size": 2, "lr": 3e-3},
             "artist": {"steps": 2, "batch_size": 2, "lr": 1e-3}, "max_new_tokens": 16,
             "data": {"image_size": 64, "num_train": 4, "num_eval": 8, "restoration_fraction": 0.25, "seed": 0}}
    monkeypatch.setattr(models, "EMBEDDED_WARM_START_RECIPE", small)
    monkeypatch.setenv("PHOTOCRAFTER_CACHE", str(tmp_path))
    lines: list[str] = []
    built = models.ensure_embedded_warm_start(log=lines.append)
    assert any("building the embedded warm start" in line for line in lines)
    assert (built / "critic" / "config.json").is_file() and load_artist(built / "artist").prediction == "input_residual"
    stamp = (built / "artist" / "transformer" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    lines.clear()
    config = load_config(None, ["trainer.init_from=embedded"])
    assert models.resolve_model_paths(config) == (built / "critic", built / "artist")
    assert not lines and (built / "artist" / "transformer" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp


def test_sft_rl_and_evaluation_condition_the_dit_on_the_same_tokens(embedded_models):
    """One prefix rule: with ``artist.drop_prefix_tokens`` set, the warm start's SFT, the RL learner and the
    evaluation pipeline built from the same config hand the DiT identical H_c tokens and condition latents."""
    from learner.artist_learner import ArtistLearner
    from rollout.config import load_config
    from rollout.pipeline import PhotoPipeline
    from rollout.records.types import ArtistGroup, Conditioning
    from artist_actor.sampler import EditRequest

    config = load_config(None, ["artist.drop_prefix_tokens=12", "artist.resolution=64",
                                f"critic.min_pixels={PIXELS['min_pixels']}", f"critic.max_pixels={PIXELS['max_pixels']}"])
    task = _task("a", [EditOp(attribute="exposure", direction=1, level=2)])
    sft = ArtistSFT(embedded_models.artist, embedded_models.critic, stage="annotated", resolution=64, **PIXELS,
                    drop_prefix_tokens=config.artist.drop_prefix_tokens)
    hidden = sft._prepared(task)[0]
    in_sft = sft.conditioning([task])
    pipeline = PhotoPipeline.from_config(embedded_models.critic, embedded_models.artist, config)
    in_evaluation = pipeline.sampler.conditioning([EditRequest(condition_image=task.input, hidden=hidden, seed=0)],
                                                  (64, 64))
    learner = ArtistLearner(embedded_models.artist, artist_config=config.artist)
    group = ArtistGroup(task_id="a", critique_index=0, condition_image=task.input, edits=[],
                        conditioning=Conditioning(task_id="a", critique_index=0, hidden=hidden),
                        rewards=np.zeros(0, np.float32), optimality=np.zeros(0, np.float32))
    in_rl = learner.conditioning([group])
    assert in_sft.hidden.shape[1] == hidden.shape[0] - 12
    for other in (in_evaluation, in_rl):
        assert torch.equal(other.hidden, in_sft.hidden) and torch.equal(other.mask, in_sft.mask)
        assert torch.equal(other.image_latents, in_sft.image_latents)
