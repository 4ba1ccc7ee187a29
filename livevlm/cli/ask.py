"""`livevlm ask VIDEO QUESTION`: ingest a video file, then stream the answer to a question."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .flags import add_session_args, session_config


def add_parser(sub: Any) -> None:
    """Register the `ask` subcommand."""
    ask = sub.add_parser("ask", help="ingest a video file and stream the answer to a question")
    ask.add_argument("video", help="path of a video file")
    ask.add_argument("question")
    ask.add_argument("--max-frames", type=int, default=None, help="stop after this many sampled frames")
    ask.add_argument("--stats", action="store_true", help="print the session's stats to stderr at the end")
    ask.add_argument("--no-progress", action="store_true", help="hide the ingestion progress bar")
    add_session_args(ask)


def run(args: argparse.Namespace) -> int:
    """The `ask` command; returns the exit status."""
    from ..context_fit import expected_frames
    from ..guards import check_question
    from ..session import Session
    from ..stream import probe

    question = check_question(args.question)  # an empty or undecodable question fails before anything loads
    config = session_config(args, max_frames=args.max_frames)  # bad flags fail before any file is read
    info = probe(args.video)  # a missing or broken file fails here, before a model is loaded
    if args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    with Session(config=config) as session:  # closing deletes a disk tier's spill files
        frames = expected_frames(info.duration_seconds, config.fps, config.max_frames, info.fps)
        if frames:  # a video the context cannot hold fails now, not after ingesting it all
            session.check_fits(frames, (info.height, info.width), question)
        session.ingest(args.video, progress=not args.no_progress)
        print_answer(session.ask(question))
        floored = session.stats.prune.chunks_floored
        if floored:
            print(
                f"note: the pruning budget rounded to 0 tokens in {floored} chunks; each kept 1",
                file=sys.stderr,
            )
        if args.stats:
            print(session.stats, file=sys.stderr)
    return 0


def print_answer(pieces: Any) -> None:
    """Stream an answer to stdout, ended by a newline; an empty one prints '(no answer)' on stderr instead."""
    text = ""
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
        text += piece
    if text:
        sys.stdout.write("\n")
        sys.stdout.flush()
    if not text.strip():
        print("(no answer)", file=sys.stderr, flush=True)
