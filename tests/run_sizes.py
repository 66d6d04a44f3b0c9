"""Config overrides that size the test suite's training runs to what their assertions need.

The embedded default is sized to learn (64 vision tokens per photo, K = 4 edits per critique, RL from the
embedded warm start); the tests of the loop's plumbing — resume, colocation, job submission, faults, placement —
assert on what the run did, not on what it learned, and run 4-6 steps of it. A 4-step run of
tests/e2e/test_train_cli.py took 16-17 s a step at the embedded default's sizes (10-12 s of it the learners'
update) and 8-9.5 s with a 56-pixel photo (4 vision tokens) and 2 edits per critique, on the same code path.
Tests of learning itself keep the default sizes.
"""

from __future__ import annotations

SMALL = ["critic.min_pixels=3136", "critic.max_pixels=3136", "artist.edits_per_critique=2"]
"""56 × 56 pixels for the critic (4 vision tokens: the tiny critic's patch 14, merge 2) and the smallest group of
edits that has a spread."""

PLUMBING = [*SMALL, "trainer.init_from="]
"""Overrides for a run that tests plumbing: the small sizes, from the random-initialised tiny models. The
embedded warm start (1000 critic SFT steps, minutes of both cores on a fresh machine) is what the loop learns
from, not how it runs: tests/unit/test_sft.py builds and resolves it at a small recipe, and ``make train`` runs
from it."""


def cli_sets(overrides: list[str]) -> list[str]:
    """``overrides`` as ``--set KEY=VALUE`` arguments for the ``photocrafter`` commands."""
    return [part for override in overrides for part in ("--set", override)]
