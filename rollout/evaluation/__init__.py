"""Held-out evaluation: what ``photocrafter evaluate`` and ``bench.learning`` measure and how they report it.

- ``metrics``: per-pair measurements of an edit (PSNR, SSIM, LPIPS, |Δ attribute|, r_photo, compliance) and of a
  greedy critique (format, score, r_sugg); :class:`PairResult`, one method on one pair with its scene and kind.
- ``baselines``: the rows without a model (identity, auto-retouch, oracle).
- ``results``: :class:`HeldOutResults`, every method's pairs, run groups (seeds), ``results.json``; summaries.
- ``statistics``: bootstrap intervals clustered by scene, paired differences, gap closed, group comparisons.
- ``tables``: the markdown.
- ``figures``: bar charts and sample grids.

It must not train or load models: model rows come from ``rollout.pipeline`` through the command.
"""

from rollout.evaluation.baselines import auto_retouch, neutral_white_balance_gains, oracle_output
from rollout.evaluation.metrics import (PAIR_METRICS, CritiqueMeasurement, EditMeasurement, PairResult, draw_spread,
                                        mean_edit, measure_critique, measure_edit, psnr, scene_of, spearman, ssim)
from rollout.evaluation.results import BASELINES, HeldOutResults, MethodSummary, summarise
from rollout.evaluation.statistics import (GroupComparison, Interval, clustered_mean, compare_group, gap_closed,
                                           paired_difference)

__all__ = ["BASELINES", "PAIR_METRICS", "CritiqueMeasurement", "EditMeasurement", "GroupComparison", "HeldOutResults",
           "Interval", "MethodSummary", "PairResult", "auto_retouch", "clustered_mean", "compare_group", "draw_spread",
           "gap_closed", "mean_edit", "measure_critique", "measure_edit", "neutral_white_balance_gains",
           "oracle_output", "paired_difference", "psnr", "scene_of", "spearman", "ssim", "summarise"]
