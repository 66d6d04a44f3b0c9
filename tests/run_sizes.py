"""Config overrides that size the test suite's training runs to what their assertions need.

The embedded default is sized to learn (64 vision tokens per photo, K = 4 edits per critique); the tests of the
loop's plumbing — resume, colocation, job submission, faults, placement — assert on what the run did, not on
what it learned, and run 4-6 steps of it. At the embedded default's sizes the critic's update alone was 10 s of
a 17 s step; with a 56-pixel photo (4 vision tokens) and 2 edits per critique a step takes about 8 s, the same
code path. Tests of learning itself keep the default sizes.
"""

from __future__ import annotations

SMALL_CRITIC_INPUT = ["critic.min_pixels=3136", "critic.max_pixels=3136"]
"""56 × 56 pixels: one 4-token vision block per photo (the tiny critic's patch 14, merge 2)."""

PLUMBING = [*SMALL_CRITIC_INPUT, "artist.edits_per_critique=2"]
"""Overrides for a run that tests plumbing: the smallest critic input and group of edits the loop accepts."""


def cli_sets(overrides: list[str]) -> list[str]:
    """``overrides`` as ``--set KEY=VALUE`` arguments for the ``photocrafter`` commands."""
    return [part for override in overrides for part in ("--set", override)]
