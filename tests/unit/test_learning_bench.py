"""bench.learning's guards, without Ray: a folder keeps one measurement's sizes, and a failing command stops the
run with the stage, the command, its status and what it printed."""

from __future__ import annotations

import sys

import pytest

from rollout.config import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT))
from bench.learning import Bench, Sizes, StageFailed, parse_args  # noqa: E402


def test_a_folder_keeps_the_sizes_it_was_measured_with(tmp_path):
    Bench(tmp_path, Sizes(seeds=1, rl_steps=2), log=lambda line: None)
    with pytest.raises(StageFailed, match=r"other sizes \(rl_steps: 2 → 3\)"):
        Bench(tmp_path, Sizes(seeds=1, rl_steps=3), log=lambda line: None)
    more_seeds = Bench(tmp_path, Sizes(seeds=3, rl_steps=2), log=lambda line: None)
    assert more_seeds.sizes.seeds == 3, "more seeds continue the same measurement"
    command = (tmp_path / "stages" / "command.json").read_text()
    assert "--seeds 3" in command and "--rl-steps 2" in command and "--num-eval" not in command


def test_the_command_line_reads_back_into_the_same_sizes():
    out, sizes, docs = parse_args(["--seeds", "2", "--rl-steps", "7", "--critic-sft-lr", "0.002", "--set",
                                   "artist.resolution=32", "--rl-set", "learner.critic.lr=1e-4", "--no-docs"])
    assert (sizes.seeds, sizes.rl_steps, sizes.critic_sft_lr) == (2, 7, 0.002) and docs is None
    assert sizes.common_set == ["artist.resolution=32"] and sizes.rl_set == ["learner.critic.lr=1e-4"]
    again = parse_args(sizes.command_line().split()[3:] + ["--no-docs"])[1]
    assert again == sizes


def test_a_failing_command_names_the_stage_its_status_and_its_words(tmp_path):
    bench = Bench(tmp_path, Sizes(seeds=1), log=lambda line: None)
    with pytest.raises(StageFailed, match=r"stage rl-seed0: `photocrafter train .*` exited with status 1") as failed:
        bench.command("rl-seed0", "train", "--set", "trainer.steps=-1")
    assert "trainer.steps" in str(failed.value), "the command's own message is in the exception"
    assert "trainer.steps" in (tmp_path / "logs" / "rl-seed0.log").read_text()
