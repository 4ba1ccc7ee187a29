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
    from ..session import Session
    from ..stream import probe

    config = session_config(args, max_frames=args.max_frames)  # bad flags fail before any file is read
    probe(args.video)  # a missing or broken file fails here, before a model is loaded
    if args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    with Session(config=config) as session:  # closing deletes a disk tier's spill files
        session.ingest(args.video, progress=not args.no_progress)
        for piece in session.ask(args.question):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        if args.stats:
            print(session.stats, file=sys.stderr)
    return 0
