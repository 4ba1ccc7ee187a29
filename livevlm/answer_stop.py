"""How an answer ends: the end tokens, the checkpoint's repetition settings and a stop on clear loops.

    logits ─► Penalties (generation config: repetition_penalty, no_repeat_ngram_size, as HF generate does)
        ─► argmax token ─► AnswerStop.push(token) ─► the tokens now safe to show

`AnswerStop` ends the answer at an end token, or when its tail is `repeats` copies in a row of a unit of
1-8 tokens spanning at least 8 tokens (period 1: 8 copies, period 2: 4, period 3-8: `repeats`): a clear
loop such as "blueblueblue...". Only the first copy is kept, so the answer reads "blue". Tokens that could
still turn out to be a repeated copy (only ever inside a repetition) are held back until they cannot.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import Any

import torch

MAX_PERIOD = 8
"""Longest repeated unit (tokens) the loop stop looks for."""
MIN_SPAN = 8
"""Fewest tokens a loop must span: a short run ("1000", "!!!") is text, not a loop."""


class AnswerStop:
    """Decides, token by token, when a greedy answer ends and which of its tokens are shown."""

    def __init__(self, eos: Collection[int], repeats: int = 3) -> None:
        self.eos = frozenset(eos)
        self.repeats = repeats
        self.ids: list[int] = []
        self.done = False
        self.looped = False
        self._emitted = 0

    def push(self, token: int) -> list[int]:
        """Add the next token; returns the tokens that can be shown now (none while they may be a repeat)."""
        self.ids.append(token)
        if token in self.eos:
            self.done = True
            return self._emit(len(self.ids))
        for p in range(1, MAX_PERIOD + 1) if self.repeats else ():
            copies = max(self.repeats, math.ceil(MIN_SPAN / p))
            if len(self.ids) >= copies * p and self._run(p) >= (copies - 1) * p:
                self.done = self.looped = True
                return self._emit(len(self.ids) - (copies - 1) * p)
        held = max((self._run(p) for p in range(1, MAX_PERIOD + 1)), default=0) if self.repeats else 0
        return self._emit(len(self.ids) - held)

    def flush(self) -> list[int]:
        """The tokens still held back (the answer ended on its budget)."""
        return self._emit(len(self.ids)) if not self.looped else []

    def _run(self, p: int) -> int:
        """How many of the last tokens each equal the token `p` before them."""
        ids, n = self.ids, 0
        while n < len(ids) - p and ids[-1 - n] == ids[-1 - n - p]:
            n += 1
        return n

    def _emit(self, end: int) -> list[int]:
        out = self.ids[self._emitted : max(end, self._emitted)]
        self._emitted = max(end, self._emitted)
        return out


class Penalties:
    """The checkpoint's `repetition_penalty` and `no_repeat_ngram_size`, applied like HF's logits processors
    over the prompt (system prompt, video placeholders, question) and the answer so far."""

    def __init__(
        self,
        generation_config: Any,
        prompt: Sequence[int],
        video_token: int,
        visual: int,
        question: Sequence[int],
    ) -> None:
        self.penalty = float(getattr(generation_config, "repetition_penalty", None) or 1.0)
        self.ngram = int(getattr(generation_config, "no_repeat_ngram_size", None) or 0)
        # HF's input ids: prompt, one placeholder per visual token, question. Past `ngram` placeholders more
        # of them change neither the n-grams nor the penalised set, so a long stream costs nothing here.
        self.ids = [*prompt, *[video_token] * min(visual, max(self.ngram, 1)), *question]
        self._seen: dict[tuple[int, ...], set[int]] = {}
        self._counted = 0  # n-grams ending before this index are in `_seen`

    @property
    def active(self) -> bool:
        return self.penalty != 1.0 or self.ngram > 0

    def __call__(self, logits: torch.Tensor, answer: Sequence[int]) -> torch.Tensor:
        if not self.active:
            return logits
        seq = self.ids + list(answer)
        logits = logits.clone()
        if self.penalty != 1.0:
            index = torch.tensor(sorted(set(seq)), dtype=torch.long, device=logits.device)
            score = logits[index]
            logits[index] = torch.where(score < 0, score * self.penalty, score / self.penalty)
        n = self.ngram
        if n > 0 and len(seq) + 1 >= n:
            for end in range(max(self._counted, n), len(seq) + 1):
                self._seen.setdefault(tuple(seq[end - n : end - 1]), set()).add(seq[end - 1])
            self._counted = len(seq) + 1
            banned = self._seen.get(tuple(seq[len(seq) - n + 1 :]), set())
            if banned:
                logits[torch.tensor(sorted(banned), device=logits.device)] = float("-inf")
        return logits


def generation_eos(generation_config: Any) -> set[int]:
    """End tokens the checkpoint's generation config names (besides the model's own)."""
    eos = getattr(generation_config, "eos_token_id", None)
    return {int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos]) if i is not None and i >= 0}


def answer_text(ids: Iterable[int], decode: Callable[[Sequence[int]], str]) -> Iterator[str]:
    """Stream the text of the token ids as it grows (an unfinished multi-byte character waits)."""
    tokens: list[int] = []
    emitted = ""
    for token in ids:
        tokens.append(token)
        text = decode(tokens)
        if text.endswith("\ufffd"):
            continue
        if len(text) > len(emitted):
            yield text[len(emitted) :]
            emitted = text
