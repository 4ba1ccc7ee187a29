"""Alerts: watch a stream and print a line each time the answer to a question changes.

    python demos/alerts.py                                     # the bundled sample, looped like a live camera
    python demos/alerts.py rtsp://192.168.1.20:554/stream --transport udp
    python demos/alerts.py --question "What colour is the circle?" --choices red,green,blue --min-p 0.5

The stream is watched on a background thread (`session.watch`); the main loop wakes at each new chunk
(`session.wait_for_chunk`), scores the --choices as the answer (`session.choose`, within --deadline seconds)
and prints `ALERT` when the state changes: the most likely choice, or `unsure` when none reaches --min-p
(on the bundled sample: "triangle" at p=1.00 once the green triangle is in view at 4 s; before it, with no
green object to see, the small bundled model wavers between unsure and a guessed "square"). The session
keeps only the newest --window chunks, so the answer is about what is in view now and memory stays bounded
on a stream that never ends. Stops at --duration or Ctrl-C. The bundled model knows only its world of
coloured shapes; for real video pass --model, a question and its choices.
"""

from __future__ import annotations

import argparse
import sys
import time

from _common import positive, sample_as_camera

from livevlm import AnswerDeadlineError, LivevlmError, Session, SessionConfig, open_source
from livevlm.cache import SinkWindowConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", nargs="?", default=None,
                        help="RTSP or other URL, webcam:0, file or lavfi:GRAPH (default: the sample, looped)")
    parser.add_argument("--question", default="What shape is the green object?")
    parser.add_argument("--choices", default="circle,square,triangle,cross", help="comma-separated answers")
    parser.add_argument("--min-p", type=float, default=0.8, help="below this the state is 'unsure'")
    parser.add_argument("--window", type=positive(int), default=2, help="newest chunks kept (1 chunk = 2 frames)")
    parser.add_argument("--duration", type=positive(float), default=10.0, help="stop after this many seconds")
    parser.add_argument("--deadline", type=positive(float), default=2.0, help="seconds an answer may take")
    parser.add_argument("--transport", default="tcp", choices=["tcp", "udp"], help="RTSP transport")
    parser.add_argument("--fps", type=positive(float), default=2.0, help="frames sampled per second")
    parser.add_argument("--model", default=None, help="path or hub id (default: the bundled yardstick model)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    choices = [c.strip() for c in args.choices.split(",") if c.strip()]
    if len(set(choices)) < 2 or not args.question.strip():  # refused now, not at every chunk
        parser.error("give a --question and at least two different --choices")

    current, answers, alerts = None, 0, 0
    try:
        config = SessionConfig(fps=args.fps, device=args.device, kv=SinkWindowConfig(window=args.window))
        with Session(args.model, config) as session:
            source = open_source(args.source or sample_as_camera(), fps=args.fps, realtime=True,
                                 transport=args.transport)
            stream = session.watch(source)
            print(f"watching {args.source or 'the bundled sample (looped)'} for: {args.question}", flush=True)
            end, seen = time.monotonic() + args.duration, 0
            while time.monotonic() < end and (stream.running or session.stats.chunks > seen):
                chunks = session.wait_for_chunk(seen, timeout=min(0.5, max(0.0, end - time.monotonic())))
                if chunks == seen:
                    continue  # nothing new yet
                seen = chunks
                try:
                    answer = session.choose(args.question, choices, deadline_s=args.deadline)
                except AnswerDeadlineError as e:  # too slow this time: try again at the next chunk
                    print(f"(no answer: {e})", file=sys.stderr)
                    continue
                answers += 1
                p = answer.probabilities[answer.choice]
                state = answer.choice if p >= args.min_p else "unsure"
                if state == current:
                    continue
                tag = "first answer" if current is None else f"ALERT (was {current})"
                print(f"t={answer.pts_seconds:.1f}s {tag}: {state} ({answer.choice} p={p:.2f})", flush=True)
                alerts += current is not None  # the first answer is not an alert
                current = state
            if stream.error is not None:
                raise stream.error
    except KeyboardInterrupt:  # the with block has closed the session (and stopped the source)
        print("interrupted", file=sys.stderr)
        return 130
    except LivevlmError as e:
        print(f"alerts: error: {e}", file=sys.stderr)
        return 2
    finally:
        print(f"{answers} answers, {alerts} alerts", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
