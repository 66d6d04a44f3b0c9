"""Markdown tables of held-out results.

Owns how :class:`HeldOutResults` reads as text: the end-to-end table (the critic's greedy critique → the artist,
every method), the gain over the identity and the share of the identity → oracle gap closed (split retouch /
restoration, with scene-clustered intervals), the critic alone (format, r_sugg, −ρ(score, severity) of greedy
critiques), the artist alone (under the annotated critique), and paired comparisons of a group of runs against
a reference. Numbers come from ``rollout.evaluation.results`` and ``.statistics``; nothing here measures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from rollout.evaluation.metrics import PAIR_METRICS, spearman
from rollout.evaluation.results import BASELINES, HeldOutResults
from rollout.evaluation.statistics import (GroupComparison, Interval, clustered_mean, clustered_statistic,
                                           compare_group, gap_closed, paired_difference)
from rollout.records.types import TONE_ATTRIBUTES

KINDS = ("retouch", "restoration", "all")
DEFAULT_COMPARED = ("r_photo", "mean_attribute_error", "ssim", "critic_suggestion", "critic_format",
                    "annotated_r_photo", "annotated_mean_attribute_error")
"""What ``compare`` reports for a group against its reference, in this order (those both sides have)."""


def _cell(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}"


def _escape(cell: str) -> str:
    """A pipe inside a cell (|Δattr|) would split it: escape the ones not already escaped."""
    return cell.replace("\\|", "|").replace("|", "\\|")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(map(_escape, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(_escape, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def model_methods(results: HeldOutResults) -> list[str]:
    return [m for m in results.methods if m not in BASELINES]


def method_table(results: HeldOutResults) -> str:
    """End to end, one row per method: image metrics, attribute errors, r_photo, compliance."""
    header = ["method", "pairs (scenes)", "draws", "PSNR↑", "SSIM↑", "LPIPS↓",
              *(f"|Δ{k}|↓" for k in TONE_ATTRIBUTES), "mean |Δattr|↓", "r_photo↑", "compliance↑"]
    rows = []
    for method in results.methods:
        s = results.summary(method)
        draws = str(s.draws) + (f" (±{s.draw_spread:.2f} grey)" if s.draw_spread is not None else "")
        rows.append([method, f"{s.pairs} ({s.scenes})", draws, _cell(s.psnr, 2), _cell(s.ssim), _cell(s.lpips),
                     *(_cell(s.attribute_error[k], 2) for k in TONE_ATTRIBUTES), _cell(s.mean_attribute_error, 2),
                     _cell(s.photometric), _cell(s.compliance_rate)])
    return _table(header, rows)


def gap_intervals(results: HeldOutResults, name: str, key: str, kind: str, *, baseline_key: str | None = None,
                  seed: int = 0) -> tuple[Interval, Interval]:
    """(gain over the identity, share of the identity → oracle gap closed) of ``name`` (a method or a group)
    on the pairs of ``kind``; ``baseline_key`` reads the identity and oracle (default: ``key``)."""
    mask = results.subset(kind)
    scenes = [s for s, keep in zip(results.scenes, mask) if keep]
    values = results.values(name, key)[mask]
    identity = results.values("identity", baseline_key or key)[mask]
    oracle = results.values("oracle", baseline_key or key)[mask]
    return (paired_difference(values, identity, scenes, seed=seed),
            gap_closed(values, identity, oracle, scenes, seed=seed))


def gap_table(results: HeldOutResults, key: str, names: Sequence[str] | None = None, *,
              baseline_key: str | None = None) -> str:
    """Per row: the gain over the identity and the share of the identity → oracle gap closed on ``key``, for
    retouch pairs, restoration pairs and all pairs, each with its 95 % interval over scenes."""
    names = list(names) if names is not None else [m for m in results.methods if m not in ("identity", "oracle")]
    digits = PAIR_METRICS[key].digits
    kinds = [k for k in KINDS if results.subset(k).any()]
    header = ["method"]
    for kind in kinds:
        count = int(results.subset(kind).sum())
        header += [f"{kind} ({count}): gain over identity", f"{kind}: gap closed"]
    rows = []
    for name in names:
        row = [name]
        for kind in kinds:
            gain, closed = gap_intervals(results, name, key, kind, baseline_key=baseline_key)
            row += [gain.format(digits), closed.format(2)]
        rows.append(row)
    return _table(header, rows)


def critic_table(results: HeldOutResults, names: Sequence[str] | None = None) -> str:
    """The critic alone, from its greedy critiques: format rate, r_sugg (split by kind), score and
    −ρ(score, severity), each mean with its 95 % interval over scenes."""
    names = list(names) if names is not None else model_methods(results)
    header = ["method", "format rate↑", "r_sugg↑", "r_sugg retouch↑", "r_sugg restoration↑", "mean score",
              "−ρ(score, severity)↑"]
    rows = []
    for name in names:
        row = [name, clustered_mean(results.values(name, "critic_format"), results.scenes).format(3, False)]
        for kind in ("all", "retouch", "restoration"):
            mask = results.subset(kind)
            if not mask.any():
                row.append("—")
                continue
            row.append(clustered_mean(results.values(name, "critic_suggestion")[mask],
                                      [s for s, keep in zip(results.scenes, mask) if keep]).format(3, False))
        members = results.members(name)
        summaries = [results.summary(m) for m in members]
        scores = [s.mean_score for s in summaries if s.mean_score is not None]
        row.append(_cell(float(np.mean(scores)) if scores else None, 1))
        row.append(_score_correlation(results, members[0]).format(3, False) if len(members) == 1 else
                   _cell(float(np.mean([s.score_severity_spearman for s in summaries])), 3) + " (mean of runs)")
        rows.append(row)
    return _table(header, rows)


def _score_correlation(results: HeldOutResults, method: str) -> Interval:
    pairs = results.methods[method]
    scored = np.array([p.critique is not None and p.critique.score is not None for p in pairs])
    if scored.sum() < 3 or len({s for s, keep in zip(results.scenes, scored) if keep}) < 2:
        return Interval(math.nan, math.nan, math.nan, 0)
    scores = np.array([p.critique.score for p, keep in zip(pairs, scored) if keep], dtype=np.float64)
    severity = np.array([p.severity for p, keep in zip(pairs, scored) if keep], dtype=np.float64)
    scenes = [s for s, keep in zip(results.scenes, scored) if keep]

    def negated(indices: np.ndarray) -> float:
        return -spearman(scores[indices], severity[indices])
    return clustered_statistic(negated, len(scores), scenes)


def artist_table(results: HeldOutResults, names: Sequence[str] | None = None) -> str:
    """The artist alone, conditioned on each pair's annotated (correct) critique: r_photo and mean |Δattr| with
    their intervals, SSIM, and the share of the identity → oracle r_photo gap closed by kind."""
    names = list(names) if names is not None else model_methods(results)
    kinds = [k for k in KINDS if results.subset(k).any()]
    header = ["method", "r_photo↑", "mean |Δattr|↓", "SSIM↑", *(f"{k}: r_photo gap closed" for k in kinds)]
    rows = []
    for name in names:
        row = [name, clustered_mean(results.values(name, "annotated_r_photo"), results.scenes).format(3, False),
               clustered_mean(results.values(name, "annotated_mean_attribute_error"), results.scenes).format(2, False)]
        ssims = [results.summary(m).annotated_ssim for m in results.members(name)]
        row.append(_cell(float(np.mean(ssims))))
        for kind in kinds:
            _, closed = gap_intervals(results, name, "annotated_r_photo", kind, baseline_key="r_photo")
            row.append(closed.format(2))
        rows.append(row)
    return _table(header, rows)


def compare(results: HeldOutResults, group: str, reference: str,
            keys: Sequence[str] = DEFAULT_COMPARED) -> list[GroupComparison]:
    """``group`` (a group of runs or one method) against ``reference`` on every metric in ``keys`` both have."""
    comparisons = []
    for key in keys:
        if not (results.has(group, key) and results.has(reference, key)):
            continue
        metric = PAIR_METRICS[key]
        members = {m: results.values(m, key) for m in results.members(group)}
        comparisons.append(compare_group(key, members, (reference, results.values(reference, key)),
                                         results.scenes, metric.higher_is_better))
    if not comparisons:
        raise ValueError(f"{group} and {reference} share no metric to compare")
    return comparisons


def comparison_table(comparisons: Sequence[GroupComparison]) -> str:
    """One line per metric: each member's mean, their mean ± std, the reference's mean, and the paired
    difference with its 95 % interval over scenes and how many scenes moved the better way."""
    first = comparisons[0]
    header = ["metric", *first.members, "mean ± std", first.reference,
              f"paired Δ (95 % CI over {first.difference.clusters} scenes)", "scenes better"]
    rows = []
    for c in comparisons:
        metric = PAIR_METRICS[c.metric]
        d = metric.digits
        rows.append([metric.label, *(f"{v:.{d}f}" for v in c.member_means),
                     f"{np.mean(c.member_means):.{d}f} ± {c.spread:.{d}f}", f"{c.reference_mean:.{d}f}",
                     c.difference.format(d + 1) + (" ✓" if c.difference.excludes_zero else ""),
                     f"{c.scenes_better}/{c.scenes}"])
    title = (f"{', '.join(first.members)} against {first.reference}: per pair, the mean over the "
             f"{len(first.members)} run(s) minus {first.reference}; ✓ where the interval excludes zero.\n\n")
    return title + _table(header, rows)


def evaluation_report(results: HeldOutResults, comparisons: Sequence[Sequence[GroupComparison]] = ()) -> str:
    """Every table of one evaluation, with a line saying what each is."""
    info = results.info
    draws = info.get("samples", 1)
    draw_text = (f"one noise draw per pair (seed {info.get('seed', 0)} + pair index)" if draws == 1 else
                 f"{draws} noise draws per pair (seed {info.get('seed', 0)} + pair index + draw × pairs), averaged "
                 f"per pair")
    parts = [f"Held-out set: {info.get('manifest', '?')}: {len(results.task_ids)} pairs of "
             f"{len(set(results.scenes))} scenes ({int(results.subset('retouch').sum())} retouch, "
             f"{int(results.subset('restoration').sum())} restoration); model rows: the critic's greedy critique, "
             f"then the artist, {draw_text}. Intervals: 95 % percentile bootstrap over scenes.\n",
             "## End to end\n", method_table(results),
             "## r_photo: gain over the identity and share of the identity → oracle gap closed\n",
             gap_table(results, "r_photo"),
             "## mean |Δattr|: gain over the identity (negative is better) and gap closed\n",
             gap_table(results, "mean_attribute_error")]
    if model_methods(results):
        parts += ["## The critic alone (greedy critiques, no artist)\n", critic_table(results),
                  "## The artist alone (conditioned on the annotated critique)\n", artist_table(results)]
    for group in comparisons:
        parts += ["## Paired comparison\n", comparison_table(group)]
    return "\n".join(parts)
