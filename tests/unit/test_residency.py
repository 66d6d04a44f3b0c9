"""What a colocated actor reports at a change of turn: its memory read around the change, and what it gave back."""

from __future__ import annotations

import numpy as np

from rollout.cluster.residency import MIB, TurnReport, measured, read_memory


def test_a_release_that_frees_host_memory_reports_the_drop_in_resident_set_size():
    held = [np.ones((96 * MIB) // 8)]  # 96 MiB, every page touched

    def free() -> str:
        held.clear()
        return "freed a buffer"

    report = TurnReport.from_dict(measured("artist-sampler-0", "release", free))
    assert report.how == "freed a buffer" and report.seconds >= 0
    assert report.released_bytes > 64 * MIB
    assert report.before.cuda_allocated_bytes == report.after.cuda_allocated_bytes == 0  # no GPU here
    assert report.after.rss_bytes == report.before.rss_bytes - report.released_bytes


def test_a_reading_is_this_processs_resident_set():
    before = read_memory().rss_bytes
    grown = np.ones((64 * MIB) // 8)
    assert read_memory().rss_bytes - before > 48 * MIB
    del grown
