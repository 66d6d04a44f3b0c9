"""Scene-clustered intervals, the gap-closed column, group comparisons and the results file, on constructed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rollout.evaluation import EditMeasurement, HeldOutResults, PairResult
from rollout.evaluation.statistics import (clustered_mean, clustered_statistic, compare_group, gap_closed,
                                           paired_difference, scenes_improved)

SCENES = [f"scene{s}" for s in range(8) for _ in range(6)]
"""Eight scenes of six pairs each: the held-out layout of the embedded data."""


def _scene_dominated_difference() -> np.ndarray:
    """A small mean gain whose sign is set by which scene a pair came from: within a scene the six pairs agree
    closely, across scenes the gain swings between −0.04 and +0.10."""
    rng = np.random.default_rng(0)
    scene_effect = np.array([0.10, -0.03, 0.09, -0.04, 0.08, -0.03, 0.07, -0.04])
    return np.repeat(scene_effect, 6) + rng.normal(0.0, 0.005, 48)


def test_a_gain_carried_by_a_few_scenes_is_significant_over_pairs_but_not_over_scenes():
    difference = _scene_dominated_difference()
    pairs = [f"pair{i}" for i in range(48)]
    over_pairs = clustered_mean(difference, pairs)
    over_scenes = clustered_mean(difference, SCENES)
    assert over_pairs.estimate == pytest.approx(over_scenes.estimate) == pytest.approx(difference.mean())
    assert over_pairs.clusters == 48 and over_scenes.clusters == 8
    assert over_pairs.excludes_zero, "48 'independent' pairs make the small mean look certain"
    assert not over_scenes.excludes_zero, "eight scenes, four each way, cannot"
    assert (over_scenes.high - over_scenes.low) > 2 * (over_pairs.high - over_pairs.low)
    assert scenes_improved(difference, SCENES, higher_is_better=True) == (4, 8)


def test_a_gain_every_scene_shares_excludes_zero_over_scenes():
    rng = np.random.default_rng(1)
    reference = rng.uniform(0.2, 0.6, 48)
    better = reference + 0.05 + np.repeat(rng.normal(0, 0.01, 8), 6) + rng.normal(0, 0.01, 48)
    interval = paired_difference(better, reference, SCENES)
    assert interval.low < interval.estimate < interval.high and interval.low > 0.0
    assert interval.estimate == pytest.approx(np.mean(better - reference))
    alone = clustered_mean(better, ["one"] * 48)
    assert alone.estimate == pytest.approx(better.mean()) and alone.format().endswith("[n/a]"), \
        "one scene has a mean but no interval"
    with pytest.raises(ValueError, match="scene labels"):
        clustered_mean(better, SCENES[:10])


def test_unequal_scenes_weigh_every_pair_once():
    values = np.array([1.0, 1.0, 1.0, 0.0])
    interval = clustered_mean(values, ["a", "a", "a", "b"], resamples=4000)
    assert interval.estimate == pytest.approx(0.75)  # the mean over pairs, not the mean of scene means (0.5)
    assert interval.low == pytest.approx(0.0) and interval.high == pytest.approx(1.0)


def test_gap_closed_is_zero_at_the_identity_one_at_the_oracle_and_works_for_errors():
    rng = np.random.default_rng(2)
    identity = rng.uniform(0.2, 0.4, 48)
    oracle = identity + rng.uniform(0.3, 0.5, 48)
    assert gap_closed(identity, identity, oracle, SCENES).estimate == pytest.approx(0.0)
    assert gap_closed(oracle, identity, oracle, SCENES).estimate == pytest.approx(1.0)
    halfway = gap_closed((identity + oracle) / 2, identity, oracle, SCENES)
    assert halfway.estimate == pytest.approx(0.5) and halfway.low == pytest.approx(0.5) == pytest.approx(halfway.high)
    worse = gap_closed(identity - 0.1, identity, oracle, SCENES)
    assert worse.estimate < 0 and worse.high < 0, "worse than leaving the photo alone is a negative share"
    # An error metric (lower is better): the oracle's smaller error gives the same reading.
    errors_identity, errors_oracle = 10.0 + identity, 2.0 + identity
    assert gap_closed(errors_identity - 2.0, errors_identity, errors_oracle, SCENES).estimate == pytest.approx(0.25)
    assert math.isnan(gap_closed(identity, identity, identity, SCENES).estimate)


def test_a_statistic_of_the_pairs_resamples_scenes():
    severity = np.tile(np.arange(6, dtype=float), 8)
    scores = 90 - 8 * severity + np.random.default_rng(3).normal(0, 1, 48)
    correlation = clustered_statistic(lambda i: float(np.corrcoef(scores[i], severity[i])[0, 1]), 48, SCENES,
                                      resamples=300)
    assert correlation.estimate < -0.95 and correlation.high < -0.9


def _pairs(values: np.ndarray, kinds: list[str]) -> list[PairResult]:
    return [PairResult(task_id=f"p{i}", scene=SCENES[i], kind=kinds[i], severity=1.0, edit=EditMeasurement(
        psnr=30.0, ssim=0.8, lpips=0.1, attribute_error={k: 10 * (1 - v) for k in ("exposure", "contrast",
                                                                                    "saturation", "warmth")},
        photometric=float(v))) for i, v in enumerate(values)]


def test_seeds_are_averaged_per_pair_before_the_comparison():
    rng = np.random.default_rng(4)
    reference = rng.uniform(0.2, 0.6, 48)
    seed_noise = [rng.normal(0, 0.05, 48) for _ in range(3)]
    seeds = {f"RL-seed{s}": reference + 0.04 + noise for s, noise in enumerate(seed_noise)}
    comparison = compare_group("r_photo", seeds, ("SFT-only", reference), SCENES, higher_is_better=True)
    assert comparison.difference.estimate == pytest.approx(0.04 + np.mean(seed_noise))
    assert comparison.member_means == pytest.approx(tuple(v.mean() for v in seeds.values()))
    assert comparison.spread == pytest.approx(np.std([v.mean() for v in seeds.values()], ddof=1))
    assert comparison.difference.clusters == 8 and comparison.scenes == 8
    assert comparison.difference.excludes_zero


def test_results_round_trip_groups_and_the_gap_table(tmp_path):
    from rollout.evaluation.tables import compare, comparison_table, gap_intervals, gap_table

    kinds = ["restoration" if i % 6 == 5 else "retouch" for i in range(48)]
    identity = np.full(48, 0.4)
    oracle = np.full(48, 0.8)
    results = HeldOutResults(task_ids=[f"p{i}" for i in range(48)], scenes=SCENES, kinds=kinds,
                             info={"manifest": "m.jsonl", "seed": 0, "samples": 1})
    results.add("identity", _pairs(identity, kinds))
    results.add("oracle", _pairs(oracle, kinds))
    results.add("SFT-only", _pairs(np.full(48, 0.5), kinds))
    results.add("RL-seed0", _pairs(np.full(48, 0.6), kinds))
    results.add("RL-seed1", _pairs(np.full(48, 0.7), kinds))
    results.add_group("RL", ["RL-seed0", "RL-seed1"])
    path = results.write(tmp_path / "out" / "results.json")
    again = HeldOutResults.read(path)
    assert again.to_json() == results.to_json()
    assert again.values("RL", "r_photo") == pytest.approx(np.full(48, 0.65))
    gain, closed = gap_intervals(again, "RL", "r_photo", "retouch")
    assert gain.estimate == pytest.approx(0.25) and closed.estimate == pytest.approx(0.625)
    table = gap_table(again, "r_photo", ["SFT-only", "RL"])
    assert "| RL | +0.250 [+0.250, +0.250] | +0.62 [+0.62, +0.62] |" in table
    assert "retouch (40)" in table and "restoration (8)" in table
    comparisons = compare(again, "RL", "SFT-only")
    assert [c.metric for c in comparisons] == ["r_photo", "mean_attribute_error", "ssim"]
    text = comparison_table(comparisons)
    assert "| r_photo↑ | 0.600 | 0.700 | 0.650 ± 0.071 | 0.500 | +0.1500 [+0.1500, +0.1500] ✓ | 8/8 |" in text
    assert "mean \\|Δattr\\|↓" in text, "pipes inside a cell are escaped"
    with pytest.raises(ValueError, match="pairs"):
        results.add("short", _pairs(identity[:5], kinds))
    with pytest.raises(ValueError, match="no results for"):
        results.add_group("X", ["missing"])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        HeldOutResults.read(tmp_path / "bad.json")
