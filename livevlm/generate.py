"""The answer side of the loop, gpt-fast style: decode tokens on a prefilled cache, or score answer choices.

    decode_tokens:  logits ─► penalties ─► [constraint mask] ─► argmax ─► AnswerStop ─► forward(token) ─► ...
    score_choices:  for each choice: forward(its tokens + end of turn) on a copy of the question's cache
                    ─► sum of log-probabilities ─► softmax over the choices

Every function here calls the model through the adapter; the KV store only handed over the cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .answer_stop import AnswerStop, Penalties
from .cache.kv import share_cache
from .errors import AnswerDeadlineError, AnswerIncompleteError


@dataclass
class AnswerPlan:
    """How one answer is decoded: its token budget, end rules, penalties, constraint and deadline."""

    budget: int
    stop: AnswerStop
    penalties: Penalties
    constraint: Any = None
    """A `livevlm.constrain.Constraint` (regex / JSON schema), or None."""
    deadline: float | None = None
    """`time.monotonic()` after which no further token is decoded."""
    produced: int = 0
    cut_by_deadline: bool = False
    times: dict[str, float] = field(default_factory=dict)


def past_deadline(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


DECODE_PATHS = ("dynamic", "static", "graph")
"""How the tokens after an answer's first are fed to the model: on the growing cache (dynamic), on fixed-size
buffers (static, `models.static_decode`), or those steps replayed as a CUDA graph (graph, CUDA only)."""

TokenStep = Callable[[int, int], torch.Tensor]
"""(token, position) -> (vocab,) logits after the model read that token."""


def token_step(
    adapter: Any, cache: Any, budget: int, path: str, buffers: Any = None
) -> tuple[TokenStep, str, Any]:
    """The model call for each answer token after the first, the path taken (`path`, "dynamic" for a one-token
    budget (no call), or "dynamic: ..." with the reason the model or cache cannot decode in fixed shapes) and the
    fixed decode it steps (None for dynamic): taken from `buffers` (`DecodeBuffers`, given back by the caller
    with `buffers.release` once the answer is done), or built for this answer alone."""

    def dynamic(token: int, position: int) -> torch.Tensor:
        return adapter.forward(adapter.embed_ids([token]), adapter.text_positions(position, 1), cache)

    if path == "dynamic" or budget < 2:
        return dynamic, "dynamic", None
    from .models.static_decode import StaticDecode, static_decode_refusal

    why = static_decode_refusal(adapter, cache)
    if why is not None:
        return dynamic, f"dynamic: no {path} decode, {why}", None
    if buffers is not None:
        fixed = buffers.acquire(cache, budget)
    else:
        fixed = StaticDecode.for_cache(adapter, cache, budget, graph=path == "graph")
    return fixed.step, path, fixed


def decode_tokens(
    logits: torch.Tensor, step_fn: TokenStep, next_pos: int, plan: AnswerPlan, check: Callable[[], None]
) -> Iterator[int]:
    """Greedy tokens from `logits`, each fed back through `step_fn`; `check` runs before each model call."""
    for step in range(plan.budget):
        if past_deadline(plan.deadline):
            plan.cut_by_deadline = True
            if not plan.produced:
                raise AnswerDeadlineError("the deadline passed before the first answer token was decoded")
            break
        scores = plan.penalties(logits, plan.stop.ids)
        if plan.constraint is not None:
            scores = _masked(scores, plan.constraint.mask())
        token = int(torch.argmax(scores))
        plan.produced += 1
        if plan.constraint is not None:
            plan.constraint.accept(token)
        yield from plan.stop.push(token)
        if plan.stop.done or (plan.constraint is not None and plan.constraint.done()) or step == plan.budget - 1:
            break  # (the last token the budget allows needs no forward of its own)
        check()
        logits = step_fn(token, next_pos)
        next_pos += 1
    yield from plan.stop.flush()
    if plan.constraint is not None and not (plan.constraint.done() or plan.stop.done or plan.cut_by_deadline):
        raise AnswerIncompleteError(
            f"the answer used all {plan.budget} tokens before it completed its regex / JSON schema (the text so "
            "far was yielded): raise max_new_tokens, or bound the pattern (e.g. maximum, maxLength, {1,3})"
        )


def _masked(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return scores
    allowed = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
    n = min(len(mask), len(allowed))
    allowed[:n] = mask[:n].to(scores.device)
    return scores.masked_fill(~allowed, float("-inf"))


def score_choices(
    adapter: Any,
    logits: torch.Tensor,
    cache: Any,
    next_pos: int,
    choices: Sequence[Sequence[int]],
    deadline: float | None = None,
) -> torch.Tensor:
    """(len(choices),) log-likelihood of each choice's token ids (its end-of-turn token included) as the
    answer: the question's last logits score the first token, one forward per choice the rest. Each choice
    runs on its own copy of `cache`, which is left as it was."""
    first = torch.log_softmax(logits.float(), -1)
    out = []
    for ids in choices:
        if past_deadline(deadline):
            raise AnswerDeadlineError(f"the deadline passed after scoring {len(out)} of {len(choices)} choices")
        total = first[ids[0]]
        if len(ids) > 1:
            rest = adapter.forward(
                adapter.embed_ids(ids[:-1]), adapter.text_positions(next_pos, len(ids) - 1), share_cache(cache),
                all_logits=True,
            )
            lp = torch.log_softmax(rest.float(), -1).reshape(len(ids) - 1, -1)
            total = total + lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum()
        out.append(total)
    return torch.stack(out)
