"""`summarize(video, ...)`: one pass over a video file with bounded KV, a description per segment, chapters and
a final summary; resumable, written incrementally.

    FileSource (sampled at config.fps) ─► session.push ──────────────────────────────► progress bar (frames/s, ETA)
    a frame past the current segment's end ─► 1. describe: session.ask(prompt naming the segment's time range)
                                             2. commit: snapshot + state.json (OUT.partial/), on_segment(result)
    end of the video ─► describe the last segment ─► chapters (merge_chapters) ─► 3. summary: a text pass over
    the chapters (a fresh text-only context, or the stream's store with look_back) ─► OUT, OUT.partial/ removed
    --resume: the session is loaded from the snapshot; the file is read again from just after the last frame in
    it, sampled on the original run's grid; the finished segments are read from state.json.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ContextOverflowError, FrameError, SourceNotFoundError
from ..session import Session, SessionConfig
from ..stream import FileSource, FileSourceConfig, Frame, probe
from .formats import clock, clocks, format_for
from .records import SegmentResult, Summary, merge_chapters
from .state import ResumeState, check_out, is_device, video_identity, write_text

DESCRIBE_PROMPT = "Describe what happens in the video from {start} to {end}."
SUMMARY_PROMPT = (
    "Here are descriptions of the parts of a video, in order:\n{descriptions}\n"
    "Summarize the whole video in a few sentences."
)
_FRESH = {"first_pts": None, "frames": 0, "ended": False, "segments": []}


@dataclass(frozen=True)
class SummarizeOptions:
    """How `summarize` cuts, describes and merges (the session's own settings are in `SessionConfig`)."""

    segment: float = 30.0
    """Seconds of video per described segment."""
    prompt: str = DESCRIBE_PROMPT
    """The question asked at the end of each segment; {start} and {end} become its times (m:ss)."""
    similarity: float = 0.5
    """Adjacent segments whose descriptions' word sets are at least this similar (Jaccard) form one chapter."""
    summary_prompt: str = SUMMARY_PROMPT
    """The final text pass; {descriptions} becomes one 'start-end: text' line per chapter."""
    summary_tokens: int = 128
    """Most tokens of the final summary."""
    look_back: bool = False
    """Ask the final summary over the stream's KV store (retrieval/bilevel read the chunks relevant to it)
    rather than over the descriptions alone."""
    segment_window: bool = True
    """Each description sees its own segment: with kv sink_window, its window is sized to one segment's chunks
    (+1 for a patch across the boundary), so memory also stays flat whatever the video's length; with kv full,
    retrieval or bilevel, the description reads (or selects among) the segment's chunks alone (`ask(..., within=)`)."""

    def __post_init__(self) -> None:
        if not (isinstance(self.segment, (int, float)) and 0 < self.segment < math.inf):
            raise ConfigError(f"segment must be a positive number of seconds, got {self.segment!r}")
        if not (isinstance(self.similarity, (int, float)) and 0 <= self.similarity <= 1):
            raise ConfigError(f"similarity must be a number in [0, 1] (0: one chapter, 1: only identical segments "
                              f"merge), got {self.similarity!r}")  # fmt: skip
        if not isinstance(self.summary_tokens, int) or self.summary_tokens < 1:
            raise ConfigError(f"summary_tokens must be an int >= 1, got {self.summary_tokens!r}")
        for name, keys in (("prompt", ("start", "end")), ("summary_prompt", ("descriptions",))):
            try:
                getattr(self, name).format(**dict.fromkeys(keys, "x"))
            except (KeyError, IndexError, ValueError, AttributeError) as e:
                raise ConfigError(f"{name} may only use the fields {{{'}, {'.join(keys)}}}: {e!r}") from None


def summarize(
    video: str | Path,
    model: str | Path | Any = None,
    config: SessionConfig | None = None,
    options: SummarizeOptions | None = None,
    *,
    out: str | Path | None = None,
    fmt: str | None = None,
    resume: bool = False,
    progress: bool = False,
    on_segment: Callable[[SegmentResult], None] | None = None,
) -> Summary:
    """Describe `video` segment by segment in one pass and summarise it; returns the `Summary`.

    `model`: a checkpoint path or hub id, a loaded adapter, a `Session` that has seen no frame (used as is,
    left open), or None (`config.model`, else the bundled default). `config` None: the default session with
    `kv="sink_window"` (bounded). `out`: the file written at the end in `fmt` (md, json, vtt; default from the
    suffix), with `OUT.partial/` beside it holding the finished segments meanwhile (see `state`): after an
    interruption, `resume=True` continues from the last finished segment. `on_segment` is called with each
    finished (and saved) segment. Errors: `SourceNotFoundError`, `ConfigError` (segment; a URL, camera or
    lavfi graph instead of a file), `OutputError`, `ResumeError` (state of another video or settings, or an
    unfinished run's state without `resume`)."""
    options = options or SummarizeOptions()
    path = Path(video)
    if not path.is_file():
        _refuse_a_stream(video)
        if path.is_dir():
            raise SourceNotFoundError(f"{path} is a folder: give a video file in it")
        raise SourceNotFoundError(f"video file not found: {path}")
    info = probe(path)  # not a video: NotAVideoError before a model is loaded
    target = check_out(out, path) if out is not None else None  # (the video itself as --out: said first)
    fmt = format_for(out, fmt)
    state = ResumeState(target) if target is not None and not is_device(target) else None
    if state is None and resume:
        raise ConfigError("resume needs an output file (--out, or out=): the resume state lives beside it")
    if state is not None and not resume:
        state.refuse_overwrite()  # before the model loads
    given = model if isinstance(model, Session) else None
    if given is not None and given.stats.frames_seen:
        raise ConfigError("summarize needs a Session that has seen no frame yet (or a model)")
    session = given or _session(model, config, options)
    begun: ResumeState | None = None  # the state this call started: removed if it fails before any segment
    run: _Run | None = None
    try:
        _check_segment(options.segment, session.config.fps)
        header = json.loads(
            json.dumps({"video": video_identity(path), "settings": _settings(session, options)})
        )
        saved = state.begin(header, resume) if state is not None else None
        begun = state if saved is None else None
        if saved is not None and saved["snapshot"] is not None:
            loaded = state.load_session(saved, session.adapter)  # type: ignore[union-attr]
            if given is None:
                session.close()
            session = loaded
        run = _Run(session, path, options, state, saved or {**header, **_FRESH, "segments": []}, on_segment)
        run.ingest(info, progress)
        result = run.finish()
    except BaseException:  # (Ctrl-C too)
        if begun is not None and (run is None or not run.segments):  # an empty video, a context it overflows,
            begun.remove()  # Ctrl-C before the first segment: nothing to resume, and a stale state would make
        if state is not None:  # the next run ask for --resume
            state.release()
        raise
    finally:
        if session is not given:
            session.close()
    if out is not None:
        write_text(Path(out), result.render(fmt))
    if state is not None:
        state.remove()
    return result


def _refuse_a_stream(video: str | Path) -> None:
    """A URL, camera or lavfi graph is not a file (Path() would even fold 'https://' into 'https:/'): say what
    summarize reads, and what reads those, instead of 'video file not found'."""
    from ..stream.url import redact

    text = str(video) if isinstance(video, str) else ""
    kind = text.partition(":")[0]
    if "://" in text or (kind in ("lavfi", "webcam", "camera") and text[len(kind) + 1 :]):
        raise ConfigError(
            f"summarize reads a video file, and {redact(text)} is a stream or device: download the file first, "
            "or ask over the stream while it plays with `livevlm watch` (`livevlm ask` for a URL to a file)"
        )


def _session(model: Any, config: SessionConfig | None, options: SummarizeOptions) -> Session:
    """A session for `model` on `config` (None: bounded sink_window), its window fitted to one segment."""
    from ..cache import SinkWindowConfig

    config = config or SessionConfig(kv="sink_window")
    adapter = model
    if model is None or isinstance(model, (str, Path)):
        from ..models import load_model

        name = str(model) if model is not None else config.model
        config = replace(config, model=name)
        adapter = load_model(config.model, device=config.device, dtype=config.dtype)
    if options.segment_window and isinstance(config.kv, SinkWindowConfig):
        _check_segment(options.segment, config.fps)
        chunks = math.ceil(options.segment * config.fps / adapter.frames_per_chunk - 1e-9) + 1
        config = replace(config, kv=replace(config.kv, window=chunks))
    return Session(adapter, config)


def _check_segment(segment: float, fps: float) -> None:
    if segment * fps < 1 - 1e-9:
        raise ConfigError(f"segment of {segment}s holds no frame at {fps} fps: give at least {1 / fps:g}s")


def _settings(session: Session, options: SummarizeOptions) -> dict[str, Any]:
    """What a resumed run must share with the saved one: options, session config (device aside), model."""
    from ..session_snapshot import config_to_json

    config = config_to_json(session.config)
    config.pop("device")
    return {"options": asdict(options), "config": config, "model": session.adapter.fingerprint()}


@dataclass
class _Open:
    """The segment being ingested."""

    index: int
    first_pts: float
    started: float
    last_pts: float = 0.0
    frames: int = 0


class _Run:
    """One summarize pass: the session, the finished segments and the resume state."""

    def __init__(
        self, session: Session, path: Path, options: SummarizeOptions, state: ResumeState | None,
        saved: dict[str, Any], on_segment: Callable[[SegmentResult], None] | None,
    ) -> None:  # fmt: skip
        self.session, self.path, self.options, self.state, self.on_segment = (
            session,
            path,
            options,
            state,
            on_segment,
        )
        self.data = {k: v for k, v in saved.items() if k not in ("format", "version", "snapshot")}
        self.segments = [SegmentResult(**s) for s in saved["segments"]]
        self.resumed = len(self.segments)
        self.shortfall: str | None = None  # set once the file is read to its end
        self.refused: FrameError | None = None  # the last frame the session refused
        self.duration: float | None = None  # what the file's headers declare: the last segment ends there
        self.started = time.perf_counter()

    def ingest(self, info: Any, progress: bool) -> None:
        """Push the video's frames (from where the state left off), describing each segment at its end."""
        from tqdm.auto import tqdm

        from ..context_fit import expected_frames

        if self.data["ended"]:
            return
        fps, max_frames = self.session.config.fps, self.session.config.max_frames
        self.duration = info.duration_seconds
        total = expected_frames(info.duration_seconds, fps, max_frames)
        done = self.data["frames"]
        if total and total > done:  # kv full over a file the context cannot hold: refused now, not at minute 7
            last = self.options.prompt.format(start=clock(0), end=clock(info.duration_seconds or 0))
            self.session.check_fits(total - done, (info.height, info.width), last)
        cur: _Open | None = None
        with tqdm(total=total, initial=done, unit="frame", desc="summarize", disable=not progress,
                  dynamic_ncols=True) as bar:  # fmt: skip
            for frame in self._frames(max_frames - done if max_frames else None):
                index = math.floor(frame.pts_seconds / self.options.segment + 1e-9)
                if cur is not None and index != cur.index:
                    self._finish(cur, ended=False)
                    cur = None
                try:
                    self.session.push(frame)
                except FrameError as e:  # a damaged file's out-of-order time: counted in stats.frames_rejected
                    self.refused = e
                    continue
                if self.data["first_pts"] is None:
                    self.data["first_pts"] = frame.pts_seconds
                cur = cur or _Open(index, frame.pts_seconds, time.perf_counter())
                cur.last_pts, cur.frames = frame.pts_seconds, cur.frames + 1
                self.data["frames"] += 1
                bar.update(1)
                bar.set_postfix_str(f"segment {len(self.segments) + 1}", refresh=False)
        if cur is not None:
            self._finish(cur, ended=True)
        elif self.refused is not None and not self.data["frames"]:  # every frame refused (a 64x8 video): say why
            raise FrameError(f"no frame of {self.path} could be used: {self.refused}")

    def _frames(self, limit: int | None) -> Iterator[Frame]:
        """Sampled frames after the state's last one, on the same sampling grid as an uninterrupted run."""
        fps = self.session.config.fps
        if limit is not None and limit <= 0:
            return
        last = self.session.stats.last_pts_seconds
        cfg = FileSourceConfig(self.path, fps=fps, max_frames=limit)
        if last is not None:  # resumed: read from just after the snapshot's last frame, on the whole read's grid
            cfg = replace(cfg, resume_after=(self.data["first_pts"], last))
        with FileSource(cfg) as source:
            yield from source
            self.shortfall = source.shortfall()

    def _finish(self, cur: _Open, *, ended: bool) -> None:
        """1. describe the segment over the context so far, 2. save it (and the session) to the state."""
        seg = self.options.segment
        start = float(cur.index * seg)
        end = float(min(start + seg, cur.last_pts + 1 / self.session.config.fps) if ended else start + seg)
        end = min(end, self.duration) if ended and self.duration and self.duration > cur.last_pts else end
        ingest_seconds = time.perf_counter() - cur.started
        t0 = time.perf_counter()
        context = self.session.stats.kv_tokens
        own = {"within": (start, end)} if self.options.segment_window and self.session.asks_within else {}
        first, last = clocks(start, end)
        answer = self.session.ask(self.options.prompt.format(start=first, end=last), **own)
        text = "".join(answer).strip()
        result = SegmentResult(cur.index, start, end, cur.first_pts, cur.last_pts, cur.frames, text, answer.tokens,
                               answer.finish_reason, context, ingest_seconds, time.perf_counter() - t0)  # fmt: skip
        self.segments.append(result)
        self.data["segments"] = [s.to_json() for s in self.segments]
        self.data["ended"] = ended
        if self.state is not None:
            self.state.commit(self.session, self.data)
        if self.on_segment is not None:
            self.on_segment(result)

    def finish(self) -> Summary:
        """3. chapters and the final summary."""
        chapters = merge_chapters(self.segments, self.options.similarity)
        t0 = time.perf_counter()
        lines = [f"{'-'.join(clocks(c.start, c.end))}: {' '.join(c.text.split())}" for c in chapters if c.text]
        text = self._summary(lines) if lines else ""
        stats = {
            "frames": self.data["frames"],
            "segments": len(self.segments),
            "resumed_segments": self.resumed,
            "seconds": time.perf_counter() - self.started,
            "summary_seconds": time.perf_counter() - t0,
            "kv_policy": self.session.config.kv.policy,  # type: ignore[union-attr]
            "shortfall": self.shortfall,  # a damaged or truncated file: what it promised and did not give
        }
        return Summary(str(self.path), float(self.options.segment), self.segments, chapters, text, stats)

    def _summary(self, lines: list[str]) -> str:
        """The text pass over the chapter lines: on the stream's store (look_back) or a fresh text-only context."""
        if self.options.look_back:
            return _reduce(self.session, self.options, lines)
        config = replace(self.session.config, kv="full", kv_budget=None, prune="none", vit_cache="none")
        with Session(self.session.adapter, config) as text_only:
            return _reduce(text_only, self.options, lines)


def _reduce(session: Session, options: SummarizeOptions, lines: list[str], depth: int = 0) -> str:
    """Summarise `lines`; when they overflow the context, summarise each half and then the two summaries. A text
    question on purpose (`needs_video=False`): the fresh text-only session has no frame (look_back's reads its own)."""
    try:
        prompt = options.summary_prompt.format(descriptions="\n".join(lines))
        return "".join(session.ask(prompt, options.summary_tokens, needs_video=False)).strip()
    except ContextOverflowError:
        if len(lines) < 2 or depth > 8:
            raise
    half = len(lines) // 2
    parts = [_reduce(session, options, part, depth + 1) for part in (lines[:half], lines[half:])]
    parts = [p for p in parts if p]
    return _reduce(session, options, parts, depth + 1) if parts else ""
