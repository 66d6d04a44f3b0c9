"""The critic grammar: parsing real-looking responses, the mismatched closing tag, rendering and fuzzing."""

from __future__ import annotations

import random
import string

import pytest

from critic_actor.grammar import (CRITIC_INSTRUCTION, build_critic_messages, parse_critique, parse_suggestions,
                                  render_critique)
from rollout.records.types import DEGRADATIONS, TONE_ATTRIBUTES, EditOp, Suggestion

RELEASED_STYLE = (
    "<think>The sky is washed out and the whole frame has a cold blue cast; shadows are muddy.</think>\n"
    "<edit_start>1. Decrease the exposure slightly.\n2. Make the colour temperature warmer significantly.\n"
    "3. Boost saturation a bit and increase contrast.\n4. Denoise the shadows.</edit_end>\n<answer>42</answer>"
)


def ops(parsed):
    return [(s.op.attribute, s.op.direction, s.op.level) for s in parsed.suggestions if s.op is not None]


def test_released_style_response_parses_into_ops_restoration_and_score():
    parsed = parse_critique(RELEASED_STYLE)
    assert parsed.format_ok, parsed.error
    assert parsed.score == 42.0
    assert parsed.reasoning.startswith("The sky is washed out")
    assert ops(parsed) == [("exposure", -1, 1), ("warmth", 1, 3), ("saturation", 1, 1), ("contrast", 1, 2)]
    assert [s.restoration for s in parsed.suggestions if s.restoration] == ["noise"]
    assert parsed.unrecognised == []


@pytest.mark.parametrize("closing", ["</edit_end>", "<edit_end>"])
def test_both_edit_closing_tags_are_accepted(closing):
    text = f"<think>fine</think><edit_start>Increase contrast slightly.{closing}<answer>70</answer>"
    parsed = parse_critique(text)
    assert parsed.format_ok and parsed.score == 70.0 and ops(parsed) == [("contrast", 1, 1)]


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    ("just words", "missing <think>"),
    ("<think>a</think><answer>50</answer>", "missing <edit_start>"),
    ("<think>a</think><edit_start>Increase contrast</edit_end><answer>150</answer>", "outside 0-100"),
    ("<think>a</think><edit_start>Increase contrast</edit_end><answer>great</answer>", "not a number"),
    ("<think>a</think><edit_start>Increase contrast</edit_end><answer>50</answer> trailing", "outside the"),
    ("<think>a<edit_start>Increase contrast</edit_end><answer>50</answer>", "not closed"),
    ("<think> </think><edit_start>Increase contrast</edit_end><answer>50</answer>", "<think> block is empty"),
])
def test_malformed_text_is_reported_with_the_reason(text, reason):
    parsed = parse_critique(text)
    assert not parsed.format_ok
    assert reason in parsed.error


def test_partial_responses_keep_what_can_be_read():
    parsed = parse_critique("<think>dark</think><edit_start>Brighten the image strongly")
    assert not parsed.format_ok and parsed.reasoning == "dark" and parsed.score is None
    assert parse_critique("<think>x</think> <answer> 64 </answer>").score == 64.0


@pytest.mark.parametrize("clause, expected", [
    ("Increase the exposure slightly", ("exposure", 1, 1)),
    ("darken the image a bit", ("exposure", -1, 1)),
    ("Light & Exposure: brighten moderately", ("exposure", 1, 2)),
    ("lower contrast dramatically", ("contrast", -1, 3)),
    ("boost vibrance", ("saturation", 1, 2)),
    ("desaturate subtly", ("saturation", -1, 1)),
    ("make it warmer", ("warmth", 1, 2)),
    ("make the white balance cooler considerably", ("warmth", -1, 3)),
    ("reduce the warm cast mildly", ("warmth", -1, 1)),
    ("reduce the blue cast", ("warmth", 1, 2)),
    ("increase the colour temperature noticeably", ("warmth", 1, 2)),
    ("make it a little brighter", ("exposure", 1, 1)),
    ("make the colours less saturated", ("saturation", -1, 2)),
    ("make the colours more vivid", ("saturation", 1, 2)),
])
def test_clause_vocabulary(clause, expected):
    suggestions, unrecognised = parse_suggestions(clause)
    assert unrecognised == []
    assert [(s.op.attribute, s.op.direction, s.op.level) for s in suggestions] == [expected]


@pytest.mark.parametrize("clause, label", [
    ("Deblur the subject", "blur"), ("remove blur", "blur"), ("sharpen the edges", "blur"),
    ("denoise", "noise"), ("reduce noise", "noise"), ("increase exposure", "lowlight"), ("brighten", "lowlight"),
    ("dehaze the sky", "haze"), ("derain", "rain"), ("remove compression artifacts", "jpeg"),
])
def test_restoration_ops(clause, label):
    suggestions, _ = parse_suggestions(clause)
    assert [s.restoration for s in suggestions] == [label]


def test_one_sentence_with_two_edits_shares_verb_and_adverb():
    suggestions, _ = parse_suggestions("Increase the exposure and contrast slightly, and reduce saturation")
    assert [(s.op.attribute, s.op.direction, s.op.level) for s in suggestions] == [
        ("exposure", 1, 1), ("contrast", 1, 1), ("saturation", -1, 2)]


def test_unknown_clauses_are_kept_as_unrecognised():
    parsed = parse_critique("<think>ok</think><edit_start>Crop to the horizon.\nIncrease contrast.</edit_end>"
                            "<answer>80</answer>")
    assert parsed.format_ok
    assert parsed.unrecognised == ["Crop to the horizon"]
    assert ops(parsed) == [("contrast", 1, 2)]


def _random_ops(rng):
    return [EditOp(attribute=rng.choice(TONE_ATTRIBUTES), direction=rng.choice((-1, 1)), level=rng.choice((1, 2, 3)))
            for _ in range(rng.randint(1, 4))]


def test_render_then_parse_round_trips_ops_restorations_and_score():
    rng = random.Random(0)
    for _ in range(300):
        tone = _random_ops(rng)
        restorations = rng.sample(DEGRADATIONS, rng.randint(0, 3))
        score = rng.choice([rng.randint(0, 100), round(rng.uniform(0, 100), 2)])
        text = render_critique("Reasoning about the photo.",
                               [*tone, *(Suggestion(text="", restoration=r) for r in restorations)], score)
        parsed = parse_critique(text)
        assert parsed.format_ok, (text, parsed.error)
        assert parsed.score == pytest.approx(score)
        assert [s.op for s in parsed.suggestions if s.op is not None] == tone
        expected = set(restorations) | ({"lowlight"} if any(o.attribute == "exposure" and o.direction == 1
                                                            for o in tone) else set())
        assert {s.restoration for s in parsed.suggestions if s.restoration} == expected


def test_renderer_refuses_targets_the_parser_would_reject():
    with pytest.raises(ValueError, match="score"):
        render_critique("r", [EditOp(attribute="contrast", direction=1, level=1)], 101)
    with pytest.raises(ValueError, match="suggestion"):
        render_critique("r", [], 50)


def test_fuzzed_strings_and_mutations_never_raise():
    rng = random.Random(1)
    alphabet = string.printable + "<>/_éß\u200b🙂"
    tags = ["<think>", "</think>", "<edit_start>", "</edit_end>", "<edit_end>", "<answer>", "</answer>"]
    for _ in range(3000):
        if rng.random() < 0.5:
            text = "".join(rng.choice(alphabet + "".join(tags)) for _ in range(rng.randint(0, 200)))
        else:
            chars = list(RELEASED_STYLE)
            for _ in range(rng.randint(1, 10)):
                position = rng.randrange(len(chars) + 1)
                action = rng.random()
                if action < 0.4 and chars:
                    del chars[min(position, len(chars) - 1)]
                elif action < 0.8:
                    chars.insert(position, rng.choice(alphabet))
                else:
                    chars.insert(position, rng.choice(tags))
            text = "".join(chars)
        parsed = parse_critique(text)
        assert parsed.format_ok or parsed.error
        assert parsed.score is None or 0.0 <= parsed.score <= 100.0
    assert not parse_critique(None).format_ok
    assert not parse_critique(b"<think>").format_ok


def test_messages_put_the_image_before_the_instruction():
    messages = build_critic_messages()
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[1]["content"][0] == {"type": "image"}
    assert messages[1]["content"][1]["text"] == CRITIC_INSTRUCTION
    for tag in ("<think>", "<edit_start>", "</edit_end>", "<answer>"):
        assert tag in CRITIC_INSTRUCTION


def test_long_repetitive_garbage_parses_quickly():
    import time

    for text in ("<think>a</think><edit_start>" * 3000 + "x</answer>",
                 "<think>" + "<edit_start>a</think>" * 3000 + "<edit_end><answer>5</answer>",
                 "<think>x</think><edit_start>" + "Increase the exposure and contrast slightly, and " * 1000
                 + "</edit_end><answer>5</answer>"):
        started = time.perf_counter()
        parse_critique(text)
        assert time.perf_counter() - started < 1.0
