"""Figures of a held-out evaluation: per-method bars with scene-clustered intervals, and a sample grid.

Owns the two pictures ``photocrafter evaluate`` writes beside its tables (``metrics.png``, ``samples.png``).
Numbers come from :class:`HeldOutResults`; matplotlib is imported lazily and drawn off-screen.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rollout.evaluation.results import HeldOutResults
from rollout.evaluation.statistics import clustered_mean

BAR_METRICS = (("r_photo", "r_photo ↑"), ("mean_attribute_error", "mean |Δ attribute| ↓"), ("ssim", "SSIM ↑"))


def metric_bars(results: HeldOutResults, path: str | Path) -> Path:
    """One panel per metric of :data:`BAR_METRICS`: a bar per method, its 95 % interval over scenes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results.methods)
    figure, axes = plt.subplots(1, len(BAR_METRICS), figsize=(4.2 * len(BAR_METRICS), 3.8))
    for axis, (key, title) in zip(axes, BAR_METRICS):
        intervals = [clustered_mean(results.values(name, key), results.scenes, resamples=2_000) for name in names]
        means = np.array([i.estimate for i in intervals])
        errors = np.array([[i.estimate - i.low for i in intervals], [i.high - i.estimate for i in intervals]])
        axis.bar(names, means, yerr=errors, capsize=3, color="tab:blue")
        axis.set_title(title)
        axis.tick_params(axis="x", rotation=35)
        for label in axis.get_xticklabels():
            label.set_horizontalalignment("right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


def sample_grid(inputs: Sequence[np.ndarray], targets: Sequence[np.ndarray], outputs: dict[str, Sequence[np.ndarray]],
                path: str | Path, count: int = 4) -> Path:
    """Rows: the first ``count`` held-out photos; columns: input, each method's output, target."""
    from rollout.records.images import write_png

    rows = []
    for i in range(min(count, len(inputs))):
        cells = [inputs[i], *(outputs[name][i] for name in outputs if name != "identity"), targets[i]]
        rows.append(np.concatenate(cells, axis=1))
    write_png(path, np.concatenate(rows, axis=0))
    return Path(path)
