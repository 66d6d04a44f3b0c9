"""A held-out evaluation's results: every method's per-pair records, their summaries, and the file they live in.

Owns :class:`HeldOutResults` — the pairs in order (id, scene, kind), one list of :class:`PairResult` per method
(``identity``, ``auto-retouch``, ``oracle`` and one per model), named groups of methods that are repeats of one
recipe (RL seeds), per-pair values of a method or of a group's mean, and ``results.json`` (written atomically,
read back by ``bench.learning`` and ``--compare``) — and :class:`MethodSummary`, one table row of means. The
statistics live in ``rollout.evaluation.statistics``, the markdown in ``rollout.evaluation.tables``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rollout.evaluation.metrics import PAIR_METRICS, PairResult, metric_values, spearman
from rollout.records.types import TONE_ATTRIBUTES

RESULTS_FORMAT = 2
BASELINES = ("identity", "auto-retouch", "oracle")


@dataclass(slots=True)
class MethodSummary:
    """Means over a method's held-out pairs (each pair counts once, its noise draws averaged first)."""

    method: str
    pairs: int
    scenes: int
    draws: int
    """Artist noise draws per pair."""
    psnr: float
    ssim: float
    lpips: float
    attribute_error: dict[str, float]
    mean_attribute_error: float
    photometric: float
    compliance_rate: float | None = None
    format_rate: float | None = None
    suggestion_rate: float | None = None
    """The critic's held-out r_sugg (greedy critiques)."""
    mean_score: float | None = None
    score_severity_spearman: float | None = None
    """−ρ(score, severity): +1 when the critic's score falls as the known degradation grows."""
    annotated_photometric: float | None = None
    annotated_mean_attribute_error: float | None = None
    annotated_ssim: float | None = None
    draw_spread: float | None = None
    """Mean |Δ| in grey levels between a pair's noise draws (None with one draw)."""


def summarise(method: str, pairs: Sequence[PairResult]) -> MethodSummary:
    """One row of means over ``pairs``."""
    if not pairs:
        raise ValueError(f"method {method!r} has no measured pairs")
    edits = [p.edit for p in pairs]
    errors = {k: float(np.mean([e.attribute_error[k] for e in edits])) for k in TONE_ATTRIBUTES}
    compliance = [e.compliance for e in edits if e.compliance is not None]
    critiques = [p.critique for p in pairs if p.critique is not None]
    annotated = [p.annotated_edit for p in pairs if p.annotated_edit is not None]
    spreads = [p.spread for p in pairs if p.spread is not None]
    row = MethodSummary(
        method=method, pairs=len(pairs), scenes=len({p.scene for p in pairs}), draws=max(p.draws for p in pairs),
        psnr=float(np.mean([e.psnr for e in edits])), ssim=float(np.mean([e.ssim for e in edits])),
        lpips=float(np.mean([e.lpips for e in edits])), attribute_error=errors,
        mean_attribute_error=float(np.mean(list(errors.values()))),
        photometric=float(np.mean([e.photometric for e in edits])),
        compliance_rate=float(np.mean(compliance)) if compliance else None,
        draw_spread=float(np.mean(spreads)) if spreads else None)
    if critiques:
        scored = [(p.critique.score, p.severity) for p in pairs
                  if p.critique is not None and p.critique.score is not None]
        row.format_rate = float(np.mean([c.format_ok for c in critiques]))
        row.suggestion_rate = float(np.mean([c.suggestion for c in critiques]))
        row.mean_score = float(np.mean([s for s, _ in scored])) if scored else None
        row.score_severity_spearman = (-spearman([s for s, _ in scored], [v for _, v in scored])
                                       if len(scored) >= 2 else math.nan)
    if annotated:
        row.annotated_photometric = float(np.mean([e.photometric for e in annotated]))
        row.annotated_mean_attribute_error = float(np.mean([e.mean_attribute_error for e in annotated]))
        row.annotated_ssim = float(np.mean([e.ssim for e in annotated]))
    return row


@dataclass(slots=True)
class HeldOutResults:
    """Every method's per-pair results on one held-out set (all methods on the same pairs, in one order)."""

    task_ids: list[str]
    scenes: list[str]
    kinds: list[str]
    methods: dict[str, list[PairResult]] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    """Name → methods that repeat one recipe (e.g. ``SFT+RL`` → its seeds); a group's value on a pair is the
    mean of its members'."""
    info: dict = field(default_factory=dict)
    """How the results were made (manifest, seeds, draws, checkpoints, skipped records)."""

    def add(self, method: str, pairs: Sequence[PairResult]) -> None:
        if [p.task_id for p in pairs] != self.task_ids:
            raise ValueError(f"{method}: its pairs are not the held-out set's pairs in order")
        self.methods[method] = list(pairs)

    def add_group(self, name: str, members: Sequence[str]) -> None:
        missing = [m for m in members if m not in self.methods]
        if not members or missing:
            raise ValueError(f"group {name}: {'no members' if not members else 'no results for ' + ', '.join(missing)}")
        self.groups[name] = list(members)

    def members(self, name: str) -> list[str]:
        """The methods behind ``name``: a group's members, or the method itself."""
        if name in self.groups:
            return self.groups[name]
        if name in self.methods:
            return [name]
        raise KeyError(f"no method or group named {name!r}; have {', '.join([*self.methods, *self.groups])}")

    def values(self, name: str, key: str) -> np.ndarray:
        """Per-pair ``PAIR_METRICS[key]`` of a method, or the mean over a group's members on each pair."""
        return np.mean([metric_values(self.methods[m], key) for m in self.members(name)], axis=0)

    def has(self, name: str, key: str) -> bool:
        return all(PAIR_METRICS[key].value(p) is not None for m in self.members(name) for p in self.methods[m])

    def summary(self, method: str) -> MethodSummary:
        return summarise(method, self.methods[method])

    def subset(self, kind: str) -> np.ndarray:
        """Boolean mask of the pairs of ``kind`` (``retouch``/``restoration``; ``all`` for every pair)."""
        return np.array([kind == "all" or k == kind for k in self.kinds])

    def to_json(self) -> dict:
        return {"format": RESULTS_FORMAT, "task_ids": self.task_ids, "scenes": self.scenes, "kinds": self.kinds,
                "methods": {m: [p.to_json() for p in pairs] for m, pairs in self.methods.items()},
                "groups": self.groups, "info": self.info,
                "summaries": [asdict(self.summary(m)) for m in self.methods]}

    @classmethod
    def from_json(cls, record: dict) -> HeldOutResults:
        if record.get("format") != RESULTS_FORMAT:
            raise ValueError(f"results format {record.get('format')!r}; this version reads {RESULTS_FORMAT} "
                             f"(re-run the evaluation)")
        results = cls(task_ids=list(record["task_ids"]), scenes=list(record["scenes"]), kinds=list(record["kinds"]),
                      info=dict(record.get("info", {})))
        for method, pairs in record["methods"].items():
            results.add(method, [PairResult.from_json(p) for p in pairs])
        for name, members in record.get("groups", {}).items():
            results.add_group(name, members)
        return results

    def write(self, path: str | Path) -> Path:
        """Write ``results.json`` atomically (a reader sees the old file or the whole new one)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
        partial.write_text(json.dumps(self.to_json(), indent=1, default=float, allow_nan=True) + "\n")
        os.replace(partial, path)
        return path

    @classmethod
    def read(cls, path: str | Path) -> HeldOutResults:
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not readable held-out results ({type(error).__name__}: {error})") from error

    def merged(self, other: HeldOutResults, rename: dict[str, str] | None = None) -> HeldOutResults:
        """These results plus ``other``'s methods (renamed by ``rename``), which must be on the same pairs; a
        method both hold (the baselines every evaluation measures) keeps these results' records."""
        if other.task_ids != self.task_ids:
            raise ValueError("cannot merge results of different held-out sets")
        merged = HeldOutResults(self.task_ids, self.scenes, self.kinds, dict(self.methods), dict(self.groups),
                                dict(self.info))
        for method, pairs in other.methods.items():
            name = (rename or {}).get(method, method)
            merged.methods.setdefault(name, pairs)
        return merged
