"""Typed records that cross stage boundaries of the coordinated loop.

This module owns the data contract between the critic rollout, the critic learner's prepare pass, the
artist samplers, the reward pool and the two learners. It is a leaf: it imports only the standard library
and numpy, so every package (and every Ray worker) can import it cheaply.

Conventions
- Images are ``np.ndarray`` of dtype uint8 and shape ``[H, W, 3]`` (sRGB, RGB order). Between actors they
  travel as an :data:`ImageHandle`: a ``ray.ObjectRef`` to such an array (the normal case inside a run), a
  filesystem path/URI string (manifests), or the array itself (unit tests, single-process tools). Images
  never pass through the controller by value.
- Every record produced by a model carries the policy version(s) that produced it, so the controller can
  check staleness and tell which weights made which sample.
- Records are plain ``@dataclass(kw_only=True, slots=True)``; configuration uses pydantic, records do not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

ImageHandle = Any
"""A ``ray.ObjectRef`` to a uint8 ``[H, W, 3]`` array, a path/URI string, or the array itself."""

ToneAttribute = Literal["exposure", "contrast", "saturation", "warmth"]
"""The photometric attributes the rule-based operators and the photometric reward know about."""

TONE_ATTRIBUTES: tuple[ToneAttribute, ...] = ("exposure", "contrast", "saturation", "warmth")
"""Canonical order of the tone attributes; also the order in which rule-based operators are applied is
``warmth → exposure → contrast → saturation`` (see ``rewards.operators``)."""

Degradation = Literal["blur", "noise", "haze", "lowlight", "rain", "jpeg"]
"""Restoration degradation labels a task may carry."""

DEGRADATIONS: tuple[Degradation, ...] = ("blur", "noise", "haze", "lowlight", "rain", "jpeg")

TaskKind = Literal["retouch", "restoration"]


@dataclass(kw_only=True, slots=True, frozen=True)
class EditOp:
    """One rule-based tone edit: move ``attribute`` in ``direction`` by a magnitude ``level``.

    The numeric size of each level per attribute is fixed by ``rewards.operators`` (ALGORITHMS.md §5.2).
    """

    attribute: ToneAttribute
    """Which tone attribute the edit changes."""
    direction: Literal[-1, 1]
    """+1 increases the attribute (brighter, more contrast, more saturated, warmer); -1 decreases it."""
    level: Literal[1, 2, 3]
    """Magnitude: 1 = slightly, 2 = moderately, 3 = significantly."""


@dataclass(kw_only=True, slots=True, frozen=True)
class Suggestion:
    """One edit suggestion parsed from (or rendered into) the critic's ``<edit_start>`` block."""

    text: str
    """The clause as written by the critic, stripped."""
    op: EditOp | None = None
    """The tone edit this clause asks for, when it names a colour/tone attribute."""
    restoration: Degradation | None = None
    """The degradation this clause corrects (e.g. ``"blur"`` for "remove blur"), when it is a restoration op."""


@dataclass(kw_only=True, slots=True)
class ParsedCritique:
    """The structured content of one critic response. Parsing never raises; failures set ``format_ok``."""

    reasoning: str = ""
    """Text inside ``<think>…</think>``."""
    suggestions: list[Suggestion] = field(default_factory=list)
    """Clauses of the ``<edit_start>…</edit_end>`` block that the grammar recognised."""
    unrecognised: list[str] = field(default_factory=list)
    """Clauses of the edit block that named no known attribute or restoration op."""
    score: float | None = None
    """The 0–100 score inside ``<answer>…</answer>``; ``None`` when missing or out of range."""
    format_ok: bool = False
    """True iff the whole response matches the output grammar exactly."""
    error: str = ""
    """Why ``format_ok`` is False (empty when it is True)."""


@dataclass(kw_only=True, slots=True)
class PhotoTask:
    """One photo to fix: the input, its reference target and what is known about how it was degraded."""

    task_id: str
    """Unique id of this sample (groups are keyed on it, never on prompt text)."""
    input: ImageHandle
    """The photo the critic looks at and the artist edits."""
    target: ImageHandle
    """The reference ("ground truth") photo for the rewards; same size as ``input``."""
    kind: TaskKind = "retouch"
    """``retouch`` (colour/tone) or ``restoration`` (blur, noise, haze, low light, …)."""
    degradations: tuple[Degradation, ...] = ()
    """Restoration degradation labels present in ``input``."""
    known_ops: tuple[EditOp, ...] = ()
    """When the pair was synthesised: the tone edits that turn ``input`` back into ``target``."""
    source: str = ""
    """Where the pair came from (manifest path, photo name), for logs and sample grids."""


@dataclass(kw_only=True, slots=True)
class Critique:
    """One critic rollout (response) for one photo."""

    task_id: str
    """The :class:`PhotoTask` this critique is about."""
    index: int
    """Which of the G responses for this photo (0 ≤ index < G)."""
    text: str
    """The decoded response text (special tokens skipped)."""
    prompt_token_ids: list[int]
    """Token ids of the full prompt as the engine saw it, vision placeholder tokens expanded."""
    completion_token_ids: list[int]
    """Generated token ids, including the final end-of-turn token when generation stopped on it."""
    rollout_logprobs: np.ndarray
    """float32 ``[len(completion_token_ids)]``: log-prob of each sampled token under the rollout engine."""
    finish_reason: str
    """``stop`` (end of turn) or ``length`` (hit ``max_new_tokens``)."""
    parsed: ParsedCritique
    """Structured content of ``text``."""
    policy_version: int
    """Critic weights version that generated this response."""
    image: ImageHandle = None
    """The image exactly as fed to the critic (after pixel-bound resizing); the learner's forward reuses it."""


@dataclass(kw_only=True, slots=True)
class Conditioning:
    """The critic's last-layer hidden states H_c that condition the artist for one critique."""

    task_id: str
    critique_index: int
    hidden: ImageHandle
    """Handle to ``[T, D]`` last-layer states over the prompt and the first N−1 generated tokens (ALGORITHMS.md
    §4.4), in the dtype the critic computed them in: a float32 array on CPU, a bf16 torch tensor on GPU (half
    the bytes; consumers widen it); D = critic hidden size."""
    mask: np.ndarray | None = None
    """bool ``[T]`` valid-token mask (all True for an unpadded record; padding is added at batching time)."""
    prompt_length: int = 0
    """Number of leading positions in ``hidden`` that belong to the prompt."""
    critic_version: int = 0
    """Critic weights version whose forward produced ``hidden``."""


@dataclass(kw_only=True, slots=True)
class Edit:
    """One artist sample: an edited photo produced from one critique."""

    task_id: str
    critique_index: int
    edit_index: int
    """Which of the K edits for this (photo, critique)."""
    seed: int
    """Seed of the initial noise; with the same weights and conditioning it reproduces the edit."""
    image: ImageHandle
    """The decoded edit, uint8 ``[H, W, 3]`` at the input's resolution."""
    x0: np.ndarray
    """float32 packed clean latent ``[L, C]`` the sampler ended on (the DiffusionNFT training target)."""
    sigmas: np.ndarray
    """float64 ``[N + 1]`` noise levels of the sampler's schedule, from 1.0 down to 0.0."""
    artist_version: int
    """Artist sampling-policy ("old" adapter) version that produced the edit."""
    critic_version: int
    """Critic version of the conditioning the edit was made from."""


@dataclass(kw_only=True, slots=True)
class EditReward:
    """Artist reward r_PA = r_comp · (λ1 r_photo + λ2 r_perc) for one edit, with every raw component."""

    task_id: str
    critique_index: int
    edit_index: int
    total: float
    """r_PA (NaN never appears: an unscorable edit has ``error`` set and total 0)."""
    compliance: float
    """r_comp ∈ [0, 1]: fraction of tone suggestions the edit followed (1 when there were none)."""
    photometric: float
    """r_photo ∈ [0, 1]: mean per-attribute progress from input toward target."""
    perceptual: float
    """r_perc = 1 − LPIPS(edit, target)."""
    attribute_scores: dict[str, float] = field(default_factory=dict)
    """Per-attribute photometric scores s_k."""
    gate_passed: bool = True
    """True when every tone suggestion was followed (r_comp == 1)."""
    error: str = ""
    """Why the edit could not be scored (empty when it was)."""


@dataclass(kw_only=True, slots=True)
class CritiqueReward:
    """Critic reward r_C for one critique, with every raw component."""

    task_id: str
    critique_index: int
    total: float
    format: float
    """r_fmt ∈ {0, 1}."""
    rank: float
    """r_rank ∈ [0, 1]: whether the critic scores its edit(s) above the input."""
    suggestion: float
    """r_sugg ∈ {0, 1}: whether the suggestions move the photo toward its target."""
    error: str = ""
    reasons: dict[str, str] = field(default_factory=dict)
    """Why a component is 0 for a reason other than the critique's quality, keyed by component
    (e.g. ``{"rank": "no re-score of the edits parsed"}``)."""


@dataclass(kw_only=True, slots=True)
class CriticGroup:
    """The G critiques of one photo with their rewards and GRPO advantages: one unit of the critic update."""

    task_id: str
    critiques: list[Critique]
    rewards: list[CritiqueReward]
    advantages: np.ndarray
    """float32 ``[G]`` group-normalised advantages, one per critique (broadcast over its tokens)."""


@dataclass(kw_only=True, slots=True)
class ArtistGroup:
    """The K edits of one (photo, critique) with rewards and optimality probabilities: one NFT unit."""

    task_id: str
    critique_index: int
    conditioning: Conditioning
    condition_image: ImageHandle
    """The input photo the edits were conditioned on (encoded again by the learner's codec)."""
    edits: list[Edit]
    rewards: np.ndarray
    """float32 ``[K]`` raw r_PA totals."""
    optimality: np.ndarray
    """float32 ``[K]`` r ∈ [0, 1] from the reward → optimality mapping (ALGORITHMS.md §1.2)."""
    valid: bool = True
    """False when the group is masked out (e.g. zero reward variance)."""


@dataclass(kw_only=True, slots=True, frozen=True)
class RejectedRecord:
    """A record that a loader or worker refused, with the reason, so runs count rather than crash."""

    record_id: str
    """Manifest id, file path or task id of the refused record."""
    stage: str
    """Where it was refused (``data``, ``critic``, ``artist``, ``reward``)."""
    reason: str
    """A sentence naming what was wrong, e.g. ``"input is 16-bit; convert to 8-bit sRGB"``."""
