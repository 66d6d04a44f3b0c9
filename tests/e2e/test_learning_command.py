"""``python -m bench.learning`` end to end at a tiny size: every stage through the real commands, the report from
their files, and a re-run that skips what is done and redoes only what was lost.

One seed, two RL steps with a checkpoint after each, four held-out pairs (four scenes), the artist at 32 px and
short critiques: the same stages as the full measurement, a few minutes on the 2-core machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from rollout.config import PROJECT_ROOT
from run_sizes import SMALL, cli_sets

TINY = ["--seeds", "1", "--num-train", "4", "--num-eval", "4", "--critic-sft-steps", "2", "--critic-sft-batch", "2",
        "--artist-sft-steps", "2", "--artist-sft-batch", "2", "--rl-steps", "2", "--rl-batch", "1",
        "--checkpoint-every", "1", "--curve-pairs", "2", "--set", "critic.max_new_tokens=24",
        "--set", "artist.resolution=32", *cli_sets(SMALL)]


def bench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "bench.learning", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=1500)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    root = tmp_path_factory.mktemp("learning")
    out, docs = root / "out", root / "docs" / "results.md"
    done = bench("--out", str(out), "--docs", str(docs), *TINY)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return out, docs, done


def test_every_stage_runs_once_and_the_report_comes_from_their_files(measured):
    out, docs, done = measured
    stages = {p.stem for p in (out / "stages").glob("*.json")}
    assert stages == {"sizes", "command", "warmstart", "eval-SFT-only", "rl-seed0", "export-seed0", "eval-SFT+RL-seed0@1",
                      "eval-SFT+RL-seed0", "sft-control", "eval-SFT-control"}
    for stage in stages - {"sizes", "command"}:
        assert f"[bench.learning] {stage}: done in" in done.stdout, stage
    rl = json.loads((out / "stages" / "rl-seed0.json").read_text())
    assert rl["checkpoints"] == [1, 2]
    assert set(rl["training"]["reward/artist/total/mean"]) == {"1", "2"}, "per-step training rewards from MLflow"
    control = json.loads((out / "stages" / "sft-control.json").read_text())
    assert (control["steps"], control["critic_batch"], control["artist_batch"]) == (2, 4, 8), \
        "the control: RL's optimiser steps, with an RL update's samples (1 photo × G 4 × K 2)"
    assert json.loads((out / "models" / "SFT-control" / "warmstart.json").read_text())["critic_sft"]["steps"] == 2

    markdown = docs.read_text()
    for heading in ("## What was met", "## Held-out results of the final models", "### SFT+RL vs SFT-only",
                    "### SFT+RL vs SFT-control", "### SFT-control vs SFT-only", "## Learning curves",
                    "### The critic alone", "### The artist alone"):
        assert heading in markdown, heading
    for figure in ("learning-curves.png", "training.png", "heldout-metrics.png"):
        assert (docs.parent / "results" / figure).stat().st_size > 1000
        assert f"(results/{figure})" in markdown
    # Numbers in the page are the files' numbers: the SFT-only row's r_photo is the one its evaluation stored.
    stored = json.loads((out / "eval" / "SFT-only" / "results.json").read_text())
    row = next(s for s in stored["summaries"] if s["method"] == "SFT-only")
    assert "| SFT-only | 4 (4) | 1 |" in markdown and f"{row['photometric']:.3f}" in markdown
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert [p["step"] for p in summary["curves"]["curves"]["r_photo"]["seed0"]] == [0, 1, 2]
    assert summary["curves"]["pairs"] == 2


def test_a_re_run_skips_what_is_done_and_redoes_only_what_is_missing(measured):
    out, docs, _ = measured
    shutil.rmtree(out / "eval" / "SFT-control")
    (out / "stages" / "eval-SFT-control.json").unlink()
    before = (out / "stages" / "rl-seed0.json").read_text()
    again = bench("--out", str(out), "--docs", str(docs), *TINY)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert "[bench.learning] eval-SFT-control: done in" in again.stdout
    for stage in ("warmstart", "rl-seed0", "export-seed0", "sft-control", "eval-SFT+RL-seed0"):
        assert f"[bench.learning] {stage}: done earlier" in again.stdout, stage
    assert (out / "stages" / "rl-seed0.json").read_text() == before
    assert (out / "eval" / "SFT-control" / "results.json").is_file()
