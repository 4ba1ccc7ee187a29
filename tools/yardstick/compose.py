"""Composed question wordings: hundreds of sentences per question kind, built from parts the kinds share.

The seen templates are a dozen fixed sentences per kind, and the model learnt their phrases: "is seen" (a count
wording) made it stop "Which of the A and the B is seen first?" after A's colour, and "does ... have" (a shape
wording) cost colour questions. Composed wordings put the same openers, verbs of presence ("shows up", "is seen",
"is visible", "comes into view") and tails ("in the video", "on screen") into every kind, so that what decides
an answer is what is asked about (the slots) and the few words that ask (colour, shape, how many, first, flashed,
start / end, describe), not a phrase. Training only (`TrainConfig.composed_wordings`).

The held-out measure stays one of new sentences: no composed wording is a held-out template, and none holds a word
4-gram of a held-out template of its kind that no seen template of that kind holds (`colour` and `color` read as
one word), so "Name the ...", "Which of the A and the B ...", "Does the A or the B ..." and the like are never
composed.
"""

from __future__ import annotations

import functools
import re

import numpy as np

from tools.yardstick.phrasing import TEMPLATES, parse, templates

_C = "[colour|color]"
_ASK = "[Tell me|Say|Please tell me|I want to know|Identify|State]"
_THERE = "[| in the video| in this clip| in the clip| here| on screen]"
_SEEN_VERB = "[appears|shows up|is seen|is visible|comes into view|is on screen|turns up|is shown|can be seen]"
_SEEN_BASE = "[appear|show up|come into view|turn up]"
_FIRST = "[first|earlier|before the other|sooner]"

GRAMMAR: dict[str, tuple[str, ...]] = {
    "colour": (
        f"[What|Which] {_C} is the {{shape}}{_THERE}?",
        f"[What|Which] {_C} is the {{shape}} that {_SEEN_VERB}?",
        f"What is the {_C} of the {{shape}}{_THERE}?",
        f"{_ASK} the {_C} of the {{shape}}{_THERE}.",
        f"{_ASK} what {_C} the {{shape}} is.",
        f"The {{shape}}{_THERE} is [what|which] {_C}?",
        f"The {{shape}} that {_SEEN_VERB}: what {_C} is it?",
        f"What {_C} is the {{shape}} [you see|you can see|drawn in|painted]?",
        "[Colour|Color] of the {shape}?",
        "How is the {shape} coloured?",
    ),
    "shape": (
        "[What|Which] shape is the {colour} [object|thing|item|figure]" + _THERE + "?",
        "What is the shape of the {colour} [object|thing|item|figure]" + _THERE + "?",
        f"{_ASK} the shape of the {{colour}} [object|thing|item|figure].",
        f"{_ASK} what shape the {{colour}} [object|thing|item] is.",
        "The {colour} [object|thing|item|figure] is [what|which] shape?",
        f"The {{colour}} [object|thing|item] that {_SEEN_VERB} is what shape?",
        f"What shape is the {{colour}} [object|thing|item] that {_SEEN_VERB}?",
        "What kind of shape is the {colour} [thing|item|figure]?",
        "Shape of the {colour} [object|thing]?",
        "What shape has the {colour} [object|thing]?",
    ),
    "count": (
        f"How [many times|often] does the {{obj}} {_SEEN_BASE}{_THERE}?",
        f"How [many times|often] is the {{obj}} [seen|visible|shown|on screen]{_THERE}?",
        "How [many times|often] can [you see the {obj}|the {obj} be seen]?",
        f"{_ASK} how many times the {{obj}} {_SEEN_VERB}.",
        f"The {{obj}} {_SEEN_VERB} how many times?",
        f"Count the [appearances|entrances] of the {{obj}}{_THERE}.",
        f"Count the times the {{obj}} {_SEEN_VERB}.",
        f"Number of times the {{obj}} {_SEEN_VERB}?",
        f"How many appearances [does the {{obj}} make|of the {{obj}} are there]{_THERE}?",
        "In how many separate moments is the {obj} [seen|visible|on screen]?",
    ),
    "order": (
        f"Which [|one |object |of them |of the two ]{_SEEN_VERB} {_FIRST}, the {{a}} or the {{b}}?",
        f"Which [|one |object ][comes|came|appeared|showed up|was seen] {_FIRST}: the {{a}} or the {{b}}?",
        f"[Between|Of] the {{a}} and the {{b}}, which {_SEEN_VERB} {_FIRST}?",
        f"{_ASK} which {_SEEN_VERB} {_FIRST}, the {{a}} or the {{b}}.",
        f"The {{a}} or the {{b}}: which {_SEEN_VERB} {_FIRST}?",
        f"First to {_SEEN_BASE}: the {{a}} or the {{b}}?",
        "Which is first in the [video|clip], the {a} or the {b}?",
        f"Who {_SEEN_VERB} {_FIRST}, the {{a}} or the {{b}}?",
    ),
    "when_colour": (
        f"[What|Which] {_C} is the {{shape}} at the {{at}}[| of the video| of the clip]?",
        f"At the {{at}}[| of the video| of the clip], what {_C} is the {{shape}}?",
        f"What is the {_C} of the {{shape}} at the {{at}}[| of the video| of the clip]?",
        f"{_ASK} the {_C} of the {{shape}} at the {{at}}.",
        f"The {{shape}} is [what|which] {_C} at the {{at}}?",
        f"At the {{at}}, the {{shape}} is what {_C}?",
        f"What {_C} [does the {{shape}} have|has the {{shape}}] at the {{at}}?",
        f"What {_C} is the {{shape}} that {_SEEN_VERB} at the {{at}}?",
    ),
    "when_shape": (
        (
            "[What|Which] shape [is visible|is seen|is on screen|is shown|appears|do you see|is there] at the {at}"
            "[| of the video| of the clip]?"
        ),
        "At the {at}[| of the video| of the clip], what shape [is visible|is seen|is on screen|do you see|is there]?",
        f"{_ASK} which shape [is visible|is seen|is on screen|is shown] at the {{at}}.",
        "What is the shape [on screen|in view|you see] at the {at}?",
        "The shape [visible|seen|shown|on screen] at the {at} is what?",
        "Which shape [can you see|shows] at the {at}?",
    ),
    "needle": (
        f"[What|Which] {_C} was the {{shape}} that [flashed|flashed briefly|briefly flashed|flashed by]?",
        f"What was the {_C} of the {{shape}} that [flashed|flashed briefly|briefly flashed]?",
        f"{_ASK} the {_C} of the {{shape}} that [flashed|flashed briefly|briefly flashed].",
        f"The {{shape}} that [flashed|briefly flashed] was [what|which] {_C}?",
        f"The {{shape}} that flashed: what {_C} was it?",
        f"What {_C} [was|did] the flashing {{shape}}[| have]?",
        f"When the {{shape}} flashed, what {_C} was it?",
        f"The flashing {{shape}} [was|had] which {_C}?",
        f"In what {_C} did the {{shape}} flash{_THERE}?",
    ),
    "describe": (
        (
            "[Describe|Summarise|Summarize|Explain|Recount] [what happens|what happened|what goes on|the events]"
            "[| in the video| in this clip| in the clip| here]."
        ),
        "[Describe|Summarise|Summarize] [the video|the clip|this clip|this video|what you see].",
        "What [happens|happened|goes on|is going on|do you see|did you see][| in the video| in this clip| here]?",
        "Give [a summary|an account] of [the video|the clip|what happens].",
        "[Tell me|Please tell me|Could you tell me] [what goes on|what happened|what you see] in the [video|clip].",
        "What is [shown|going on] in [the video|this clip]?",
    ),
}
"""kind -> composed patterns: `[a|b|c]` picks one of its options (nested allowed), `{slot}` as in `TEMPLATES`."""

_POLITE = ("", "Looking at the video, ", "Quick question: ", "Now, ", "So, ")


def expand(pattern: str) -> list[str]:
    """Every sentence `pattern` spells, once each: each `[a|b]` group (innermost first) replaced by each option."""
    m = re.search(r"\[([^\[\]]*)\]", pattern)
    if m is None:
        return [pattern]
    out: dict[str, None] = {}
    for option in m.group(1).split("|"):
        out.update(dict.fromkeys(expand(pattern[: m.start()] + option + pattern[m.end() :])))
    return list(out)


def _grams(template: str, n: int = 4) -> set[tuple[str, ...]]:
    words = re.findall(r"\{\w+\}|[a-z']+", template.lower().replace("color", "colour"))
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


@functools.cache
def composed(kind: str) -> tuple[str, ...]:
    """The composed wordings of `kind` (templates with `{slot}`s), held-out constructions left out (module doc)."""
    if kind not in GRAMMAR:
        raise ValueError(f"unknown question kind {kind!r}; choose one of {', '.join(GRAMMAR)}")
    held = templates(kind, "held_out")
    seen_grams = set().union(*(_grams(t) for t in templates(kind, "seen")))
    banned = set().union(*(_grams(t) for t in held)) - seen_grams
    held_lower = {t.lower() for t in held}
    out: dict[str, None] = {}
    for pattern in GRAMMAR[kind]:
        for sentence in expand(pattern):
            sentence = " ".join(sentence.split())
            if sentence.lower() in held_lower or _grams(sentence) & banned:
                continue
            out[sentence] = None
    return tuple(out)


def reword(question: str, rng: np.random.Generator) -> str:
    """`question` (a world question in any template wording) said in a composed wording of its kind, sometimes
    after a polite opener; a question no template parses (summarize's timed prompt) comes back as it is."""
    try:
        parsed = parse(question)
    except ValueError:
        return question
    options = composed(parsed.kind)
    sentence = options[int(rng.integers(len(options)))].format(**parsed.slots)
    opener = _POLITE[int(rng.integers(len(_POLITE)))]
    if opener and not sentence.startswith(("Please", "I ")):
        sentence = opener + sentence[0].lower() + sentence[1:]
    return sentence


assert set(GRAMMAR) == set(TEMPLATES)
