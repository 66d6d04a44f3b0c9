"""The warm-start commands end to end on the embedded models: sft (critic, adapt) → enhance → evaluate."""

from __future__ import annotations

import json

import numpy as np

from rollout.commands.cli import main


def test_sft_then_enhance_then_evaluate(tmp_path, capsys, embedded_models):
    from rollout.records.images import write_png

    warm = tmp_path / "warm"
    fast = ["--set", "critic.max_new_tokens=24", "--set", "data.num_train=4", "--set", "data.num_eval=2"]
    assert main(["sft", "--stage", "critic", "--out", str(warm), "--steps", "2", "--batch-size", "2", *fast]) == 0
    assert (warm / "critic" / "config.json").is_file()
    assert main(["sft", "--stage", "adapt", "--init-from", str(warm), "--out", str(warm), "--steps", "2",
                 "--batch-size", "2", *fast]) == 0
    manifest = json.loads((warm / "warmstart.json").read_text())
    assert set(manifest) == {"critic_sft", "adapt_sft"}

    photo = tmp_path / "photo.png"
    write_png(photo, np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8))
    capsys.readouterr()
    assert main(["enhance", str(photo), "--checkpoint", str(warm), "--out", str(tmp_path / "edit.png"), *fast]) == 0
    printed = capsys.readouterr().out
    assert "critique:" in printed and "score:" in printed
    from PIL import Image

    with Image.open(tmp_path / "edit.png") as edited:
        assert edited.size == (80, 48)

    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", f"SFT-only={warm}", "--out", str(out), "--samples", "0",
                 "--no-mlflow", *fast]) == 2
    assert "--samples 0" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", f"SFT-only={warm}", "--checkpoint", f"RL-a={warm}",
                 "--checkpoint", f"RL-b={warm}", "--compare", "RL=SFT-only", "--out", str(out), "--samples", "2",
                 "--no-mlflow", *fast]) == 0
    table = (out / "table.md").read_text()
    for method in ("identity", "auto-retouch", "oracle", "SFT-only", "RL-a"):
        assert f"| {method} |" in table
    for section in ("## The critic alone", "## The artist alone", "gap closed"):
        assert section in table
    # Two held-out pairs of two scenes: every row counts pairs, the model rows averaging their two noise draws.
    from rollout.evaluation import HeldOutResults

    results = HeldOutResults.read(out / "results.json")
    assert len(results.task_ids) == 2 and len(set(results.scenes)) == 2
    assert {m: (s.pairs, s.draws) for m in results.methods for s in [results.summary(m)]} == {
        "identity": (2, 1), "auto-retouch": (2, 1), "oracle": (2, 1), "SFT-only": (2, 2), "RL-a": (2, 2),
        "RL-b": (2, 2)}
    model = results.summary("RL-a")
    assert model.format_rate is not None and model.suggestion_rate is not None
    assert model.annotated_photometric is not None and model.draw_spread is not None
    assert results.groups == {"RL": ["RL-a", "RL-b"]}
    # The same models under the same noise seeds: the paired difference is exactly zero.
    comparison = (out / "comparison.md").read_text()
    assert "RL-a, RL-b against SFT-only" in comparison and "+0.0000 [+0.0000, +0.0000]" in comparison
    assert (out / "metrics.png").is_file() and (out / "samples.png").is_file()


def test_a_critique_given_as_text_conditions_the_artist_as_the_generated_one_does(embedded_models):
    """Teacher-forcing the critic's own greedy critique reproduces its H_c exactly (the annotated-critique rows
    of evaluate rest on this). The critic first learns one photo's annotation, so that its greedy response is a
    whole critique ending in end-of-turn, as a warm-started critic's are."""
    from learner.sft import CriticSFT, annotate_task
    from rollout.pipeline import CriticRunner, PhotoPipeline
    from rollout.records.types import EditOp, PhotoTask

    photo = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    task = PhotoTask(task_id="t", input=photo, target=photo,
                     known_ops=(EditOp(attribute="exposure", direction=1, level=2),))
    pixels = dict(min_pixels=3136, max_pixels=12544)
    sft = CriticSFT(embedded_models.critic, lr=3e-3, **pixels)
    for _ in range(40):
        sft.step([task])
    pipeline = PhotoPipeline(embedded_models.critic, embedded_models.artist, max_new_tokens=48, **pixels)
    pipeline.critic = CriticRunner(embedded_models.critic, max_new_tokens=48, model=sft.model,
                                   processor=sft.processor, **pixels)
    greedy = pipeline.critic.critique(photo)
    assert greedy.text == annotate_task(task)
    forced = pipeline.critic.teacher_forced(photo, greedy.text)
    assert forced.hidden.shape == greedy.hidden.shape and np.array_equal(forced.hidden, greedy.hidden)
    given = pipeline.edit_with_critique(photo, forced, [5])[0].edited
    assert np.array_equal(given, pipeline.enhance_with_seeds(photo, [5])[0].edited)
