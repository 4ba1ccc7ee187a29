"""Summarize a video file into chapters: one line per --segment seconds, adjacent identical chapters merged.

    python demos/summarize_file.py                       # the bundled sample, 4 s segments
    python demos/summarize_file.py long.mp4 --segment 60

prints one line per chapter, e.g. `[00:00-00:08] red circle` on the bundled sample (its two 4 s segments agree,
so they merge; only the red circle's colour reaches --min-p there). The file is sampled at --fps; each segment is
ingested into its own session (all sharing one loaded model) and described with scored choices
(`Session.choose`) over the words of the bundled model's world: which colours are in view, then the shape of
each. The yardstick answers a colour question with the colour most in view and spreads its probability over
the other colours there (it barely reads which shape the question names), so the colours scoring at least
--min-p are listed. A real model would instead be asked `session.ask("Describe what happens.")`.

`livevlm summarize` is the full command (a describe prompt per segment, bounded KV, resume, md/json/vtt).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from _common import positive

from livevlm import Frame, LivevlmError, Session, SessionConfig, load_model, open_source
from livevlm.assets import sample_video_path

# the bundled model's world (tools/yardstick/world.py)
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "cross")


def clock(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m:02d}:{s:02d}"


def segments(path: str, fps: float, length: float) -> Iterator[tuple[float, float, list[Frame]]]:
    """(start, end, frames) of each `length`-second segment of the file, sampled at `fps`."""
    frames: list[Frame] = []
    index = 0
    for frame in open_source(path, fps=fps, realtime=False):  # as fast as it decodes
        i = int(frame.pts_seconds // length)
        if frames and i != index:
            yield index * length, (index + 1) * length, frames
            frames = []
        index = i
        frames.append(frame)
    if frames:
        yield index * length, frames[-1].pts_seconds + 1 / fps, frames


def describe(session: Session, min_p: float) -> str:
    """'red circle, blue square': the colours in view, each with its shape (in a fixed order, so that equal
    chapters read the same and merge)."""
    colours = session.choose("What colour is the circle?", COLOURS).probabilities
    seen = [c for c in COLOURS if colours[c] >= min_p]
    return ", ".join(f"{c} {session.choose(f'What shape is the {c} object?', SHAPES).choice}" for c in seen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("video", nargs="?", default=str(sample_video_path()), help="(default: the sample)")
    parser.add_argument("--segment", type=positive(float), default=4.0, help="seconds per chapter before merging")
    parser.add_argument("--fps", type=positive(float), default=2.0, help="frames sampled per second")
    parser.add_argument("--min-p", type=float, default=0.15, help="list the colours at least this likely")
    parser.add_argument("--model", default=None, help="path or hub id (default: the bundled yardstick model)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    chapter: list = []  # [start, end, text] of the chapter not printed yet

    def flush() -> None:
        if chapter:
            start, end, text = chapter
            print(f"[{clock(start)}-{clock(end)}] {text or '(nothing recognised)'}", flush=True)

    try:
        model = load_model(args.model, device=args.device)  # loaded once, shared by every segment's session
        config = SessionConfig(fps=args.fps, device=args.device)
        for start, end, frames in segments(args.video, args.fps, args.segment):
            with Session(model, config) as session:  # each segment seen on its own
                session.ingest(frames)
                text = describe(session, args.min_p)
            if chapter and chapter[2] == text:
                chapter[1] = end  # the same as before: one longer chapter
            else:
                flush()
                chapter = [start, end, text]
        flush()
    except KeyboardInterrupt:
        flush()
        print("interrupted", file=sys.stderr)
        return 130
    except LivevlmError as e:
        print(f"summarize_file: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
