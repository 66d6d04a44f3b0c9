"""The Image Critic's language: its prompt, its output grammar, a parser and a renderer.

Owns the instruction the critic is asked (:data:`CRITIC_INSTRUCTION`), the chat messages built around a photo
(:func:`build_critic_messages`), the parser of responses of the form

    <think>reasoning</think><edit_start>suggestions</edit_end><answer>N</answer>

into a :class:`~rollout.records.types.ParsedCritique` (:func:`parse_critique`), and the renderer that writes the same
format from structured suggestions (:func:`render_critique`, used for warm-start targets).

The released SmartPhotoCrafter prompt asks for ``<edit_start>…</edit_end>`` (mismatched tag names), so both
``</edit_end>`` and ``<edit_end>`` close the edit block. Parsing never raises: any string yields a record, and
malformed text gives ``format_ok=False`` with the reason in ``error``. The suggestion vocabulary (attribute
keywords, direction verbs, magnitude words, restoration ops) follows ALGORITHMS.md §5.2 and §5.4.

This module is pure text processing: it must not import torch, transformers or vLLM, so rewards workers and
the driver can parse critiques cheaply.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from rollout.records.types import Degradation, EditOp, ParsedCritique, Suggestion, ToneAttribute

SYSTEM_PROMPT = "You are a helpful assistant that follows user instructions."
"""System turn of every critic prompt (the released SmartPhotoCrafter critic's system prompt)."""

CRITIC_INSTRUCTION = (
    "You are an expert photo retoucher. Examine this photo carefully.\n"
    "Step 1: inside <think> </think>, reason about its exposure, contrast, saturation and colour temperature, "
    "and about any degradation such as blur, noise, haze, low light, rain or compression artifacts.\n"
    "Step 2: inside <edit_start> </edit_end>, write the edits that would fix it, one per line. Each edit names "
    "one attribute (exposure, contrast, saturation or warmth), a direction (increase or decrease) and a "
    "magnitude (slightly, moderately or significantly), for example \"Increase the exposure slightly.\", or a "
    "restoration such as \"Remove blur.\", \"Reduce noise.\", \"Remove haze.\", \"Remove rain.\", "
    "\"Apply low-light enhancement.\" or \"Remove compression artifacts.\"\n"
    "Step 3: inside <answer> </answer>, rate the photo's overall quality as an integer from 0 to 100."
)
"""The critique instruction: reasoning, edit suggestions and a 0–100 score, in the output grammar."""

RESCORE_INSTRUCTION = CRITIC_INSTRUCTION
"""Instruction used when the critic re-scores edited photos for the ranking reward.

It is deliberately the same as :data:`CRITIC_INSTRUCTION`: the ranking reward compares the score a rollout gave
the input with the score the critic gives the edit, and the two are only comparable when the critic was asked
the same question in the same context. The re-score answer is read from ``<answer>`` of a greedy response."""

LEVEL_WORDS = {1: "slightly", 2: "moderately", 3: "significantly"}
"""The magnitude adverb the renderer writes for each level."""

_MAGNITUDE_PATTERNS: tuple[tuple[int, str], ...] = (
    (1, r"slight(?:ly)?|a\s+(?:little\s+)?bit|a\s+little|subtl[ey]|mild(?:ly)?"),
    (2, r"moderate(?:ly)?|somewhat|noticeabl[ey]"),
    (3, r"significant(?:ly)?|substantial(?:ly)?|greatly|considerabl[ey]|strong(?:ly)?|dramatic(?:ally)?"),
)
_DEFAULT_LEVEL = 2

# Attribute keywords (§5.2). Verbs that name their attribute ("brighten", "desaturate") are listed too.
_ATTRIBUTE_PATTERNS: tuple[tuple[ToneAttribute, str], ...] = (
    ("warmth", r"colou?r\s+temperature|white\s+balance|warm(?:th|er|ing)?|cool(?:er|ness|ing)?|cold(?:er)?"
                r"|(?:blue|yellow|orange)\s+(?:cast|tint)"),
    ("exposure", r"exposure|brightness|brighten|brighter|darken|darker|light(?:ness|ing)?"),
    ("contrast", r"contrast"),
    ("saturation", r"saturation|saturated?|desaturated?|vibrance|vibrancy|vivid|colou?rfulness"),
)
_INCREASE = (r"increase|raise|boost|brighten|enhance|add|strengthen|lift|amplify|intensify|heighten|improve"
             r"|more|higher|stronger|warm\s+up|saturate")
_DECREASE = (r"decrease|reduce|lower|remove|eliminate|neutrali[sz]e|darken|tone\s+down|lessen|soften|weaken"
             r"|diminish|cut|drop|less|mute"
             r"|desaturate|pull\s+back|cool\s+down")
_WARM_WORDS = r"warm(?:th|er|ing)?|(?:yellow|orange)\s+(?:cast|tint)"
_COOL_WORDS = r"cool(?:er|ness|ing)?|cold(?:er)?|blue\s+(?:cast|tint)"

# Restoration ops (§5.4): degradation label → phrases that correct it.
_RESTORATION_PATTERNS: tuple[tuple[Degradation, str], ...] = (
    ("blur", r"deblur(?:ring)?|(?:remove|reduce|fix|correct)\s+(?:the\s+)?(?:motion\s+)?blur(?:riness)?|sharpen"),
    ("noise", r"denois(?:e|ing)|(?:remove|reduce|suppress)\s+(?:the\s+)?(?:image\s+)?noise"),
    ("haze", r"dehaz(?:e|ing)|(?:remove|reduce|clear)\s+(?:the\s+)?(?:haze|fog)"),
    ("rain", r"derain(?:ing)?|(?:remove|reduce)\s+(?:the\s+)?rain(?:\s+streaks)?"),
    ("jpeg", r"(?:remove|reduce|fix)\s+(?:the\s+)?(?:jpeg\s+)?(?:compression\s+)?artifacts?|deblock(?:ing)?"),
    ("lowlight", r"low[\s-]*light(?:\s+enhancement)?"),
)
_RESTORATION_TEXT: dict[Degradation, str] = {
    "blur": "Remove blur.",
    "noise": "Reduce noise.",
    "haze": "Remove haze.",
    "rain": "Remove rain.",
    "jpeg": "Remove compression artifacts.",
    "lowlight": "Apply low-light enhancement.",
}
_ATTRIBUTE_TEXT: dict[ToneAttribute, str] = {
    "exposure": "the exposure", "contrast": "the contrast", "saturation": "the saturation", "warmth": "the warmth",
}

# Tempered tokens ("any character that does not start the closing tag") instead of lazy ".+?": the first closing
# tag ends each block either way, but the match cannot backtrack across tag occurrences, so parsing stays linear
# on long, repetitive garbage.
_FULL_FORMAT = re.compile(
    r"<think>(?P<think>(?:(?!</think>).)+)</think>\s*"
    r"<edit_start>(?P<edit>(?:(?!</edit_end>|<edit_end>).)+)(?:</edit_end>|<edit_end>)\s*"
    r"<answer>\s*(?P<score>\d{1,3}(?:\.\d+)?)\s*</answer>",
    re.DOTALL,
)
_NUMBER = re.compile(r"^\s*(\d{1,3}(?:\.\d+)?)\s*$")

# Clause boundaries: new lines, semicolons, sentence full stops (not decimal points) and list markers.
_SENTENCE_SPLIT = re.compile(r"[\n;]+|(?<!\d)\.(?!\d)|(?:^|\s)(?:[-*•]|\d+[.)])\s+")
# Inside a sentence, "increase exposure and reduce contrast" holds two edits: split at conjunctions and commas,
# and keep a piece only when it names something (see _split_clauses).
_CONJUNCTION_SPLIT = re.compile(r",|\band\b|\bwhile\b|\bbut\b|\bthen\b|\bplus\b")
_ATTRIBUTE_ALIASES = re.compile(r"\blight\s*(?:&|and)\s*exposure\b")


def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(rf"\b(?:{pattern})\b")


_MAGNITUDE_RES = tuple((level, _compile(p)) for level, p in _MAGNITUDE_PATTERNS)
_ATTRIBUTE_RES = tuple((attr, _compile(p)) for attr, p in _ATTRIBUTE_PATTERNS)
_RESTORATION_RES = tuple((label, _compile(p)) for label, p in _RESTORATION_PATTERNS)
_INCREASE_RE = _compile(_INCREASE)
_DECREASE_RE = _compile(_DECREASE)
_WARM_RE = _compile(_WARM_WORDS)
_COOL_RE = _compile(_COOL_WORDS)


def build_critic_messages(instruction: str = CRITIC_INSTRUCTION, system: str = SYSTEM_PROMPT) -> list[dict[str, Any]]:
    """Chat messages of one critic turn: a system turn, then the photo followed by the instruction.

    The image entry is a placeholder (``{"type": "image"}``); the pixels travel separately to the processor or
    engine, so the same messages serve vLLM and transformers and are cheap to build.
    """
    return [
        {"role": "system", "content": [{"type": "text", "text": system}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]},
    ]


def parse_critique(text: Any) -> ParsedCritique:
    """Parse one critic response; never raises.

    ``format_ok`` is True iff the stripped text is exactly ``<think>…</think><edit_start>…</edit_end>
    <answer>N</answer>`` (whitespace allowed between the blocks, ``<edit_end>`` accepted as the closing tag)
    with non-empty blocks and 0 ≤ N ≤ 100. Otherwise the parts that can be found are still returned (reasoning,
    suggestions, a valid score) and ``error`` says what was wrong.
    """
    if not isinstance(text, str):
        return ParsedCritique(error=f"response is {type(text).__name__}, not text")
    try:
        return _parse(text)
    except Exception as exc:  # noqa: BLE001 - the contract is "any input parses": report, never raise
        return ParsedCritique(error=f"parser failed on this text: {type(exc).__name__}: {exc}")


def _parse(text: str) -> ParsedCritique:
    stripped = text.strip()
    full = _FULL_FORMAT.fullmatch(stripped) if stripped.startswith("<think>") and stripped.endswith("</answer>") \
        else None
    if full is not None:
        reasoning, edit_block, score_text = full.group("think"), full.group("edit"), full.group("score")
    else:
        reasoning = _block(stripped, "<think>", ("</think>",)) or ""
        edit_block = _block(stripped, "<edit_start>", ("</edit_end>", "<edit_end>")) or ""
        answer = _block(stripped, "<answer>", ("</answer>",))
        number = _NUMBER.match(answer) if answer is not None else None
        score_text = number.group(1) if number else None

    score = float(score_text) if score_text is not None else None
    if score is not None and not (0.0 <= score <= 100.0 and math.isfinite(score)):
        score = None
    suggestions, unrecognised = parse_suggestions(edit_block)
    parsed = ParsedCritique(reasoning=reasoning.strip(), suggestions=suggestions, unrecognised=unrecognised,
                            score=score)
    if full is not None and score is not None and reasoning.strip() and edit_block.strip():
        parsed.format_ok = True
    else:
        parsed.error = _format_error(stripped, full is not None, score_text, reasoning, edit_block)
    return parsed


def _block(text: str, opening: str, closings: tuple[str, ...]) -> str | None:
    """Text between the first ``opening`` and the nearest following closing tag (None when either is missing).

    Plain ``str.find`` rather than a lazy regex search, which rescans to the end of the text from every opening
    tag and turns long repetitive garbage quadratic."""
    start = text.find(opening)
    if start < 0:
        return None
    start += len(opening)
    ends = [end for end in (text.find(closing, start) for closing in closings) if end >= 0]
    return text[start:min(ends)] if ends else None


def _format_error(text: str, matched: bool, score_text: str | None, reasoning: str, edit_block: str) -> str:
    if not text:
        return "empty response"
    if matched:
        if not reasoning.strip():
            return "the <think> block is empty"
        if not edit_block.strip():
            return "the <edit_start> block is empty"
        return f"score {score_text} is outside 0-100"
    for opening, closing, name in (("<think>", "</think>", "<think>"),
                                   ("<edit_start>", None, "<edit_start>"),
                                   ("<answer>", "</answer>", "<answer>")):
        if opening not in text:
            return f"missing {name} block"
        if closing and closing not in text:
            return f"{name} block is not closed with {closing}"
    if "</edit_end>" not in text and "<edit_end>" not in text:
        return "<edit_start> block is not closed with </edit_end>"
    answer = _block(text, "<answer>", ("</answer>",))
    if answer is not None and score_text is None:
        return f"<answer> holds {answer.strip()[:40]!r}, not a number from 0 to 100"
    if not (text.startswith("<think>") and text.endswith("</answer>")):
        return "text outside the <think>, <edit_start> and <answer> blocks"
    return "blocks are out of order (expected <think>, then <edit_start>, then <answer>)"


def parse_suggestions(edit_block: str) -> tuple[list[Suggestion], list[str]]:
    """Split an edit block into clauses; return (recognised suggestions, unrecognised clauses)."""
    suggestions: list[Suggestion] = []
    unrecognised: list[str] = []
    for clause, inherited_sign, inherited_level in _split_clauses(edit_block):
        suggestion = _parse_clause(clause, inherited_sign, inherited_level)
        if suggestion is None:
            unrecognised.append(clause)
        else:
            suggestions.append(suggestion)
    return suggestions, unrecognised


def _split_clauses(edit_block: str) -> Iterable[tuple[str, int | None, int | None]]:
    """Yield (clause, inherited verb sign, shared level).

    "Increase the exposure and contrast slightly" names two edits sharing one verb and one adverb: a piece with
    no verb of its own joins the group of the piece before it, takes that group's verb, and every piece of a
    group takes the group's magnitude word unless it has its own.
    """
    for sentence in _SENTENCE_SPLIT.split(edit_block):
        sentence = sentence.strip(" \t\r\n-*•:,")
        if not sentence:
            continue
        pieces = [p.strip(" \t,:") for p in _CONJUNCTION_SPLIT.split(_ATTRIBUTE_ALIASES.sub("exposure", sentence))]
        named = [p for p in pieces if p and _names_something(p.lower())]
        if len(named) <= 1:
            yield sentence, None, None
            continue
        groups: list[list[str]] = []
        for piece in named:
            if groups and _verb_sign(piece.lower()) is None:
                groups[-1].append(piece)
            else:
                groups.append([piece])
        for group in groups:
            group_sign = _verb_sign(group[0].lower())
            group_level = next((lvl for lvl in (_find_level(p.lower()) for p in group) if lvl is not None), None)
            for position, piece in enumerate(group):
                yield piece, (group_sign if position > 0 else None), group_level


def _names_something(lowered: str) -> bool:
    return any(rx.search(lowered) for _, rx in _ATTRIBUTE_RES) or any(rx.search(lowered) for _, rx in _RESTORATION_RES)


def _verb_sign(lowered: str) -> int | None:
    """+1 / -1 for the first direction verb in the text, None when there is none."""
    up, down = _INCREASE_RE.search(lowered), _DECREASE_RE.search(lowered)
    if up and down:
        return 1 if up.start() < down.start() else -1
    if up:
        return 1
    if down:
        return -1
    return None


def _find_level(lowered: str) -> int | None:
    for level, rx in _MAGNITUDE_RES:
        if rx.search(lowered):
            return level
    return None


def _parse_clause(clause: str, inherited_sign: int | None, inherited_level: int | None) -> Suggestion | None:
    lowered = _ATTRIBUTE_ALIASES.sub("exposure", clause.lower())
    restoration: Degradation | None = None
    for label, rx in _RESTORATION_RES:
        if rx.search(lowered):
            restoration = label
            break
    attribute = _find_attribute(lowered)
    op = None
    if attribute is not None:
        sign = _attribute_sign(attribute, lowered, inherited_sign)
        if sign is not None:
            level = _find_level(lowered) or inherited_level or _DEFAULT_LEVEL
            op = EditOp(attribute=attribute, direction=sign, level=level)
    if op is not None and op.attribute == "exposure" and op.direction == 1 and restoration is None:
        restoration = "lowlight"  # §5.4: brightening / increasing exposure is the low-light corrective op
    if op is None and restoration is None:
        return None
    if restoration in ("blur", "noise", "haze", "rain", "jpeg") and op is not None and _verb_is_restoration(lowered):
        # "reduce noise" matches the decrease verb but names no tone attribute; a matched attribute here comes
        # from a word like "light" in "remove rain in low light" and is not a tone edit the critic asked for.
        op = None
    return Suggestion(text=clause.strip(), op=op, restoration=restoration)


def _verb_is_restoration(lowered: str) -> bool:
    spans = [m.span() for _, rx in _RESTORATION_RES for m in rx.finditer(lowered)]
    verb = _INCREASE_RE.search(lowered) or _DECREASE_RE.search(lowered)
    return verb is not None and any(start <= verb.start() < end for start, end in spans)


def _find_attribute(lowered: str) -> ToneAttribute | None:
    best: tuple[int, ToneAttribute] | None = None
    for attribute, rx in _ATTRIBUTE_RES:
        match = rx.search(lowered)
        if match and (best is None or match.start() < best[0]):
            best = (match.start(), attribute)
    return best[1] if best else None


def _attribute_sign(attribute: ToneAttribute, lowered: str, inherited_sign: int | None) -> int | None:
    verb = _verb_sign(lowered)
    if verb is None:
        verb = inherited_sign
    if attribute == "warmth":
        # "warmer" = +1, "cooler" = -1; a verb flips it ("reduce the warm cast" = -1, "reduce the blue cast" = +1).
        # "increase the colour temperature" follows the editors' slider convention: warmer.
        warm, cool = _WARM_RE.search(lowered), _COOL_RE.search(lowered)
        base = 0
        if warm and cool:
            base = 1 if warm.start() < cool.start() else -1
        elif warm:
            base = 1
        elif cool:
            base = -1
        if base == 0:
            return verb
        return base * (verb if verb is not None else 1)
    if attribute == "exposure" and verb is None:
        if re.search(r"\bbrighten|\bbrighter\b", lowered):
            return 1
        if re.search(r"\bdarken|\bdarker\b", lowered):
            return -1
    return verb


def render_suggestion(suggestion: Suggestion) -> str:
    """One line of the edit block for a structured suggestion (the tone op wins when both are set)."""
    if suggestion.op is not None:
        op = suggestion.op
        verb = "Increase" if op.direction == 1 else "Decrease"
        return f"{verb} {_ATTRIBUTE_TEXT[op.attribute]} {LEVEL_WORDS[op.level]}."
    if suggestion.restoration is not None:
        return _RESTORATION_TEXT[suggestion.restoration]
    return suggestion.text.strip()


def render_critique(reasoning: str, suggestions: Sequence[Suggestion | EditOp], score: float) -> str:
    """Write a response in the critic grammar from structured parts (warm-start targets).

    ``suggestions`` may mix :class:`Suggestion` and bare :class:`EditOp`. Integer-valued scores are written
    without decimals. Raises ``ValueError`` for a score outside 0–100 or an empty reasoning/suggestion list,
    because a target the parser would reject must never be produced silently.
    """
    if not (0.0 <= float(score) <= 100.0):
        raise ValueError(f"score must be within 0-100, got {score}")
    if not reasoning.strip():
        raise ValueError("reasoning must not be empty")
    lines = [render_suggestion(s if isinstance(s, Suggestion) else Suggestion(text="", op=s)) for s in suggestions]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError("at least one suggestion is required (the grammar needs a non-empty edit block)")
    score_text = f"{float(score):.6f}".rstrip("0").rstrip(".")
    edits = "\n".join(lines)
    return f"<think>{reasoning.strip()}</think>\n<edit_start>\n{edits}\n</edit_end>\n<answer>{score_text}</answer>"
