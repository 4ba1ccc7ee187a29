"""Live Q&A: watch a camera, an RTSP URL or a test source, and answer questions while it plays.

    python demos/live_qa.py                                   # the bundled sample, looped like a live camera
    python demos/live_qa.py rtsp://192.168.1.20:554/stream    # or webcam:0, a file, lavfi:testsrc2=...
    python demos/live_qa.py --question "What colour is the circle?" --every 2 --duration 8

Without --question, questions typed on stdin are answered as they come; with it, each is asked every --every
seconds. Every answer is printed with the stream time it saw. Stops at --duration, at the end of a source
(and of stdin), or on Ctrl-C. The bundled model only knows its world of coloured shapes: ask "What colour
is the circle?", "What shape is the blue object?", "What shape is visible at the end?"; for real video pass
--model (e.g. Qwen/Qwen2.5-VL-3B-Instruct).
"""

from __future__ import annotations

import argparse
import queue
import signal
import sys
import threading
import time

from _common import positive, sample_as_camera

from livevlm import LivevlmError, Session, SessionConfig, open_source


def read_stdin(questions: queue.Queue) -> None:
    for line in sys.stdin:
        if line.strip():
            questions.put(line.strip())
    questions.put(None)  # stdin closed


def stop_on_ctrl_c() -> threading.Event:
    """Ctrl-C sets the returned event: the loop ends after the answer in flight (at most --deadline) and the session
    closes in order, rather than an exception landing at any point of the loop; a second Ctrl-C interrupts at once."""
    stop = threading.Event()

    def on_sigint(_signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, on_sigint)
    return stop


def answer(session: Session, question: str, deadline_s: float) -> None:
    t = None
    try:
        reply = session.ask(question, deadline_s=deadline_s)
        t = reply.pts_range[1]  # the newest frame the answer sees (taken with its snapshot of the stream)
        text = "".join(reply).strip() or "(no answer)"
    except LivevlmError as e:  # a deadline passed, a bad question: say so and keep watching
        text = f"(no answer: {e})"
    stamp = "t=  -  " if t is None else f"t={t:5.1f}s"
    print(f"[{stamp}] {question} -> {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", nargs="?", default=None,
                        help="webcam:0, rtsp://..., a file or lavfi:GRAPH (default: the sample, looped)")
    parser.add_argument("--question", action="append", default=[],
                        help="ask this every --every seconds (repeatable); none: read questions from stdin")
    parser.add_argument("--every", type=positive(float), default=3.0, help="seconds between rounds of --question")
    parser.add_argument("--duration", type=positive(float), default=10.0, help="stop after this many seconds")
    parser.add_argument("--deadline", type=positive(float), default=2.0, help="seconds an answer may take")
    parser.add_argument("--fps", type=positive(float), default=2.0, help="frames sampled per second")
    parser.add_argument("--model", default=None, help="path or hub id (default: the bundled yardstick model)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    source = args.source or sample_as_camera()
    stop = stop_on_ctrl_c()
    try:
        with Session(args.model, SessionConfig(fps=args.fps, device=args.device)) as session:
            stream = session.watch(open_source(source, fps=args.fps, realtime=True))  # a background thread
            questions: queue.Queue = queue.Queue()
            if not args.question:
                threading.Thread(target=read_stdin, args=(questions,), daemon=True).start()
                print("watching; type a question and press Enter", file=sys.stderr, flush=True)
            end = time.monotonic() + args.duration
            while (stream.running and time.monotonic() < end and not stop.is_set()
                   and not session.wait_for_chunk(0, timeout=0.1)):  # fmt: skip
                pass  # answer over something: wait for the first chunk
            next_round, stdin_open = time.monotonic(), not args.question
            while time.monotonic() < end and not stop.is_set():
                if not stream.running and not stdin_open:
                    break  # the source ended and no question can come any more
                if args.question and time.monotonic() >= next_round and session.stats.chunks:
                    for question in args.question:
                        answer(session, question, args.deadline)
                    next_round = time.monotonic() + args.every
                try:
                    question = questions.get(timeout=0.1)
                except queue.Empty:
                    continue
                if question is None:
                    stdin_open = False
                else:
                    answer(session, question, args.deadline)
            stats = session.stats
            print(f"watched {stats.frames_seen} frames ({stats.chunks} chunks); questions answered: "
                  f"{stats.questions}", file=sys.stderr)
            if stream.error is not None:
                raise stream.error
        if stop.is_set():  # the with block has closed the session (and stopped the source)
            print("interrupted", file=sys.stderr)
            return 130
    except KeyboardInterrupt:  # a second Ctrl-C: the with block has closed what it opened
        print("interrupted", file=sys.stderr)
        return 130
    except LivevlmError as e:
        print(f"live_qa: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
