"""Per-pair measurements of a held-out evaluation: image metrics of an edit, the critic's metrics of a critique.

Owns what one method scores on one held-out pair: PSNR, SSIM, LPIPS (given), |Δ attribute| to the target per
tone attribute, r_photo and compliance of an edit (:class:`EditMeasurement`); format, score and the suggestion
reward r_sugg of a greedy critique, which depend on the critic alone (:class:`CritiqueMeasurement`); and the
record of one method on one pair (:class:`PairResult`) carrying the pair's scene and kind, which every
statistic downstream is clustered and split by. The per-pair numbers a table or a comparison reads are named
in :data:`PAIR_METRICS`. Attributes and rewards come from ``rewards`` so evaluation and training measure alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from artist_actor.codec import psnr  # the codec report and evaluation measure PSNR alike
from rollout.records.types import TONE_ATTRIBUTES, ParsedCritique, PhotoTask, Suggestion

PSNR_CAP_DB = 100.0
"""PSNR of an output identical to its target is infinite; means use this value instead."""


def _gaussian_filter(channel: np.ndarray, sigma: float = 1.5, radius: int = 5) -> np.ndarray:
    """'Valid' separable Gaussian filtering (the 11-tap window of Wang et al. 2004)."""
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(offsets ** 2) / (2 * sigma ** 2))
    kernel /= kernel.sum()
    rows = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="valid"), 1, channel)
    return np.apply_along_axis(lambda c: np.convolve(c, kernel, mode="valid"), 0, rows)


def ssim(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean structural similarity (Gaussian σ = 1.5, 11×11, K1 = 0.01, K2 = 0.03) averaged over RGB channels."""
    if reference.shape != test.shape:
        raise ValueError(f"SSIM needs same-sized images; got {reference.shape} and {test.shape}")
    if min(reference.shape[:2]) < 11:
        raise ValueError(f"SSIM needs images of at least 11×11 pixels; got {reference.shape[:2]}")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for channel in range(reference.shape[2]):
        x = reference[..., channel].astype(np.float64)
        y = test[..., channel].astype(np.float64)
        mu_x, mu_y = _gaussian_filter(x), _gaussian_filter(y)
        var_x = _gaussian_filter(x * x) - mu_x ** 2
        var_y = _gaussian_filter(y * y) - mu_y ** 2
        cov = _gaussian_filter(x * y) - mu_x * mu_y
        index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
        values.append(float(index.mean()))
    return float(np.mean(values))


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation with average ranks for ties; NaN when either side is constant or n < 2."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"spearman needs equal lengths; got {x.shape} and {y.shape}")
    if x.size < 2:
        return math.nan
    rank_x, rank_y = _average_ranks(x), _average_ranks(y)
    if rank_x.std() == 0 or rank_y.std() == 0:
        return math.nan
    return float(np.corrcoef(rank_x, rank_y)[0, 1])


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.arange(1, values.size + 1)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


@dataclass(slots=True)
class EditMeasurement:
    """The metrics of one output photo against its pair's target (and input, for r_photo and compliance)."""

    psnr: float
    """dB, capped at :data:`PSNR_CAP_DB`."""
    ssim: float
    lpips: float
    attribute_error: dict[str, float]
    """|a_k(output) − a_k(target)| per tone attribute."""
    photometric: float
    """r_photo of the output."""
    compliance: float | None = None
    """1 when the output followed every tone suggestion of the critique it was conditioned on (None: none)."""

    @property
    def mean_attribute_error(self) -> float:
        return float(np.mean([self.attribute_error[k] for k in TONE_ATTRIBUTES]))


def measure_edit(source: np.ndarray, output: np.ndarray, target: np.ndarray, *, lpips_distance: float,
                 suggestions: Sequence[Suggestion] | None = None, attribute_resolution: int = 512,
                 compliance_margin: float = 0.5) -> EditMeasurement:
    """The metrics of ``output`` (an edit of ``source``) against ``target``."""
    from rewards.artist import compliance_reward, photometric_reward
    from rewards.attributes import compute_attributes

    before = compute_attributes(source, attribute_resolution)
    after = compute_attributes(output, attribute_resolution)
    goal = compute_attributes(target, attribute_resolution)
    compliance = None
    if suggestions is not None:
        compliance = float(compliance_reward(suggestions, before, after, compliance_margin) == 1.0)
    return EditMeasurement(
        psnr=min(psnr(target, output), PSNR_CAP_DB), ssim=ssim(target, output), lpips=float(lpips_distance),
        attribute_error={k: abs(after[k] - goal[k]) for k in TONE_ATTRIBUTES},
        photometric=photometric_reward(before, after, goal), compliance=compliance)


def mean_edit(draws: Sequence[EditMeasurement]) -> EditMeasurement:
    """The mean of one pair's edits over the artist's noise draws (a pair counts once, however many draws)."""
    if not draws:
        raise ValueError("mean_edit needs at least one draw")
    compliance = [d.compliance for d in draws if d.compliance is not None]
    return EditMeasurement(
        psnr=float(np.mean([d.psnr for d in draws])), ssim=float(np.mean([d.ssim for d in draws])),
        lpips=float(np.mean([d.lpips for d in draws])),
        attribute_error={k: float(np.mean([d.attribute_error[k] for d in draws])) for k in TONE_ATTRIBUTES},
        photometric=float(np.mean([d.photometric for d in draws])),
        compliance=float(np.mean(compliance)) if compliance else None)


def draw_spread(outputs: Sequence[np.ndarray]) -> float | None:
    """Mean |Δ| in grey levels between each later draw of a pair and its first (None for a single draw): 0 when
    the artist's noise does not change its edit, which is what decides whether draws are distinct samples."""
    if len(outputs) < 2:
        return None
    first = outputs[0].astype(np.float64)
    return float(np.mean([np.abs(o.astype(np.float64) - first).mean() for o in outputs[1:]]))


@dataclass(slots=True)
class CritiqueMeasurement:
    """One greedy critique of a pair's input, scored against what is known of the pair (no artist involved)."""

    format_ok: bool
    score: float | None
    """The critique's 0–100 score of the input (None when missing)."""
    suggestion: float
    """r_sugg: the suggestions fix the pair (retouch: applying them by rule moves the input toward the target
    in attribute space; restoration: every degradation label has its corrective suggestion)."""
    text: str = ""


def measure_critique(task: PhotoTask, source: np.ndarray, target: np.ndarray, parsed: ParsedCritique, text: str,
                     *, attribute_resolution: int = 512) -> CritiqueMeasurement:
    """Format, score and r_sugg of the critique ``parsed`` of ``task``'s input, as the critic's reward scores
    them (``rewards.critic``); r_sugg is scored on whatever suggestions parsed, the format rate says how many
    responses were well formed."""
    from rewards.attributes import compute_attributes
    from rewards.critic import suggestion_reward

    suggestion = suggestion_reward(
        kind=task.kind, suggestions=parsed.suggestions, degradations=task.degradations, input_image=source,
        target_attrs=compute_attributes(target, attribute_resolution), resolution=attribute_resolution)
    return CritiqueMeasurement(format_ok=bool(parsed.format_ok), score=parsed.score, suggestion=float(suggestion),
                               text=text)


def scene_of(task: PhotoTask) -> str:
    """The scene a pair was made from: its ``source`` photo, or the pair itself when the manifest names none
    (then every pair is its own cluster)."""
    return task.source or task.task_id


@dataclass(slots=True)
class PairResult:
    """One method on one held-out pair."""

    task_id: str
    scene: str
    """Statistics resample scenes, not pairs: pairs cropped from one photo are not independent."""
    kind: str
    """``retouch`` or ``restoration``."""
    severity: float
    """Known degradation severity of the pair (the critic's score should fall as it grows)."""
    edit: EditMeasurement
    """The method's output, averaged over its noise draws (the critic's greedy critique → the artist)."""
    draws: int = 1
    spread: float | None = None
    """:func:`draw_spread` of the draws (None with one draw)."""
    critique: CritiqueMeasurement | None = None
    """The critic's greedy critique (model rows only)."""
    annotated_edit: EditMeasurement | None = None
    """The artist conditioned on the pair's annotated (correct) critique: the artist apart from the critic."""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, record: dict) -> PairResult:
        fields = dict(record)
        fields["edit"] = EditMeasurement(**record["edit"])
        if record.get("annotated_edit") is not None:
            fields["annotated_edit"] = EditMeasurement(**record["annotated_edit"])
        if record.get("critique") is not None:
            fields["critique"] = CritiqueMeasurement(**record["critique"])
        return cls(**fields)


@dataclass(frozen=True, slots=True)
class PairMetric:
    """A number every pair of a method has (or None where it does not apply), and which way is better."""

    label: str
    value: Callable[[PairResult], float | None]
    higher_is_better: bool
    digits: int = 3


def _edit_value(name: str, annotated: bool = False) -> Callable[[PairResult], float | None]:
    def value(pair: PairResult) -> float | None:
        edit = pair.annotated_edit if annotated else pair.edit
        return None if edit is None else float(getattr(edit, name))
    return value


def _critique_value(name: str) -> Callable[[PairResult], float | None]:
    def value(pair: PairResult) -> float | None:
        return None if pair.critique is None else float(getattr(pair.critique, name))
    return value


PAIR_METRICS: dict[str, PairMetric] = {
    "r_photo": PairMetric("r_photo↑", _edit_value("photometric"), True),
    "mean_attribute_error": PairMetric("mean |Δattr|↓", _edit_value("mean_attribute_error"), False, 2),
    "ssim": PairMetric("SSIM↑", _edit_value("ssim"), True),
    "psnr": PairMetric("PSNR↑", _edit_value("psnr"), True, 2),
    "compliance": PairMetric("compliance↑", _edit_value("compliance"), True),
    "critic_suggestion": PairMetric("critic r_sugg↑", _critique_value("suggestion"), True),
    "critic_format": PairMetric("critic format rate↑", _critique_value("format_ok"), True),
    "annotated_r_photo": PairMetric("artist r_photo, annotated critique↑", _edit_value("photometric", True), True),
    "annotated_mean_attribute_error": PairMetric("artist mean |Δattr|, annotated critique↓",
                                                 _edit_value("mean_attribute_error", True), False, 2),
}
"""The per-pair numbers tables and comparisons read, by key."""


def metric_values(pairs: Sequence[PairResult], key: str) -> np.ndarray:
    """``PAIR_METRICS[key]`` of every pair; ``ValueError`` when a pair lacks it (e.g. a critic metric of the
    identity row)."""
    metric = PAIR_METRICS[key]
    values = [metric.value(pair) for pair in pairs]
    if any(v is None for v in values):
        raise ValueError(f"{metric.label} is not measured for every pair")
    return np.asarray(values, dtype=np.float64)
