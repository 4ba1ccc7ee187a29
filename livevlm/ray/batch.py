"""`ingest_many`: a backlog of video files fanned out over a Ray cluster, one task per segment, merged in order.

    ingest_many(["a.mp4", "clips/"], ["What happened?"], model=path, segment_seconds=60)
      1. plan     each file probed: a missing one raises `SourceNotFoundError` before any task starts;
                  [0, duration) cut into `Segment`s of `segment_seconds` (the last one shorter)
      2. fan out  one Ray task per segment: a fresh `Session` on the worker's model (loaded once per worker
                  process, cached by path/device/dtype) ingests only `FileSource(path, start_seconds, max_frames)`
                  and answers every question over it; the model is loaded once first, by one task like
                  the others: a model that cannot load raises its `ModelLoadError` before any segment starts
      3. merge    results gathered as tasks finish (a tqdm bar over segments), returned in plan order; a segment
                  that fails carries its error, the others still come back
`run_segment` is the task's body, callable without Ray (the reference a test compares with).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from ..errors import ConfigError, LivevlmError, QuestionError, SourceNotFoundError
from ..models import load_model
from ..session import Session
from ..session_config import SessionConfig, as_session_config
from ..stream import FileSource, FileSourceConfig, probe

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".ts", ".mpg", ".mpeg")
"""Files of a directory that `ingest_many` reads (the directory itself is not recursed into)."""


@dataclass(frozen=True)
class Segment:
    """One stretch of one file: frames sampled at or after `start_seconds`, at most `max_frames` of them."""

    source: str
    start_seconds: float
    end_seconds: float | None
    """Where the next segment starts (the file's duration for the last one); None: unknown, read to the end."""
    max_frames: int | None


@dataclass(frozen=True)
class SegmentResult:
    """What one segment gave: its stretch, the frames ingested, and each question's answer over them."""

    source: str
    start_seconds: float
    end_seconds: float | None
    frames: int = 0
    answers: dict[str, str] = field(default_factory=dict)
    """question -> the whole answer's text (greedy, so equal to a plain `Session` over the same frames)."""
    pts_range: tuple[float | None, float | None] = (None, None)
    """Stream times of the first and last frame ingested."""
    error: str | None = None
    """`ErrorType: message` when the segment failed (then `answers` is empty)."""
    shortfall: str | None = None
    """What the file promised in this stretch and did not give (`FileSource.shortfall`: a truncated file's 'stopped
    at A s of B s', corrupt packets skipped); the answers are over the frames it did give."""

    @property
    def ok(self) -> bool:
        return self.error is None


def video_files(sources: str | Path | Iterable[str | Path]) -> list[Path]:
    """The files named by `sources` (a file, a directory's video files sorted by name, or a list of both).
    Anything missing raises `SourceNotFoundError` naming every missing path."""
    items = [sources] if isinstance(sources, (str, Path)) else list(sources)
    missing = [str(p) for p in items if not Path(p).exists()]
    if missing:
        raise SourceNotFoundError(f"no such file or directory: {', '.join(missing)}")
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
            if not found:
                raise SourceNotFoundError(f"no video files ({', '.join(VIDEO_SUFFIXES)}) in {item}")
            files += found
        else:
            files.append(item)
    return files


def plan_segments(files: Sequence[Path], segment_seconds: float, fps: float) -> list[Segment | SegmentResult]:
    """Each file cut into segments; a file that exists but cannot be probed is one failed `SegmentResult`."""
    if not (isinstance(segment_seconds, (int, float)) and 0 < segment_seconds < math.inf):
        raise ConfigError(f"segment_seconds must be a positive number of seconds, got {segment_seconds!r}")
    if segment_seconds * fps < 1:
        raise ConfigError(
            f"segment_seconds={segment_seconds} holds no frame at fps={fps}: use at least {1 / fps:g} s"
        )
    plan: list[Segment | SegmentResult] = []
    for path in files:
        try:
            duration = probe(path).duration_seconds
        except LivevlmError as e:
            plan.append(SegmentResult(str(path), 0.0, None, error=f"{type(e).__name__}: {e}"))
            continue
        if not duration:  # unknown length: one segment read to the end
            plan.append(Segment(str(path), 0.0, None, None))
            continue
        count = max(1, math.ceil(duration / segment_seconds - 1e-9))
        for i in range(count):
            start, end = i * segment_seconds, min((i + 1) * segment_seconds, duration)
            plan.append(Segment(str(path), start, end, max(1, math.ceil((end - start) * fps - 1e-9))))
    return plan


_MODELS: dict[tuple[str | None, str, str], Any] = {}
"""The models this process has loaded (a Ray worker keeps its own across the tasks it runs)."""


def _model(config: SessionConfig) -> Any:
    key = (config.model, config.device, config.dtype)
    if key not in _MODELS:
        _MODELS[key] = load_model(config.model, device=config.device, dtype=config.dtype)
    return _MODELS[key]


def _check_model(config: SessionConfig) -> None:
    """Load `config`'s model in this process (a Ray worker keeps it for the segments it then runs): a model that
    cannot load fails once here, not once per segment."""
    _model(config)


def run_segment(
    segment: Segment, questions: Sequence[str], config: SessionConfig, max_new_tokens: int | None = None
) -> SegmentResult:
    """Ingest one segment into a fresh `Session` on this process's cached model and answer every question."""
    result = SegmentResult(segment.source, segment.start_seconds, segment.end_seconds)
    source = FileSourceConfig(segment.source, fps=config.fps, start_seconds=segment.start_seconds,
                              max_frames=segment.max_frames)  # fmt: skip
    try:
        with Session(_model(config), config) as session, FileSource(source) as read:
            frames = session.ingest(read)
            answers = {q: "".join(session.ask(q, max_new_tokens)) for q in questions}
            stats, short = session.stats, read.shortfall()
    except LivevlmError as e:
        return dataclasses.replace(result, error=f"{type(e).__name__}: {e}")
    pts = (stats.first_pts_seconds, stats.last_pts_seconds)
    return dataclasses.replace(result, frames=frames, answers=answers, pts_range=pts, shortfall=short)


def ingest_many(
    sources: str | Path | Iterable[str | Path],
    questions: Sequence[str],
    *,
    model: str | None = None,
    config: SessionConfig | None = None,
    segment_seconds: float = 60.0,
    max_new_tokens: int | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    progress: bool = True,
) -> list[SegmentResult]:
    """Every segment of every file as a Ray task (`num_cpus`/`num_gpus` each); the results in file and time order.

    `model` (or `config.model`) is loaded once per worker process; `config` (sampling `fps`, pruning, KV policy,
    ...) is each segment's `Session` config. Raises before any task starts: `SourceNotFoundError` for a missing
    file or a directory without videos, `ConfigError` for a `segment_seconds` that holds no frame at
    `config.fps`, `QuestionError` for no question or an empty one; then, from one task that loads the model,
    what `load_model` raises (`ModelLoadError` for a mistyped path). Uses the Ray cluster `ray.init` connected
    to (Ray starts a local one if none is)."""
    from tqdm.auto import tqdm

    config = as_session_config(config)
    if model is not None:
        config = dataclasses.replace(config, model=str(model))
    questions = [questions] if isinstance(questions, str) else list(questions)
    if not questions or not all(isinstance(q, str) and q.strip() for q in questions):
        raise QuestionError(f"questions must be non-empty strings (at least one), got {questions!r}")
    plan = plan_segments(video_files(sources), segment_seconds, config.fps)
    resources = {"num_cpus": num_cpus, "num_gpus": num_gpus}
    if any(isinstance(s, Segment) for s in plan):  # on a worker like the tasks': its device, its model files
        _raise_cause(ray.remote(_check_model).options(**resources).remote(config))

    task = ray.remote(run_segment).options(**resources)
    results: list[SegmentResult | None] = [s if isinstance(s, SegmentResult) else None for s in plan]
    pending = {task.remote(s, questions, config, max_new_tokens): i
               for i, s in enumerate(plan) if isinstance(s, Segment)}  # fmt: skip
    with tqdm(total=len(plan), unit="segment", desc="ingest_many", disable=not progress) as bar:
        bar.update(len(plan) - len(pending))
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                segment = plan[i]
                assert isinstance(segment, Segment)
                try:
                    results[i] = ray.get(ref)
                except ray.exceptions.RayError as e:  # the task or its worker died (not a livevlm error)
                    error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                    results[i] = SegmentResult(segment.source, segment.start_seconds, segment.end_seconds,
                                               error=error)  # fmt: skip
                bar.update(1)
    return [r for r in results if r is not None]


def _raise_cause(ref: Any) -> None:
    """`ray.get(ref)`, raising a livevlm error the task raised as itself (its message, not Ray's traceback)."""
    try:
        ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, LivevlmError):
            raise e.cause from None
        raise
