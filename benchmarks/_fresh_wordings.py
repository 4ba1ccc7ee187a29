"""Fresh wordings: questions as a new user types them, in words neither training nor the held-out pool uses.

The held-out pool (tools/yardstick/phrasing.py) is two sentences per kind, and the composed training wordings
(tools/yardstick/compose.py) were written knowing them. These were written afterwards, before any model trained
on composed wordings was scored, and are used to report, not to choose: contractions, past tenses, other verbs
("enter the scene", "blinked"), casual openers. None is a template or a composed wording (tests check).
"""

from __future__ import annotations

import numpy as np

from tools.yardstick.phrasing import _pattern as template_pattern
from tools.yardstick.phrasing import parse

FRESH: dict[str, tuple[str, ...]] = {
    "colour": (
        "what's the colour of the {shape}?",
        "Hey, what color would you say the {shape} is?",
        "I need the colour of the {shape}.",
        "The {shape}'s colour?",
    ),
    "shape": (
        "What's the {colour} object shaped like?",
        "Which form does the {colour} object take?",
        "Is the {colour} object a circle, a square, a triangle or a cross?",
        "what shape would you call the {colour} object?",
    ),
    "count": (
        "How many separate times does the {obj} enter the scene?",
        "How many times did the {obj} appear?",
        "What's the number of times the {obj} appears?",
        "How frequently does the {obj} appear?",
    ),
    "order": (
        "Which did you see first, the {a} or the {b}?",
        "Was the {a} or the {b} first?",
        "Which entered the scene first, the {a} or the {b}?",
        "What came first: the {a} or the {b}?",
    ),
    "when_colour": (
        "What's the colour of the {shape} at the {at}?",
        "At the very {at}, what color does the {shape} have?",
        "What color was the {shape} at the {at}?",
        "At the {at}, the {shape}'s colour is what?",
    ),
    "when_shape": (
        "At the {at}, what shape do we see?",
        "What's the shape at the {at}?",
        "What shape was visible at the {at}?",
        "Which shape appears at the very {at}?",
    ),
    "needle": (
        "What's the colour of the {shape} that flashed?",
        "The {shape} flashed. What colour was it?",
        "What color did the flashing {shape} show?",
        "The {shape} that appeared in a flash was which colour?",
    ),
}
"""Question kind (as `phrasing.TEMPLATES`, without describe) -> fresh templates with the same slots."""


_PATTERNS = [(t, template_pattern(t)) for group in FRESH.values() for t in group]


def freshen(question: str, index: int) -> str:
    """`question` (a world question in a template wording) in one of its kind's fresh wordings, chosen by `index`
    (the example's number), so that a condition's clips and wordings pair the same way every run."""
    parsed = parse(question)
    options = FRESH[parsed.kind]
    pick = int(np.random.default_rng([index, sorted(FRESH).index(parsed.kind)]).integers(len(options)))
    return options[pick].format(**parsed.slots)


def fresh_template(question: str) -> str | None:
    """The fresh template that worded `question`, or None."""
    for template, pattern in _PATTERNS:
        if pattern.match(question.strip()):
            return template
    return None
