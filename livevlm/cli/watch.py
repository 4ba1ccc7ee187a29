"""`livevlm watch SOURCE`: ingest a live source in the background, answer questions typed on stdin.

stdin thread ─► questions queue ─► main loop ─► session.ask (streams the answer to stdout)
source ─► LiveReader (bounded, keep-latest) ─► Ingestor thread ─► session.push
main loop, every --status-every s ─► stderr: fps in | fps processed | dropped | corrupt | reconnects | context
The loop ends at --duration, on 'quit', on Ctrl-C, or once the source has ended and stdin is closed.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from .flags import add_session_args, session_config

_QUIT = ("quit", "exit", ":q")


def add_parser(sub: Any) -> None:
    """Register the `watch` subcommand on the CLI's subparsers."""
    w = sub.add_parser("watch", help="watch a live source and answer questions typed on stdin")
    w.add_argument("source", help="file, URL (rtsp://, http(s)://, ...), webcam:N / webcam:NAME, lavfi:GRAPH")
    w.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    w.add_argument("--transport", default="tcp", choices=["tcp", "udp"], help="RTSP transport (default tcp)")
    w.add_argument("--live", action="store_true",
                   help="a URL's end is a dropped connection: reconnect with backoff (rtsp, rtmp, udp, srt, ... always "
                        "are; for an HTTP camera or stream)")  # fmt: skip
    w.add_argument("--fast", action="store_true", help="read a file as fast as possible, not in real time")
    w.add_argument("--buffer", type=int, default=8, help="frames buffered before dropping the oldest")
    w.add_argument("--status-every", type=float, default=5.0, help="seconds between status lines (0: off)")
    add_session_args(w)


class StatusLine:
    """Rates between two calls, from the ingestion and session counters."""

    def __init__(self) -> None:
        self._last: tuple[float, int, int] | None = None

    def __call__(self, session: Any) -> str:
        s = session.stats
        ing = s.stream
        now = time.monotonic()
        decoded = ing.source.frames_decoded if ing else 0
        processed = ing.frames_processed if ing else 0
        t0, d0, p0 = self._last or (now - (ing.seconds if ing else 0.0), 0, 0)
        self._last = (now, decoded, processed)
        dt = max(now - t0, 1e-9)
        parts = [
            f"t={ing.seconds:.1f}s" if ing else "t=0.0s",
            f"in {(decoded - d0) / dt:.1f} fps",
            f"processed {(processed - p0) / dt:.1f} fps",
            f"dropped {ing.buffer.frames_dropped if ing else 0}",
            f"corrupt {ing.source.frames_corrupt if ing else 0}",
            f"reconnects {ing.source.reconnects if ing else 0}",
            f"context {s.kv_tokens} tokens",
        ]
        return "[watch] " + " | ".join(parts)


def _summary(session: Any) -> str:
    """Totals at the end of a watch."""
    s = session.stats
    ing = s.stream
    return (
        f"[watch] done after {ing.seconds:.1f}s: frames in {ing.source.frames_decoded}, "
        f"processed {ing.frames_processed}, rejected {ing.frames_rejected}, dropped {ing.buffer.frames_dropped}, "
        f"corrupt {ing.source.frames_corrupt}, reconnects {ing.source.reconnects}, "
        f"questions {s.questions}, context {s.kv_tokens} tokens"
    )


def _read_stdin(questions: queue.Queue[str | None]) -> None:
    """Queue the lines typed on stdin. Read as bytes: a line that is not UTF-8 keeps its bad bytes (as
    surrogates) and is refused by the session with a message, instead of killing this reader."""
    for line in _stdin_lines():
        questions.put(line.decode("utf-8", "surrogateescape").strip())
    questions.put(None)


def _stdin_lines() -> Iterator[bytes]:
    """stdin's lines, read from its file descriptor with `os.read`: this thread may still be blocked in a read
    when the process exits, and a read through `sys.stdin` would hold its buffer's lock then (a fatal error
    at interpreter shutdown)."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):  # a stdin replaced by an object without a descriptor
        yield from (line.encode("utf-8", "surrogateescape") for line in sys.stdin)
        return
    pending = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # stdin closed under us: no more questions
            chunk = b""
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        yield from lines
    if pending:
        yield pending


def run(args: argparse.Namespace) -> int:
    """The `watch` command; returns the exit status."""
    from ..errors import ConfigError
    from ..session import Session
    from ..stream import LiveReader, ReaderConfig, open_source

    config = session_config(args)  # bad flags fail before a source is opened
    if args.duration is not None and not args.duration > 0:
        raise ConfigError(f"--duration must be a number of seconds > 0, got {args.duration}")
    if args.buffer < 1:  # (ReaderConfig would name its own field, not the flag)
        raise ConfigError(f"--buffer must be at least 1 frame, got {args.buffer}")

    # the source opens first: a bad URL or device fails before a model is loaded; a camera or stream is read
    # at once (what arrives while the model loads is dropped by the bounded buffer); a file (local or by URL)
    # waits for the model
    source = open_source(args.source, fps=args.fps, realtime=not args.fast, transport=args.transport,
                         live=args.live or None)  # fmt: skip
    reader = LiveReader(source, ReaderConfig(capacity=args.buffer))
    if source.live and source.endless:
        reader.start()
    session = None
    status = StatusLine()
    try:
        session = Session(config=config)
        ingestor = session.watch(reader)
        questions: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_read_stdin, args=(questions,), name="livevlm-stdin", daemon=True).start()
        print(f"[watch] watching {source.source_id}; type a question and press Enter", file=sys.stderr)
        _loop(session, ingestor, questions, status, args)
    finally:  # also on Ctrl-C / SIGTERM, even one inside watch(): stop the source, close (spill files go), report
        if session is not None:
            session.close()  # stops the watched source too
            if session.stats.stream is not None:
                print(_summary(session), file=sys.stderr)
        reader.close()
    shortfall = source.shortfall()  # a damaged file, a download cut short
    if shortfall is not None:
        print(f"livevlm: warning: {source.source_id}: {shortfall}", file=sys.stderr)  # (the URL's password redacted)
    if ingestor.error is not None:
        print(f"livevlm: error: {ingestor.error}", file=sys.stderr)
        return 2
    return 0


def _loop(
    session: Any, ingestor: Any, questions: queue.Queue[str | None], status: StatusLine, args: Any
) -> None:
    start = time.monotonic()
    deadline = None if args.duration is None else start + args.duration
    every = args.status_every if args.status_every > 0 else None
    next_status = start + every if every else None
    stdin_open = True
    status(session)  # rates start from here, not from before the model was loaded
    while True:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return
        if not ingestor.running and not stdin_open:
            return
        if next_status is not None and now >= next_status:
            print(status(session), file=sys.stderr, flush=True)
            next_status = now + every
        waits = [t - now for t in (deadline, next_status) if t is not None]
        try:  # a bounded wait: the deadline, the next status line or a question, whichever comes first
            question = questions.get(timeout=max(0.01, min(waits, default=1.0)))
        except queue.Empty:
            continue
        if question is None:
            stdin_open = False
        elif question.lower() in _QUIT:
            return
        elif question:
            _answer(session, question)


def _answer(session: Any, question: str) -> None:
    """Stream one answer to stdout; a refused question is reported on stderr and watching goes on."""
    from ..errors import LivevlmError
    from .ask import print_answer

    try:
        print_answer(session.ask(question))
    except LivevlmError as e:
        print(f"livevlm: cannot answer: {e}", file=sys.stderr, flush=True)
