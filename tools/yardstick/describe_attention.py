"""Attention targets for every clause of a describe answer: the visual tokens where each named object or event is.

A describe answer lists objects, then events in time order ("red circle, blue square; blue square leaves, green
cross appears"). The attention loss (`losses.attention_loss`) already pulls the first answer token onto the objects;
with `TrainConfig.describe_attention` each later clause's first token is pulled too, onto the temporal chunk where
its object first shows (an object), shows first (appears), shows last (leaves) or first shows in its new colour
(turns), so that the model learns to find each event in time instead of guessing it from the object list (the
bundled model's event recall per segment was ~0.5 while its object recall was ~0.9).

Targets come from the renderer's pixel labels, so a clause whose place cannot be found (an object hidden behind
another) is left out rather than guessed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from tools.yardstick.losses import TOKEN_PIXELS
from tools.yardstick.world import COLOURS, SHAPES

MIN_PIXELS = 6
"""Pixels of an object (over a chunk's two frames) that place it in a merged token."""
_NC, _NS = len(COLOURS), len(SHAPES)


def token_objects(labels: np.ndarray) -> np.ndarray:
    """(chunks, tokens, colours, shapes) bool: which objects each merged visual token of each chunk shows."""
    if labels.shape[0] % 2:
        labels = np.concatenate([labels, labels[-1:]])
    t, h, w = labels.shape[0] // 2, labels.shape[1] // TOKEN_PIXELS, labels.shape[2] // TOKEN_PIXELS
    colour, shape = labels[..., 0].astype(np.int64), labels[..., 1].astype(np.int64)
    pair = np.where((colour >= 0) & (shape >= 0), colour * _NS + shape, -1)[:, : h * TOKEN_PIXELS, : w * TOKEN_PIXELS]
    chunk = (np.arange(2 * t) // 2)[:, None, None]
    token = ((np.arange(h * TOKEN_PIXELS) // TOKEN_PIXELS)[:, None] * w + np.arange(w * TOKEN_PIXELS) // TOKEN_PIXELS)
    index = (chunk * h * w + token[None]) * (_NC * _NS) + pair
    counts = np.bincount(index[pair >= 0].ravel(), minlength=t * h * w * _NC * _NS)
    return counts.reshape(t, h * w, _NC, _NS) >= MIN_PIXELS


def clauses(answer: str) -> list[tuple[int, list[str]]]:
    """(character offset, words) of each clause of a describe answer, in order."""
    out, offset = [], 0
    head, sep, tail = answer.partition(";")
    for part_text, base in ((head, 0), (tail, len(head) + len(sep))):
        offset = base
        for piece in part_text.split(","):
            stripped = piece.lstrip()
            if stripped.strip():
                out.append((offset + len(piece) - len(stripped), stripped.split()))
            offset += len(piece) + 1
    return out


def clause_masks(answer: str, objects: np.ndarray) -> list[tuple[int, torch.Tensor]]:
    """(character offset, (chunks x tokens,) bool mask) for each clause of `answer` whose place in the clip is found
    in `objects` (`token_objects`); the first clause (the answer's first token, supervised already) is left out."""
    present = objects.any(axis=1)  # (chunks, colours, shapes)
    shape_on = present.any(axis=1)  # (chunks, shapes)
    seen: dict[tuple[str, ...], int] = {}
    out = []
    for i, (offset, words) in enumerate(clauses(answer)):
        if len(words) < 2 or words[0] not in COLOURS or words[1] not in SHAPES:
            continue
        c, s = list(COLOURS).index(words[0]), SHAPES.index(words[1])
        kind = words[2] if len(words) > 2 else "object"
        key = tuple(words)
        nth = seen.get(key, 0)
        seen[key] = nth + 1
        at, (tc, ts) = None, (c, s)
        if kind == "object":
            hits = np.flatnonzero(present[:, c, s])[:1]
        elif kind == "appears":
            hits = np.flatnonzero(present[1:, c, s] & ~shape_on[:-1, s]) + 1
        elif kind == "leaves":
            hits = np.flatnonzero(present[:-1, c, s] & ~shape_on[1:, s])
        elif kind == "turns" and len(words) == 4 and words[3] in COLOURS:
            tc = list(COLOURS).index(words[3])
            hits = np.flatnonzero(present[:-1, c, s] & present[1:, tc, s] & ~present[1:, c, s]) + 1
        else:
            continue
        if nth < len(hits):
            at = int(hits[nth])
        if at is None or i == 0:
            continue
        mask = np.zeros(objects.shape[:2], dtype=bool)
        mask[at] = objects[at, :, tc, ts]
        out.append((offset, torch.from_numpy(mask.reshape(-1))))
    return out


def clause_rows(
    answer: str, answer_tokens: list[int], objects: np.ndarray, encode: Callable[[str], list[int]]
) -> list[tuple[int, torch.Tensor]]:
    """(index in `answer_tokens` of the clause's first token, visual-token mask) for each clause `clause_masks` finds
    whose text prefix tokenizes as the start of the whole answer does (else the position is unknown: left out)."""
    out = []
    for offset, mask in clause_masks(answer, objects):
        prefix = encode(answer[:offset].rstrip(" "))
        if 0 < len(prefix) < len(answer_tokens) and answer_tokens[: len(prefix)] == prefix:
            out.append((len(prefix), mask))
    return out
