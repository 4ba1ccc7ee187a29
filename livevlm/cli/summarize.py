"""`livevlm summarize VIDEO`: chapters with timestamps and a summary of a long video, in one bounded pass.

VIDEO ─► summarize (livevlm.summary): a description per --segment seconds ─► chapters ─► summary
stderr: a progress bar (frames/s, ETA) and one line per finished segment; stdout or --out: md, json or vtt.
With --out, OUT.partial/ beside it keeps the finished segments and the session; after Ctrl-C, the same command
with --resume continues from the last finished segment. The KV policy defaults to sink_window here, its window
sized to one segment, so memory stays flat however long the video is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..summary import FORMATS, SummarizeOptions
from .flags import add_session_args, field_docs, session_config

KV_HELP = (
    "KV policy (`livevlm.cache`); default here sink_window, its window sized to one --segment, so memory stays "
    "flat however long the video is; retrieval and bilevel are bounded too; full = every token kept, unbounded "
    "(for comparison where memory allows)."
)


def add_parser(sub: Any) -> None:
    """Register the `summarize` subcommand."""
    s = sub.add_parser("summarize", help="describe a long video segment by segment: chapters and a summary")
    s.add_argument("video", help="video file")
    docs = field_docs(SummarizeOptions)
    s.add_argument(
        "--segment", type=float, default=SummarizeOptions.segment, metavar="SECONDS",
        help=docs["segment"] + " (default: %(default)s)",
    )
    s.add_argument("--format", default=None, choices=FORMATS,
                   help="md (Markdown chapters), json (segments with times, text, timings) or vtt (WebVTT "
                   "chapters); default: from --out's suffix, else md")  # fmt: skip
    s.add_argument("--out", default=None, metavar="FILE",
                   help="write the result here (default: stdout); OUT.partial/ beside it keeps finished "
                   "segments until the end, for --resume")  # fmt: skip
    s.add_argument("--resume", action="store_true", help="continue an interrupted run (same video, --out and "
                   "settings) from its last finished segment")  # fmt: skip
    s.add_argument("--similarity", type=float, default=SummarizeOptions.similarity,
                   help=docs["similarity"] + " (default: %(default)s)")  # fmt: skip
    s.add_argument("--prompt", default=SummarizeOptions.prompt, help=docs["prompt"])
    s.add_argument("--look-back", action="store_true", help=docs["look_back"])
    s.add_argument("--max-frames", type=int, default=None, help="stop after this many sampled frames")
    s.add_argument("--no-progress", action="store_true", help="hide the progress bar and the segment lines")
    add_session_args(s, {"kv": ("sink_window", KV_HELP)})


def run(args: argparse.Namespace) -> int:
    """The `summarize` command; returns the exit status."""
    from tqdm.auto import tqdm

    from ..summary import format_for, summarize
    from ..summary.formats import NOTHING, clocks

    config = session_config(args, max_frames=args.max_frames)  # bad flags fail before anything loads
    options = SummarizeOptions(segment=args.segment, prompt=args.prompt, similarity=args.similarity,
                               look_back=args.look_back)  # fmt: skip
    fmt = format_for(None, args.format)  # stdout's; summarize checks --out's suffix after --out itself
    if args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

    def report(seg: Any) -> None:
        if not args.no_progress:
            tqdm.write(f"[{'-'.join(clocks(seg.start, seg.end))}] {seg.text or NOTHING}", file=sys.stderr)

    try:
        result = summarize(args.video, config.model, config, options, out=args.out, fmt=args.format, resume=args.resume,
                           progress=not args.no_progress, on_segment=report)  # fmt: skip
    except KeyboardInterrupt:
        if args.out is not None and Path(f"{args.out}.partial", "state.json").is_file():  # (none before a segment)
            print(f"interrupted: the finished segments are kept in {args.out}.partial; run the same command with "
                  "--resume to continue", file=sys.stderr, flush=True)  # fmt: skip
        raise
    if result.stats.get("shortfall"):  # as `ask` says it: the summary covers what could be read
        print(f"livevlm: warning: {args.video}: {result.stats['shortfall']}", file=sys.stderr, flush=True)
    if args.out is None:
        sys.stdout.write(result.render(fmt))
        sys.stdout.flush()
    else:
        print(f"wrote {args.out}: {len(result.segments)} segments, {len(result.chapters)} chapters",
              file=sys.stderr)  # fmt: skip
    return 0
