"""Score a model on world examples through the public `Session` API, frame by frame as a live stream.

Every example gets a fresh `Session` (its own KV, feature cache and pruner state) on one loaded adapter;
frames are pushed with their timestamps, then the question is asked and the reply compared exactly. A clip at
another source rate (a v2 clip with `source_frames`) is sampled to the world's rate by the `Sampler` file sources
use; a description is also scored part by part (`describe.score_description`).
"""

from __future__ import annotations

import string
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from livevlm.session import Session, SessionConfig
from livevlm.stream.sampler import Sampler
from tools.yardstick.describe import score_description
from tools.yardstick.world import FPS, Example

DESCRIBE_TOKENS = 64
"""Tokens a description may take (the longest world descriptions take about 40)."""


@dataclass
class QAResult:
    """One example's outcome and what the session spent on it."""

    qtype: str
    question: str
    answer: str
    reply: str
    correct: bool
    frames: int
    """Frames pushed into the session (after sampling)."""
    visual_tokens: int
    """Tokens the vision tower produced."""
    kept_tokens: int
    """Visual tokens that entered the language model (after pruning)."""
    context_tokens: int
    """Tokens the question attended to (the KV policy's view of the stream)."""
    vit_seconds: float
    prefill_seconds: float
    ttft_seconds: float
    """From asking to the first answer token."""
    chunks_reused: int = 0
    """Temporal patches whose features the ViT cache reused entirely."""
    describe: dict[str, float] | None = None
    """For a describe question: object / event recall and precision (`score_description`)."""


def normalize(text: str) -> str:
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


def answer_example(
    adapter: Any, example: Example, config: SessionConfig, max_new_tokens: int | None = None
) -> QAResult:
    """Stream `example` into a new session on `adapter` and ask its question (`max_new_tokens` None: 6, or
    `DESCRIBE_TOKENS` for a description)."""
    if max_new_tokens is None:
        max_new_tokens = DESCRIBE_TOKENS if example.qtype == "describe" else 6
    sampler = Sampler(FPS if example.fps != FPS else None)
    pushed = 0
    with Session(adapter, replace(config, fps=FPS)) as session:
        for i, frame in enumerate(example.frames):
            if sampler.keep(i / example.fps):
                session.push(frame, pts_seconds=i / example.fps)
                pushed += 1
        start = time.perf_counter()
        ids, ttft = [], 0.0
        for token in session.ask_ids(example.question, max_new_tokens=max_new_tokens):
            ttft = ttft or time.perf_counter() - start
            ids.append(token)
        stats = session.stats
    reply = adapter.decode_text(ids).strip()
    vit = stats.vit_cache
    return QAResult(
        qtype=example.qtype,
        question=example.question,
        answer=example.answer,
        reply=reply,
        correct=normalize(reply) == normalize(example.answer),
        frames=pushed,
        visual_tokens=stats.visual_tokens,
        kept_tokens=stats.prune.tokens_kept if stats.prune.tokens_in else stats.visual_tokens,
        context_tokens=int(getattr(stats.kv, "last_context_tokens", 0) or stats.kv.tokens),
        vit_seconds=stats.seconds.vit,
        prefill_seconds=stats.seconds.prefill,
        ttft_seconds=ttft,
        chunks_reused=int(vit.chunks_reused) if vit is not None else 0,
        describe=score_description(reply, example.answer) if example.qtype == "describe" else None,
    )


def evaluate(
    adapter: Any, examples: Iterable[Example], config: SessionConfig | None = None, progress: bool = False
) -> list[QAResult]:
    """Answer every example under `config` (default: the uncompressed baseline)."""
    from tqdm.auto import tqdm

    config = config or SessionConfig()
    examples = list(examples)
    return [
        answer_example(adapter, ex, config)
        for ex in tqdm(examples, desc="qa", unit="question", disable=not progress, leave=False)
    ]


def summarize(results: Sequence[QAResult]) -> dict[str, Any]:
    """Accuracy per question type and overall, with token and time totals."""
    by_type: dict[str, list[bool]] = {}
    for r in results:
        by_type.setdefault(r.qtype, []).append(r.correct)
    accuracy = {t: float(np.mean(v)) for t, v in by_type.items()}
    accuracy["overall"] = float(np.mean([r.correct for r in results])) if results else 0.0
    totals = {
        k: float(sum(getattr(r, k) for r in results))
        for k in (
            "visual_tokens",
            "kept_tokens",
            "context_tokens",
            "vit_seconds",
            "prefill_seconds",
            "ttft_seconds",
        )
    }
    out = {"n": len(results), "accuracy": accuracy, "totals": totals}
    scores = [r.describe for r in results if r.describe is not None]
    if scores:
        out["describe"] = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
    return out


def as_rows(results: Sequence[QAResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]
