"""The question side of `Session`: ask (free text, regex / JSON-constrained), choose (scored choices), deadlines.

    ask / ask_ids / choose ─► [no frame yet: wait for a watched source's first, else NoVideoError]
        ─► _begin: snapshot of the KV store under the lock (waits at most to the deadline)
        ─► _prefill_question: [probe queries] ─► kv.answer_view ─► [pending odd frame] ─► the question
           (one-pass policies: the ingestion view, and the question selects inside its own forward instead)
        ─► generate.token_step (dynamic | static | graph) ─► generate.decode_tokens  |  generate.score_choices
Ingestion goes on meanwhile: an answer holds the lock only while it takes its snapshot.
"""

from __future__ import annotations

import math
import numbers
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from .answer_stop import AnswerStop, Penalties, answer_text, generation_eos
from .answers import AnswerStream, ChoiceAnswer
from .context_fit import check_stream_fits
from .errors import AnswerDeadlineError, ContextOverflowError, LivevlmError, QuestionError, SessionClosedError
from .generate import AnswerPlan, decode_tokens, score_choices, token_step
from .guards import check_choices, check_max_new_tokens, check_question, check_within
from .models.query_probe import InlineSelection, select_inline


@dataclass(frozen=True)
class AskState:
    """What a question is answered over, taken under the lock so ingestion can go on meanwhile."""

    snapshot: Any
    pending: list[Any]
    chunks: int
    max_position: int
    first_pts_seconds: float | None
    pts_seconds: float | None
    """Stream time of the last frame ingested (pushed) when the snapshot was taken."""
    read: tuple[int, float | None, float | None] = (0, None, None)
    """(chunks, first, last frame time) the answer reads: the whole stream, or with `within=` the range's."""


def _with_pending(span: tuple[int, Any, Any], pending: list[Any]) -> tuple[int, Any, Any]:
    """(chunks, first, last time) read by a ranged answer, its pending frames (in the range) included."""
    times = [t for t in (span[1], span[2], *(f.pts_seconds for f in pending)) if t is not None]
    return span[0], (min(times) if times else None), (max(times) if times else None)


class QuestionsMixin:
    """`ask`, `ask_ids`, `choose` and `check_fits` of `Session` (which holds the state they read)."""

    @property
    def asks_within(self) -> bool:
        """True when `ask(..., within=(start, end))` works: the KV policy keeps whole chunks it can select
        (full, retrieval, bilevel; not sink_window, which has dropped all but its window)."""
        return hasattr(self._kv, "within")

    def ask(
        self,
        question: str,
        max_new_tokens: int | None = None,
        *,
        choices: Sequence[str] | None = None,
        regex: str | None = None,
        json_schema: dict | str | None = None,
        deadline_s: float | None = None,
        within: tuple[float, float] | None = None,
        needs_video: bool = True,
    ) -> AnswerStream:
        """Stream the answer's text over the context so far; the stream context is left unchanged.

        The returned `AnswerStream` iterates the text pieces and says what the answer was asked over
        (`pts_range`, `chunks`) and, once finished, why it ended (`finish_reason`) and its `tokens`.

        `choices`: the best choice's text (see `choose`); `regex` / `json_schema`: the answer is decoded under
        that constraint; `deadline_s`: no token is decoded after that many seconds (what came stands; none at
        all raises `AnswerDeadlineError`); `within`: (start, end) stream seconds, the answer reads only the chunks
        with a frame in that range (kv retrieval / bilevel, which select chunks per question). Refused at the
        call (not at the first piece) like `ask_ids`.

        Before any frame was ingested (no chunk, no pending frame) it raises `NoVideoError` rather than answer
        from the question alone; while a source is being watched it first waits for that source's first frame
        (see `wait_for_video`; at most until `deadline_s`). `needs_video=False` asks a text-only question on
        purpose (what `summarize`'s final pass over its descriptions does): no frame is needed, and any there
        is still read."""
        if choices is not None:
            if regex is not None or json_schema is not None:
                raise QuestionError("give choices or a regex / json_schema constraint, not both")
            chosen = self.choose(question, choices, deadline_s=deadline_s, within=within,
                                 needs_video=needs_video)  # fmt: skip
            return AnswerStream(iter([chosen.choice]), chosen.pts_range, chosen.chunks, None,
                                chosen.pending_frames)  # fmt: skip
        state, suffix, plan = self._plan(question, max_new_tokens, regex, json_schema, deadline_s, within,
                                         needs_video)  # fmt: skip
        text = answer_text(self._answer(state, suffix, plan), self.adapter.decode_text)
        return AnswerStream(text, (state.read[1], state.read[2]), state.read[0], plan, len(state.pending))

    def ask_ids(
        self,
        question: str,
        max_new_tokens: int | None = None,
        *,
        regex: str | None = None,
        json_schema: dict | str | None = None,
        deadline_s: float | None = None,
        within: tuple[float, float] | None = None,
        needs_video: bool = True,
    ) -> Iterator[int]:
        """Greedy token ids of the answer (the end-of-turn token included when reached).

        The question must be non-empty UTF-8 text (`QuestionError`). Decoding follows the checkpoint's
        generation config (end tokens, repetition_penalty, no_repeat_ngram_size) and stops on a clear loop
        (`config.stop_repeats`), keeping one copy (`stats.answers_stopped_repeating`). If the session is
        closed before the answer ends, its next token raises `SessionClosedError`. No frame yet: as `ask`."""
        plan = self._plan(question, max_new_tokens, regex, json_schema, deadline_s, within, needs_video)
        return self._answer(*plan)

    def _plan(
        self,
        question: str,
        max_new_tokens: int | None,
        regex: str | None,
        json_schema: dict | str | None,
        deadline_s: float | None,
        within: tuple[float, float] | None = None,
        needs_video: bool = True,
    ) -> tuple[AskState, list[int], AnswerPlan]:
        """Check the request, take the snapshot and plan the decoding (everything `ask` refuses at the call)."""
        deadline = _deadline(deadline_s)
        constraint = self._constraint(regex, json_schema)
        budget = check_max_new_tokens(max_new_tokens, self.config.max_new_tokens)
        question = check_question(question)
        state, suffix, penalties = self._begin(question, budget, deadline, check_within(within), needs_video)
        stop = AnswerStop(self.adapter.eos_token_ids | generation_eos(self.adapter.model.generation_config),
                          self.config.stop_repeats if constraint is None else 0)  # fmt: skip
        return state, suffix, AnswerPlan(budget, stop, penalties, constraint, deadline)

    def choose(
        self,
        question: str,
        choices: Sequence[str],
        *,
        deadline_s: float | None = None,
        within: tuple[float, float] | None = None,
        needs_video: bool = True,
    ) -> ChoiceAnswer:
        """Score each of `choices` as the answer (log-likelihood of its tokens and the end of the turn, one
        forward per choice on a copy of the question's cache) and return the best with the probabilities.
        No frame yet: as `ask` (`NoVideoError`, or `needs_video=False` for a text-only question)."""
        deadline = _deadline(deadline_s)
        question = check_question(question)
        options = check_choices(choices)
        ids = [self.adapter.answer_ids(c) for c in options]
        budget = max(len(i) for i in ids)
        state, suffix, _ = self._begin(question, budget, deadline, check_within(within), needs_video)
        t0 = time.perf_counter()
        try:
            logits, cache, next_pos = self._prefill_question(state, suffix)
            scores = score_choices(self.adapter, logits, cache, next_pos, ids, deadline)
        finally:
            with self._lock:
                self._stats.seconds.prefill += time.perf_counter() - t0
        probs = torch.softmax(scores, 0)
        best = int(torch.argmax(scores))
        return ChoiceAnswer(
            options[best],
            {c: float(p) for c, p in zip(options, probs)},
            {c: float(s) for c, s in zip(options, scores)},
            state.read[2],
            state.read[0],
            state.read[1],
            len(state.pending),
        )

    def _constraint(self, regex: str | None, json_schema: dict | str | None) -> Any:
        if regex is None and json_schema is None:
            return None
        from .constrain import build_constraint

        return build_constraint(self.adapter.tokenizer, self.adapter.vocab_size, self.adapter.eos_token_ids,
                                regex=regex, json_schema=json_schema)  # fmt: skip

    def _begin(
        self,
        question: str,
        budget: int,
        deadline: float | None,
        within: tuple[float, float] | None = None,
        needs_video: bool = True,
    ) -> tuple[AskState, list[int], Penalties]:
        """The snapshot an answer is given (under the lock, waited for at most until the deadline), limited to
        the chunks `within` a time range; with `needs_video`, once there is a frame (else `NoVideoError`)."""
        restrict = getattr(self._kv, "within", None)
        if within is not None and restrict is None:
            raise QuestionError(
                f"within= needs a KV policy that keeps the stream's chunks (kv='full', 'retrieval' or 'bilevel'); this "
                f"session's is {self._kv.name!r}"
            )
        if needs_video:
            self._require_video(deadline)  # waits for a watched source's first frame (session_sources)
        wait = -1 if deadline is None else min(max(0.0, deadline - time.monotonic()), threading.TIMEOUT_MAX)
        if not self._lock.acquire(timeout=wait):
            raise AnswerDeadlineError("the deadline passed while ingestion held the session")
        try:
            self._check_open()
            suffix = self.adapter.suffix_ids(question)
            extra = self.adapter.tokens_per_chunk(self._size) if self._pending else 0
            s, used = self._stats, self._kv.stats.tokens
            snapshot, pending = self._kv.snapshot(), list(self._pending)
            read = (s.chunks, s.first_pts_seconds, s.last_pts_seconds)  # what the answer reads: all of it
            if within is not None:  # a pending odd frame outside the range is left out too
                pending = pending if any(within[0] <= f.pts_seconds <= within[1] for f in pending) else []
                stored = self._stand_ins.widen(*within)  # frames that stored nothing: the chunk standing for them
                read = _with_pending(self._kv.span(snapshot, *stored), pending)
                snapshot = restrict(snapshot, *stored, allow_empty=bool(pending))  # type: ignore[misc]
                extra = extra if pending else 0
                used = snapshot.get_seq_length() if hasattr(snapshot, "get_seq_length") else used  # kv full: the range
            if used + extra + len(suffix) + budget > self.adapter.max_context:
                self._refuse_question_size(len(suffix), budget)
                raise ContextOverflowError(
                    f"context of {used + extra} stream tokens + {len(suffix)} question tokens + {budget} answer "
                    f"tokens exceeds the model's {self.adapter.max_context}: a bounded KV policy keeps the stream "
                    "within it (--kv bilevel, SessionConfig(kv='bilevel')), ask within= a shorter range, or over fewer frames"
                )
            state = AskState(snapshot, pending, s.chunks, self._max_position,
                             s.first_pts_seconds, s.last_pts_seconds, read)  # fmt: skip
            self._stats.questions += 1
            visual = max(0, self._kv.stats.tokens - len(self._prompt_ids)) + extra
            gen = self.adapter.model.generation_config
            penalties = Penalties(gen, self._prompt_ids, self.adapter.video_token_id, visual, suffix)
            return state, suffix, penalties
        finally:
            self._lock.release()

    def _refuse_question_size(self, question_tokens: int, budget: int) -> None:
        """The question and answer budget leave no room for even one chunk of video: no KV policy helps, so say
        which of the two to cut (`ContextOverflowError`)."""
        chunk = self.adapter.tokens_per_chunk(self._size) if self._size is not None else 0
        room = self.adapter.max_context - len(self._prompt_ids) - chunk
        if question_tokens + budget > room:
            raise ContextOverflowError(
                f"the question ({question_tokens} tokens) and max_new_tokens ({budget}) alone exceed what the "
                f"model's context of {self.adapter.max_context} leaves beside one chunk of video ({room}): "
                "shorten the question or lower max_new_tokens"
            )

    def _answer(self, state: AskState, suffix: list[int], plan: AnswerPlan) -> Iterator[int]:
        """prefill the question on the selected context, then decode greedily (like gpt-fast's generate)."""
        prefill, t0, path, fixed = 0.0, time.perf_counter(), "", None
        try:
            self._check_open()
            logits, cache, next_pos = self._prefill_question(state, suffix)
            prefill, t0 = time.perf_counter() - t0, time.perf_counter()
            step_fn, path, fixed = token_step(self.adapter, cache, plan.budget, self.config.decode, self._decoders)
            cache = None
            yield from decode_tokens(logits, step_fn, next_pos, plan, self._check_open)
            path = fixed.path if fixed is not None else path  # a fixed decode whose capture failed says so
        except Exception as e:  # the session closed under a running step: say so, not what broke
            if self._closed and not isinstance(e, LivevlmError):
                raise SessionClosedError("the session was closed while this answer was being decoded") from e
            raise
        finally:
            if fixed is not None and self._decoders is not None and not self._closed:
                self._decoders.release(fixed)  # for the next answer of its bucket (its graph replayed)
            with self._lock:
                s = self._stats
                s.answer_tokens += plan.produced
                s.answers_stopped_repeating += plan.stop.looped
                s.answers_cut_by_deadline += plan.cut_by_deadline
                s.answers_by_decode.update({path: s.answers_by_decode.get(path, 0) + 1} if path else {})
                s.seconds.prefill += prefill
                s.seconds.decode += time.perf_counter() - t0

    def _prefill_question(self, state: AskState, suffix: list[int]) -> tuple[torch.Tensor, Any, int]:
        """Select the context for the question (probing its queries if the policy reads them), prefill a
        pending odd frame and the question on it; returns (logits, cache, next decode position)."""
        question = self.adapter.embed_ids(suffix)
        chunks, max_pos, pending = state.chunks, state.max_position, None
        if state.pending:  # a half-filled temporal patch: padded like the HF processor does, not pruned
            pending = self._encode(state.pending, chunks, None, max_pos + 1)
            chunks, max_pos = chunks + 1, max(max_pos, pending.last_position)
        start = self.adapter.text_start_after_video(replace(self._place0, start=max_pos + 1), chunks, self._grid_hw)
        at = self.adapter.text_positions(start, len(suffix))
        queries, inline = None, None
        if self._kv.needs_queries:
            one_pass = getattr(self._kv, "inline_selector", lambda snapshot: None)(state.snapshot)
            if one_pass is not None:  # the question selects inside its own forward, at the policy's layer
                inline = InlineSelection(*one_pass)
            else:  # the question runs once on the ingestion view first, where it will be asked
                queries = self.adapter.question_queries(question, at, self._kv.probe_view(state.snapshot))
        cache = inline.cache if inline is not None else self._kv.answer_view(state.snapshot, queries)
        if pending is not None:
            self.adapter.extend(*pending.with_text(), cache)
        if inline is None:
            logits = self.adapter.forward(question, at, cache)
        else:
            with select_inline(inline):
                logits = self.adapter.forward(question, at, cache)
            inline.check_selected()
        return logits, cache, max(max_pos, start + len(suffix) - 1) + 1

    def check_fits(self, num_frames: int, frame_hw: tuple[int, int], question: str = "") -> None:
        """Refuse up front (`ContextOverflowError`, naming the remedy: `kv="bilevel"` or the `max_frames` that
        fit) `num_frames` more frames of `frame_hw` (height, width) that `kv="full"` cannot answer `question`
        over within the model's context. An estimate from the budget: bounded KV policies and pruners whose
        kept count depends on the content are not refused here (`ask` still checks)."""
        with self._lock:
            self._check_open()
            if self.config.kv.policy != "full" or num_frames < 1:
                return
            size = self._size or self.adapter.target_size(
                *frame_hw, min_pixels=self.config.min_pixels, max_pixels=self.config.max_pixels
            )
            check_stream_fits(
                self.adapter, self._pruner, used=self._kv.stats.tokens, pending=len(self._pending),
                num_frames=num_frames, size=size, question=question, max_new_tokens=self.config.max_new_tokens,
            )  # fmt: skip


def _deadline(seconds: float | None) -> float | None:
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real) or not seconds > 0:  # numpy's too
        raise QuestionError(f"deadline_s must be a number of seconds > 0, got {seconds!r}")
    if not math.isfinite(float(seconds)):
        raise QuestionError(f"deadline_s must be finite (None: no deadline), got {seconds!r}")
    return time.monotonic() + float(seconds)
