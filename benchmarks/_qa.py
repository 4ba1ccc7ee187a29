"""Video QA accuracy through `livevlm.Session`, and the retention of a compressed setting vs the baseline.

A QA set is a JSONL file, one item a line:

    {"video": "clip.mp4", "question": "What falls?", "answer": "B", "choices": ["a cup", "a ball", ...]}

`video` is relative to the file's folder (or absolute); `choices` is optional. With choices the question is
asked as multiple choice (options lettered A, B, ...) and the first letter of the reply is scored against
`answer` (a letter, or the text of the right option); without, the reply is right when it contains the
normalized `answer`. Meaningful only with a trained model (the yardstick of issue 7).
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livevlm import Session, SessionConfig, load_model


@dataclass(frozen=True)
class QAItem:
    """One question about one video, with its reference answer."""

    video: str
    question: str
    answer: str
    choices: tuple[str, ...] | None = None


def load_qa(path: str | Path) -> list[QAItem]:
    """Read a JSONL QA set; relative video paths are resolved against the file's folder."""
    path = Path(path)
    items = []
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            video = Path(row["video"])
            video = video if video.is_absolute() else path.parent / video
            choices = tuple(row["choices"]) if row.get("choices") else None
            items.append(QAItem(str(video), row["question"], str(row["answer"]), choices))
    return items


def _norm(text: str) -> str:
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


def prompt(item: QAItem) -> str:
    if not item.choices:
        return item.question
    options = "\n".join(f"{string.ascii_uppercase[i]}. {c}" for i, c in enumerate(item.choices))
    return f"{item.question}\n{options}\nAnswer with the option's letter."


def is_correct(item: QAItem, reply: str) -> bool:
    if item.choices:
        letters = string.ascii_uppercase[: len(item.choices)]
        want = item.answer.strip()
        if want not in letters:  # the answer was given as the option's text
            want = letters[[_norm(c) for c in item.choices].index(_norm(want))]
        found = re.search(rf"\b([{letters}])\b", reply.strip())
        return found is not None and found.group(1) == want
    return _norm(item.answer) in _norm(reply)


def accuracy(
    model: Any,
    items: Sequence[QAItem],
    prune: Any = "none",
    fps: float = 2.0,
    max_frames: int | None = None,
    max_new_tokens: int = 16,
) -> float:
    """Share of `items` answered right by `model` (a path, hub id or loaded adapter) with pruner `prune`."""
    adapter = load_model(model) if isinstance(model, (str, Path)) else model
    right = 0
    for item in items:
        session = Session(
            adapter, SessionConfig(fps=fps, max_frames=max_frames, prune=prune, max_new_tokens=max_new_tokens)
        )
        session.ingest(item.video)
        right += is_correct(item, "".join(session.ask(prompt(item))))
    return right / len(items) if items else float("nan")


def accuracy_retention(
    model: Any, items: Sequence[QAItem], prunes: Sequence[Any], **kw: Any
) -> dict[str, Any]:
    """Accuracy per pruner spec and its ratio to `none`'s (None when the baseline answers nothing right)."""
    adapter = load_model(model) if isinstance(model, (str, Path)) else model
    base = accuracy(adapter, items, "none", **kw)
    out: dict[str, Any] = {"baseline_accuracy": base, "items": len(items), "per_strategy": {}}
    if not base:
        out["note"] = "the baseline answered nothing right: retention is undefined (is the model trained?)"
    for spec in prunes:
        acc = accuracy(adapter, items, spec, **kw)
        name = spec if isinstance(spec, str) else spec.strategy
        out["per_strategy"][name] = {"accuracy": acc, "retention": acc / base if base else None}
    return out
