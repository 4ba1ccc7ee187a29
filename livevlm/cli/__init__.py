"""The `livevlm` command: `ask VIDEO QUESTION` answers about a file; `watch SOURCE` answers while watching;
`summarize VIDEO` writes chapters and a summary of a long file; `serve` answers over HTTP for many streams;
`doctor` prints what a bug report needs about this machine (devices, versions, kernel backends).

Each subcommand lives in its own module with `add_parser(sub)` and `run(args)`; the session flags are
generated once from `SessionConfig` (`livevlm.cli.flags`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Sequence

from ..errors import LivevlmError, OutputError
from ..models.tiny import TINY_FAMILIES
from . import ask, doctor, serve, summarize, watch

DEFAULT_MODEL_NOTICE = (
    "note: no --model given, using the bundled default: a 4.9M-parameter Qwen2.5-VL trained on synthetic "
    "clips of coloured shapes; it answers questions about colours, shapes, counts and order of such shapes "
    "(see README) and nothing else"
)
DESCRIPTION = "Answer questions about video files and live streams with a video language model, in bounded memory."
COMMANDS = {"ask": ask, "watch": watch, "summarize": summarize, "serve": serve}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livevlm", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.add_parser(sub)
    doctor.add_parser(sub)
    sub.add_parser("sample", help="print the path of the bundled sample clip")
    tiny = sub.add_parser("build-tiny", help="save a tiny random-weight checkpoint (for tests and demos)")
    tiny.add_argument("out", help="the checkpoint folder to create (it must not exist or be empty)")
    tiny.add_argument("--family", default="qwen2_5_vl", choices=list(TINY_FAMILIES),
                      help="the architecture (default: %(default)s)")  # fmt: skip
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: %(default)s)")
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: sources stop, sessions close, spill files are removed."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        return _run(args)
    except BrokenPipeError:  # stdout closed early (`livevlm ask ... | head -c 2`): quiet, as Unix tools are
        with contextlib.suppress(OSError):  # (and no second error when Python flushes stdout at exit)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool the pipe stopped
    except Terminated:
        # every session and source was closed while unwinding (spill files removed); exit now rather than
        # let interpreter shutdown race native threads (FFmpeg, torch) a stopped source may still be leaving
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(143)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    try:
        if args.command in COMMANDS:
            if args.model is None:
                print(DEFAULT_MODEL_NOTICE, file=sys.stderr)
            return COMMANDS[args.command].run(args)
        if args.command == "doctor":
            return doctor.run(args)
        if args.command == "sample":
            from ..assets import sample_video_path

            print(sample_video_path())
            return 0
        if args.command == "build-tiny":
            from ..models.tiny import build_tiny_checkpoint

            try:
                print(build_tiny_checkpoint(args.out, args.family, seed=args.seed))
            except OSError as e:  # a file in the way, no permission, a full disk
                raise OutputError(f"cannot write a checkpoint folder at {args.out}: {e.strerror or e}") from e
            return 0
    except LivevlmError as exc:
        print(f"livevlm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        if isinstance(exc, Terminated):
            raise
        return 130
    return 1
