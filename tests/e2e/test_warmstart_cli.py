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
    # Two held-out photos: the baselines are measured once each, the model rows once per noise seed.
    results = json.loads((out / "results.json").read_text())
    counts = {row["method"]: row["count"] for row in results["rows"]}
    assert counts == {"identity": 2, "auto-retouch": 2, "oracle": 2, "SFT-only": 4, "RL-a": 4, "RL-b": 4}
    assert len(results["per_photo"]["RL-a"]["photometric"]) == 2
    # The same models under the same noise seeds: the paired difference is exactly zero.
    comparison = (out / "comparison.md").read_text()
    assert "RL* (2 rows: RL-a, RL-b) against SFT-only" in comparison and "+0.0000 [+0.0000, +0.0000]" in comparison
    assert (out / "metrics.png").is_file() and (out / "samples.png").is_file()
