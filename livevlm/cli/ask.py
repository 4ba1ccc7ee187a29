"""`livevlm ask SOURCE QUESTION`: ingest a video to its end, then stream the answer to a question.

SOURCE is anything `open_source` opens that ends: a file, a URL to a file (http(s)://...), a camera, a live
stream or a lavfi graph with --max-frames. A source that never ends is refused (use `livevlm watch`). Frames
are read as fast as the source allows. A file or download that was damaged or cut short is still answered
over what could be read, with one warning line on stderr saying what was skipped or missed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Iterable
from typing import Any

from ..context_fit import expected_frames
from .flags import add_session_args, session_config


def add_parser(sub: Any) -> None:
    """Register the `ask` subcommand."""
    ask = sub.add_parser("ask", help="ingest a video to its end and stream the answer to a question")
    ask.add_argument(
        "video",
        help="video file or URL to one (http(s)://...); a camera (webcam:N), live stream (rtsp://...) or "
        "lavfi:GRAPH never ends and needs --max-frames",
    )
    ask.add_argument("question")
    ask.add_argument("--max-frames", type=int, default=None, help="stop after this many sampled frames")
    ask.add_argument("--transport", default="tcp", choices=["tcp", "udp"], help="RTSP transport (default tcp)")
    ask.add_argument("--stats", action="store_true", help="print the session's stats to stderr at the end")
    ask.add_argument("--no-progress", action="store_true", help="hide the ingestion progress bar")
    a = ask.add_argument_group("answer form")
    a.add_argument("--choices", default=None, help="comma-separated answers to choose from (scored by the model; "
                   "the probabilities go to stderr)")  # fmt: skip
    a.add_argument("--regex", default=None, help="decode the answer under this regular expression")
    a.add_argument("--json-schema", default=None, metavar="JSON_OR_FILE",
                   help="decode the answer as JSON valid against this schema (inline JSON or a file)")  # fmt: skip
    a.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                   help="stop decoding after this many seconds and print what there is")  # fmt: skip
    a.add_argument("--within", default=None, metavar="START-END",
                   help="answer over that part of the video alone, e.g. 1:00-1:30 or 60-90 (seconds); "
                   "needs --kv full, retrieval or bilevel")  # fmt: skip
    add_session_args(ask)


def _checked_frames(session: Any, source: Any, args: argparse.Namespace, question: str) -> Iterable[Any]:
    """The source's frames, once it is known that the context can hold them (with `--kv full`): a local file
    from its headers, another source of known length (--max-frames, a URL's duration) from its first frame's
    size. Fails now, not after ingesting all of it."""
    from ..stream import FileSource, probe

    if isinstance(source, FileSource):
        info = probe(source.path)  # 'file:///x.mp4' opens /x.mp4
        frames = expected_frames(info.duration_seconds, session.config.fps, args.max_frames)
        if frames:
            session.check_fits(frames, (info.height, info.width), question)
        return source
    frames = expected_frames(source.declared_duration, session.config.fps, args.max_frames)
    stream = iter(source)
    first = next(stream, None)
    if first is None:
        return ()
    if frames:
        session.check_fits(frames, (first.height, first.width), question)
    return itertools.chain([first], stream)


def run(args: argparse.Namespace) -> int:
    """The `ask` command; returns the exit status."""
    from tqdm.auto import tqdm

    from ..context_fit import expected_frames
    from ..errors import ConfigError, UnboundedSourceError
    from ..guards import check_question
    from ..session import Session
    from ..stream import open_source

    question = check_question(args.question)  # an empty or undecodable question fails before anything loads
    config = session_config(args, max_frames=args.max_frames)  # bad flags fail before any source is read
    schema = _schema(args.json_schema)
    if args.choices is not None and (args.regex is not None or schema is not None):
        raise ConfigError("give --choices or a --regex / --json-schema constraint, not both")
    args.within = _within(args.within, config)
    # opened before a model is loaded: a missing file, a broken one or a refused URL fails at once
    source = open_source(args.video, fps=config.fps, realtime=False, max_frames=args.max_frames,
                         transport=args.transport)  # fmt: skip
    with source:
        if source.endless:
            name = source.source_id  # a URL's password left out
            raise UnboundedSourceError(
                f"{name} never ends (a camera, a live stream or a lavfi graph): `livevlm ask` reads "
                "its source to the end before answering; give --max-frames N to answer over the first N "
                f"sampled frames, or use `livevlm watch {name}` to ask while it plays"
            )
        if args.no_progress:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        with Session(config=config) as session:  # closing deletes a disk tier's spill files
            frames = _checked_frames(session, source, args, question)
            total = expected_frames(source.declared_duration, config.fps, args.max_frames)
            bar = tqdm(frames, total=total, unit="frame", desc="ingest", disable=args.no_progress, leave=False)
            session.ingest(bar)  # closes the bar; the source is closed by `with source`
            shortfall = source.shortfall()
            if shortfall is not None:
                print(f"livevlm: warning: {source.source_id}: {shortfall}", file=sys.stderr, flush=True)
            _answer(session, question, args, schema)
            floored = session.stats.prune.chunks_floored
            if floored:
                print(f"note: the pruning budget rounded to 0 tokens in {floored} chunks; each kept 1", file=sys.stderr)
            if args.stats:
                print(session.stats, file=sys.stderr)
    return 0


def _answer(session: Any, question: str, args: argparse.Namespace, schema: Any) -> None:
    """The answer in the form the flags ask for: a scored choice, a constrained or a free answer."""
    if args.choices is not None:
        choices = [c.strip() for c in args.choices.split(",")]
        answer = session.choose(question, choices, deadline_s=args.deadline, within=args.within)
        print(answer.choice, flush=True)
        probs = ", ".join(f"{c}={p:.3f}" for c, p in answer.probabilities.items())
        print(f"choices: {probs}", file=sys.stderr)
        return
    print_answer(
        session.ask(question, regex=args.regex, json_schema=schema, deadline_s=args.deadline, within=args.within)
    )


def _within(text: str | None, config: Any) -> tuple[float, float] | None:
    """--within START-END (seconds or [h:]m:ss each) as stream seconds; refused before any work when malformed
    or when the KV policy cannot read a part of the stream alone."""
    from ..cache.kv import KV_POLICIES
    from ..errors import ConfigError

    if text is None:
        return None
    parts = text.split("-")
    try:
        if len(parts) != 2:
            raise ValueError
        start, end = (_clock_seconds(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--within must be START-END in seconds or m:ss (e.g. 1:00-1:30), got {text!r}") from None
    if start > end:
        raise ConfigError(f"--within starts after it ends: {text!r}")
    if not hasattr(KV_POLICIES.load(config.kv.policy), "within"):
        raise ConfigError(f"--within needs --kv full, retrieval or bilevel (they keep the stream's chunks), not "
                          f"--kv {config.kv.policy}")  # fmt: skip
    return start, end


def _clock_seconds(text: str) -> float:
    """'90', '1:30' or '1:01:30' as seconds (ValueError otherwise)."""
    fields = text.strip().split(":")
    if not 1 <= len(fields) <= 3 or any(not f for f in fields):
        raise ValueError(text)
    seconds = 0.0
    for f in fields:
        seconds = seconds * 60 + float(f)
    if not 0 <= seconds < float("inf"):  # also refuses nan
        raise ValueError(text)
    return seconds


def _schema(text: str | None) -> Any:
    """--json-schema: inline JSON, or the path of a file holding it."""
    from pathlib import Path

    from ..errors import ConfigError

    if text is None:
        return None
    path = Path(text)
    inline = text.lstrip().startswith(("{", "["))
    if not inline and path.is_file():
        text = path.read_text()
    elif not inline:
        raise ConfigError(f"--json-schema {text!r} is not inline JSON (a '{{...}}' object) nor a file that exists")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--json-schema {'is not valid JSON' if inline else f'file {path} is not JSON'}: {exc}") from None


def print_answer(pieces: Any) -> None:
    """Stream an answer to stdout, ended by a newline; an empty one prints '(no answer)' on stderr instead."""
    text = ""
    try:
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
            text += piece
    except BaseException:
        if text:  # an error (or Ctrl-C) after part of the answer: its message goes on a line of its own
            sys.stdout.write("\n")
            sys.stdout.flush()
        raise
    if text:
        sys.stdout.write("\n")
        sys.stdout.flush()
    if not text.strip():
        print("(no answer)", file=sys.stderr, flush=True)
