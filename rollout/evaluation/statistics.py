"""Confidence intervals for held-out results, clustered by scene.

Owns the statistics a held-out table reports beside its means: the percentile bootstrap over **scenes**
(several pairs cropped from one photo share its content, so they are not independent samples; resampling pairs
would count each scene's luck once per crop and give intervals that are too narrow), paired differences
between two methods on the same pairs, the gain of a method over the identity and the fraction of the
identity → oracle gap it closes, and the comparison of a group of runs (e.g. one per RL seed, averaged per
pair) against a reference run. Every function takes per-pair numbers and each pair's scene; passing the pair
ids as scenes gives the pair-level bootstrap. It must not know where the numbers came from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 10_000
CONFIDENCE = 0.95


@dataclass(frozen=True, slots=True)
class Interval:
    """A point estimate with its percentile-bootstrap interval over ``clusters`` resampled scenes."""

    estimate: float
    low: float
    high: float
    clusters: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0

    def format(self, digits: int = 3, signed: bool = True) -> str:
        """``+0.012 [+0.004, +0.020]`` (``n/a`` where the estimate is undefined, ``[n/a]`` where the interval is:
        one scene has no spread to resample)."""
        if not math.isfinite(self.estimate):
            return "n/a"
        spec = f"{'+' if signed else ''}.{digits}f"
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return f"{self.estimate:{spec}} [n/a]"
        return f"{self.estimate:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"

    def to_json(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "clusters": self.clusters}


def _cluster_codes(clusters: Sequence[str], size: int) -> tuple[np.ndarray, int]:
    if len(clusters) != size:
        raise ValueError(f"{size} values but {len(clusters)} scene labels")
    _, codes = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    return codes, int(codes.max()) + 1 if size else 0


def cluster_weights(clusters: Sequence[str], size: int, *, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """``[resamples, size]``: how often each pair appears in each bootstrap replicate when the scenes (not the
    pairs) are drawn with replacement, every pair of a drawn scene coming along."""
    codes, count = _cluster_codes(clusters, size)
    if count < 2:
        raise ValueError(f"a clustered bootstrap needs at least 2 scenes; got {count}")
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, count, (resamples, count))
    per_scene = np.zeros((resamples, count))
    np.add.at(per_scene, (np.arange(resamples)[:, None], drawn), 1.0)
    return per_scene[:, codes]


def _single_scene(clusters: Sequence[str], size: int) -> bool:
    """True when every pair comes from one scene: the mean stands, but there is no interval to give."""
    return _cluster_codes(clusters, size)[1] < 2


def _interval(estimate: float, replicates: np.ndarray, clusters: int, confidence: float) -> Interval:
    replicates = replicates[np.isfinite(replicates)]
    if not math.isfinite(estimate) or replicates.size == 0:
        return Interval(math.nan, math.nan, math.nan, clusters)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(replicates, [tail, 100.0 - tail])
    return Interval(float(estimate), float(low), float(high), clusters)


def clustered_mean(values: Sequence[float], clusters: Sequence[str], *, resamples: int = RESAMPLES,
                   confidence: float = CONFIDENCE, seed: int = 0) -> Interval:
    """The mean over pairs with the bootstrap interval of resampled scenes."""
    x = np.asarray(values, dtype=np.float64)
    if _single_scene(clusters, x.size):
        return Interval(float(x.mean()), math.nan, math.nan, 1)
    weights = cluster_weights(clusters, x.size, resamples=resamples, seed=seed)
    return _interval(float(x.mean()), weights @ x / weights.sum(axis=1), len(set(clusters)), confidence)


def paired_difference(values: Sequence[float], reference: Sequence[float], clusters: Sequence[str], *,
                      resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0) -> Interval:
    """mean(values − reference) over pairs (two methods on the same pairs), resampling scenes."""
    a, b = np.asarray(values, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a paired difference needs two equal-length 1-D series; got {a.shape} and {b.shape}")
    return clustered_mean(a - b, clusters, resamples=resamples, confidence=confidence, seed=seed)


def gap_closed(values: Sequence[float], identity: Sequence[float], oracle: Sequence[float], clusters: Sequence[str],
               *, resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0) -> Interval:
    """(mean(values) − mean(identity)) / (mean(oracle) − mean(identity)): 0 for the identity, 1 for the oracle,
    negative when the method is worse than leaving the photo alone. The same formula serves metrics where lower
    is better (the oracle's lower error makes the denominator negative). NaN when the oracle does not differ
    from the identity."""
    x, i, o = (np.asarray(v, dtype=np.float64) for v in (values, identity, oracle))
    if not x.shape == i.shape == o.shape:
        raise ValueError(f"gap_closed needs three equal-length series; got {x.shape}, {i.shape}, {o.shape}")
    gap = float((o - i).mean())
    if abs(gap) < 1e-12:
        return Interval(math.nan, math.nan, math.nan, len(set(clusters)))
    if _single_scene(clusters, x.size):
        return Interval(float((x - i).mean()) / gap, math.nan, math.nan, 1)
    weights = cluster_weights(clusters, x.size, resamples=resamples, seed=seed)
    gaps = weights @ (o - i)
    with np.errstate(divide="ignore", invalid="ignore"):
        replicates = np.where(np.abs(gaps) > 1e-12, (weights @ (x - i)) / gaps, np.nan)
    return _interval(float((x - i).mean()) / gap, replicates, len(set(clusters)), confidence)


def clustered_statistic(statistic: Callable[[np.ndarray], float], size: int, clusters: Sequence[str], *,
                        resamples: int = 2_000, confidence: float = CONFIDENCE, seed: int = 0) -> Interval:
    """Any statistic of the pairs (``statistic(indices)`` with indices into the pairs, repeats allowed) with
    its interval over resampled scenes, e.g. a rank correlation. Slower than :func:`clustered_mean`."""
    codes, count = _cluster_codes(clusters, size)
    if count < 2:
        return Interval(float(statistic(np.arange(size))), math.nan, math.nan, count)
    members = [np.flatnonzero(codes == c) for c in range(count)]
    rng = np.random.default_rng(seed)
    replicates = np.array([statistic(np.concatenate([members[c] for c in rng.integers(0, count, count)]))
                           for _ in range(resamples)])
    return _interval(float(statistic(np.arange(size))), replicates, count, confidence)


def scenes_improved(difference: Sequence[float], clusters: Sequence[str], higher_is_better: bool) -> tuple[int, int]:
    """(scenes whose mean paired difference goes the better way, scenes): a count a reader can check by eye."""
    d = np.asarray(difference, dtype=np.float64)
    codes, count = _cluster_codes(clusters, d.size)
    means = np.array([d[codes == c].mean() for c in range(count)])
    better = means > 0 if higher_is_better else means < 0
    return int(better.sum()), count


@dataclass(frozen=True, slots=True)
class GroupComparison:
    """A group of runs (e.g. one per seed) against a reference run on one metric, over the same pairs."""

    metric: str
    members: tuple[str, ...]
    member_means: tuple[float, ...]
    reference: str
    reference_mean: float
    difference: Interval
    """mean over pairs of (the members' mean on the pair − the reference's), clustered by scene."""
    scenes_better: int
    scenes: int

    @property
    def spread(self) -> float:
        """Standard deviation of the members' means (0 for one member)."""
        return float(np.std(self.member_means, ddof=1)) if len(self.member_means) > 1 else 0.0

    def to_json(self) -> dict:
        return {"metric": self.metric, "members": list(self.members), "member_means": list(self.member_means),
                "reference": self.reference, "reference_mean": self.reference_mean,
                "difference": self.difference.to_json(), "scenes_better": self.scenes_better,
                "scenes": self.scenes}


def compare_group(metric: str, members: dict[str, np.ndarray], reference: tuple[str, np.ndarray],
                  clusters: Sequence[str], higher_is_better: bool, *, seed: int = 0) -> GroupComparison:
    """``members``' per-pair values (averaged over the members on each pair, so seeds count as repeats of one
    method, not as more pairs) against ``reference``'s, with the difference's scene-clustered interval."""
    if not members:
        raise ValueError(f"{metric}: a comparison needs at least one member run")
    stacked = np.stack(list(members.values()))
    name, values = reference
    if stacked.shape[1] != len(values):
        raise ValueError(f"{metric}: members have {stacked.shape[1]} pairs but {name} has {len(values)}")
    difference = stacked.mean(axis=0) - np.asarray(values, dtype=np.float64)
    better, scenes = scenes_improved(difference, clusters, higher_is_better)
    return GroupComparison(
        metric=metric, members=tuple(members), member_means=tuple(float(v.mean()) for v in stacked),
        reference=name, reference_mean=float(np.mean(values)),
        difference=clustered_mean(difference, clusters, seed=seed), scenes_better=better, scenes=scenes)
