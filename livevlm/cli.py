"""The `livevlm` command: `ask VIDEO QUESTION` answers about a file; `watch SOURCE` answers while watching."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .cli_common import add_compression_args, compression_kwargs
from .cli_watch import add_watch_parser, run_watch
from .errors import LivevlmError

DEFAULT_MODEL_NOTICE = (
    "note: no --model given, using the bundled default: a 4.9M-parameter Qwen2.5-VL trained on synthetic "
    "clips of coloured shapes; it answers questions about colours, shapes, counts and order of such shapes "
    "(see README) and nothing else"
)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livevlm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    ask = sub.add_parser("ask", help="ingest a video file and stream the answer to a question")
    ask.add_argument("video", help="path of a video file")
    ask.add_argument("question")
    ask.add_argument("--model", default=None, help="local path or hub id (default: the bundled model)")
    ask.add_argument("--fps", type=float, default=2.0, help="frames sampled per second (default 2)")
    ask.add_argument("--max-frames", type=int, default=None, help="stop after this many sampled frames")
    ask.add_argument("--max-new-tokens", type=int, default=64)
    ask.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    ask.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    ask.add_argument("--stats", action="store_true", help="print the session's stats to stderr at the end")
    ask.add_argument("--no-progress", action="store_true", help="hide the ingestion progress bar")
    add_compression_args(ask)

    add_watch_parser(sub)

    sub.add_parser("sample", help="print the path of the bundled sample clip")

    tiny = sub.add_parser("build-tiny", help="save a tiny random-weight checkpoint (for tests and demos)")
    tiny.add_argument("out")
    tiny.add_argument("--family", default="qwen2_5_vl", choices=["qwen2_5_vl", "qwen2_vl"])
    tiny.add_argument("--seed", type=int, default=0)
    return parser


def _ask(args: argparse.Namespace) -> int:
    from .session import Session, SessionConfig
    from .stream import probe

    probe(args.video)  # a missing or broken file fails here, before a model is loaded
    config = SessionConfig(
        model=args.model,
        fps=args.fps,
        max_frames=args.max_frames,
        max_new_tokens=args.max_new_tokens,
        device=args.device,
        dtype=args.dtype,
        **compression_kwargs(args),
    )
    if args.model is None:
        print(DEFAULT_MODEL_NOTICE, file=sys.stderr)
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


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "ask":
            return _ask(args)
        if args.command == "watch":
            if args.model is None:
                print(DEFAULT_MODEL_NOTICE, file=sys.stderr)
            return run_watch(args)
        if args.command == "sample":
            from .assets import sample_video_path

            print(sample_video_path())
            return 0
        if args.command == "build-tiny":
            from .models.tiny import build_tiny_checkpoint

            print(build_tiny_checkpoint(args.out, args.family, seed=args.seed))
            return 0
    except LivevlmError as exc:
        print(f"livevlm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
