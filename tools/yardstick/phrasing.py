"""Paraphrased question templates for the yardstick world (v2): seen phrasings for training, held-out ones never.

Each question kind has its v1 wording first (the canonical one), more seen wordings (US and UK spelling, other word
orders) and held-out wordings that no training example ever uses: a model that scores on those learnt the task, not
the sentence. Templates are parsed back into their slots, so any world question can be reworded.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tools.yardstick.world import COLOURS, SHAPES

POOLS = ("canonical", "seen", "held_out")
"""canonical: the v1 wording; seen: every training wording (canonical included); held_out: never trained on."""

TEMPLATES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "colour": (
        (
            "What colour is the {shape}?",
            "What color is the {shape}?",
            "Which colour is the {shape}?",
            "The {shape} is which color?",
            "Tell me the colour of the {shape}.",
            "What is the color of the {shape}?",
            "Which color is the {shape}?",
            "The {shape} is which colour?",
            "Tell me the color of the {shape}.",
            "What is the colour of the {shape}?",
            "Can you tell me what colour the {shape} is?",
            "In what color is the {shape} drawn?",
        ),
        ("Name the colour of the {shape}.", "Which color does the {shape} have?"),
    ),
    "shape": (
        (
            "What shape is the {colour} object?",
            "Which shape is the {colour} object?",
            "The {colour} object is what shape?",
            "What is the shape of the {colour} object?",
            "Tell me the shape of the {colour} object.",
            "What shape does the {colour} object have?",
            "What is the {colour} object's shape?",
            "Can you tell me the shape of the {colour} object?",
            "Tell me what shape the {colour} object is.",
            "The {colour} object has what shape?",
            "What kind of shape is the {colour} object?",
        ),
        ("Name the shape of the {colour} object.", "Which shape is the {colour} one?"),
    ),
    "count": (
        (
            "How many times does the {obj} appear?",
            "How often does the {obj} appear?",
            "How many times is the {obj} seen?",
            "Count the appearances of the {obj}.",
            "The {obj} appears how many times?",
            "Count how many times the {obj} appears.",
            "How many appearances does the {obj} make?",
            "How often is the {obj} seen?",
            "The {obj} is seen how many times?",
            "Tell me how many times the {obj} appears.",
            "How many times does the {obj} come into view?",
        ),
        ("How many times do you see the {obj}?", "Count how often the {obj} shows up."),
    ),
    "order": (
        (
            "Which appears first, the {a} or the {b}?",
            "Which comes first, the {a} or the {b}?",
            "Which shows up first: the {a} or the {b}?",
            "Of the {a} and the {b}, which appears first?",
            "Which appears earlier, the {a} or the {b}?",
            "Which is visible first, the {a} or the {b}?",
            "Which one appears first: the {a} or the {b}?",
            "Which came first, the {a} or the {b}?",
            "Between the {a} and the {b}, which appears first?",
            "Tell me which appears first, the {a} or the {b}.",
            "Which shows up earlier, the {a} or the {b}?",
        ),
        ("Does the {a} or the {b} appear first?", "Which of the {a} and the {b} is seen first?"),
    ),
    "when_colour": (
        (
            "What colour is the {shape} at the {at}?",
            "What color is the {shape} at the {at}?",
            "At the {at}, what colour is the {shape}?",
            "Which color is the {shape} at the {at}?",
            "What is the colour of the {shape} at the {at}?",
            "Which colour is the {shape} at the {at}?",
            "What is the color of the {shape} at the {at}?",
            "At the {at}, what color is the {shape}?",
            "Tell me the colour of the {shape} at the {at}.",
            "The {shape} is what colour at the {at}?",
        ),
        ("At the {at}, which color is the {shape}?", "Name the colour of the {shape} at the {at}."),
    ),
    "when_shape": (
        (
            "What shape is visible at the {at}?",
            "Which shape is visible at the {at}?",
            "At the {at}, what shape is visible?",
            "What shape can be seen at the {at}?",
            "What is the visible shape at the {at}?",
            "What shape is shown at the {at}?",
            "What shape is on screen at the {at}?",
            "At the {at}, what shape is on screen?",
            "What shape do you see at the {at}?",
            "Tell me which shape is visible at the {at}.",
        ),
        ("At the {at}, which shape can be seen?", "Name the shape visible at the {at}."),
    ),
    "needle": (
        (
            "What colour was the {shape} that flashed?",
            "What color was the {shape} that flashed?",
            "Which colour was the {shape} that flashed?",
            "The {shape} that flashed was what color?",
            "What was the colour of the {shape} that flashed?",
            "Which color was the {shape} that flashed?",
            "The {shape} that flashed was what colour?",
            "What was the color of the {shape} that flashed?",
            "What colour was the flashing {shape}?",
            "The flashing {shape} was what color?",
            "In what colour did the {shape} flash?",
        ),
        ("Name the colour of the {shape} that flashed.", "Which color did the {shape} that flashed have?"),
    ),
    "describe": (
        (
            "Describe what happens.",
            "What happens in the video?",
            "Describe the video.",
            "What do you see in this clip?",
            "Summarise what happens.",
            "Summarize the clip.",
            "What happens in this clip?",
            "Describe the clip.",
            "Summarise the video.",
            "What goes on in the video?",
            "Can you describe what happens?",
            "Summarize what you see.",
        ),
        ("Tell me what happens in the clip.", "Give a description of the video."),
    ),
}
"""kind -> (seen templates, v1 wording first; held-out templates)."""

_COLOUR = "|".join(COLOURS)
_SHAPE = "|".join(SHAPES)
_SLOTS = {
    "shape": f"(?P<shape>{_SHAPE})",
    "colour": f"(?P<colour>{_COLOUR})",
    "obj": f"(?P<obj>(?:{_COLOUR}) (?:{_SHAPE}))",
    "a": f"(?P<a>(?:{_COLOUR}) (?:{_SHAPE}))",
    "b": f"(?P<b>(?:{_COLOUR}) (?:{_SHAPE}))",
    "at": "(?P<at>start|end)",
}


@dataclass(frozen=True)
class Parsed:
    """A question read back: its kind, the slot values, and which template worded it."""

    kind: str
    slots: dict[str, str]
    template: str
    held_out: bool


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)
    body = "".join(re.escape(p) if i % 2 == 0 else _SLOTS[p] for i, p in enumerate(parts))
    return re.compile(f"^{body}$")


_PARSERS = [
    (kind, template, held, _pattern(template))
    for kind, (seen, held_out) in TEMPLATES.items()
    for held, group in ((False, seen), (True, held_out))
    for template in group
]


def parse(question: str) -> Parsed:
    """The kind and slots of a world question in any of its wordings; ValueError for any other text."""
    for kind, template, held, pattern in _PARSERS:
        if m := pattern.match(question.strip()):
            return Parsed(kind, m.groupdict(), template, held)
    raise ValueError(f"not a yardstick question: {question!r}")


def templates(kind: str, pool: str) -> Sequence[str]:
    """The wordings of `kind` in `pool` (one of `POOLS`)."""
    if kind not in TEMPLATES:
        raise ValueError(f"unknown question kind {kind!r}; choose one of {', '.join(TEMPLATES)}")
    seen, held_out = TEMPLATES[kind]
    if pool == "canonical":
        return seen[:1]
    if pool == "seen":
        return seen
    if pool == "held_out":
        return held_out
    raise ValueError(f"unknown phrasing pool {pool!r}; choose one of {', '.join(POOLS)}")


def reword(question: str, pool: str, rng: np.random.Generator) -> str:
    """`question` (any wording) said in a wording from `pool`, drawn with `rng`."""
    parsed = parse(question)
    options = templates(parsed.kind, pool)
    return options[int(rng.integers(len(options)))].format(**parsed.slots)


def corpus(pool: str = "seen") -> list[str]:
    """Every wording of `pool` with its slots filled by every colour and shape (tokenizer training text)."""
    out = []
    for kind in TEMPLATES:
        for template in templates(kind, pool):
            for c in COLOURS:
                for s in SHAPES:
                    out.append(template.format(shape=s, colour=c, obj=f"{c} {s}", a=f"{c} {s}", b=f"{c} {s}",
                                               at="start" if len(out) % 2 else "end"))  # fmt: skip
    return out


KIND_WORDS = frozenset(
    [
        "colour",
        "color",
        "shape",
        "shapes",
        "many",
        "times",
        "often",
        "count",
        "appearances",
        "appear",
        "appears",
        "appeared",
        "first",
        "earlier",
        "flashed",
        "flashing",
        "flash",
        "start",
        "end",
        "describe",
        "description",
        "happens",
        "happen",
        "summarise",
        "summarize",
        "visible",
        "seen",
        "see",
        "shows",
        "comes",
        "came",
        "object",
    ]
)
"""Words that say what a question asks (its kind) or about what: `perturb` never drops, replaces or inserts them."""


@functools.cache
def filler_words() -> tuple[str, ...]:
    """The other words of the seen wordings (the, which, tell, me, ...): what `perturb` inserts or swaps in."""
    words = {
        w for kind in TEMPLATES for t in templates(kind, "seen") for w in re.findall(r"[a-z]+", t.lower())
    }
    return tuple(sorted(w for w in words - KIND_WORDS - set(_SLOTS) - set(COLOURS) - set(SHAPES) if len(w) > 1))


def perturb(question: str, rng: np.random.Generator, fillers: Sequence[str]) -> str:
    """`question` with one random edit of a word that neither names a slot nor says its kind: dropped, replaced
    by a filler word, swapped with its neighbour, or a filler inserted. Training on such noise teaches the
    model to read what a question asks from its content words rather than from one exact sentence."""
    words = question.split()
    bare = [re.sub(r"[^a-z]", "", w.lower()) for w in words]
    free = [
        i for i, w in enumerate(bare) if w and w not in KIND_WORDS and w not in COLOURS and w not in SHAPES
    ]
    edit = int(rng.integers(4)) if free else 3
    if edit == 3:  # insert a filler before a random word
        at = int(rng.integers(len(words) + 1))
        return " ".join([*words[:at], fillers[int(rng.integers(len(fillers)))], *words[at:]])
    i = free[int(rng.integers(len(free)))]
    tail = words[i][
        len(words[i].rstrip("?.,:!")) :
    ]  # keep the punctuation a dropped or replaced word carried
    if edit == 0 and len(words) > 3:
        rest = words[:i] + words[i + 1 :]
        if tail and i:
            rest[i - 1] += tail
        return " ".join(rest)
    if edit == 2 and i + 1 < len(words) and i + 1 in free:
        a, b = words[i].rstrip("?.,:!"), words[i + 1]
        b_tail = b[len(b.rstrip("?.,:!")) :]
        words[i], words[i + 1] = b.rstrip("?.,:!") + tail, a + b_tail
        return " ".join(words)
    filler = fillers[int(rng.integers(len(fillers)))]
    words[i] = (filler.capitalize() if i == 0 else filler) + tail
    return " ".join(words)
