"""A simulated robot steering by what its camera sees: frames pushed from its loop, one act per chunk.

    python demos/robot_loop.py
    python demos/robot_loop.py --duration 30 --window 2 --realtime

The robot drives past coloured beacons, one every --leg seconds (red, blue, green, ...). Its camera is the
yardstick world (tools/yardstick/world.py) drawing the beacon ahead: it grows as the robot nears it and
slides across the view as the robot turns. Each frame goes in with `session.push(frame, pts_seconds=t)`;
after each completed chunk the loop asks a constrained question (`session.choose`) and acts: red -> turn
left, blue -> turn right, anything else -> straight on, and an answer less likely than --min-p -> hold
course. A robot runs for ever, so the session keeps only the newest --window chunks (a sink-window KV
policy): its memory stays bounded and "at the end" means the last seconds.

The camera imports `tools.yardstick.world`, which is not installed with livevlm: run this from a checkout.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _common import positive

from livevlm import LivevlmError, Session, SessionConfig
from livevlm.cache import SinkWindowConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's root, for tools/
from tools.yardstick.world import COLOURS, FRAME_SIZE, Track, render

COURSE = ("red", "blue", "green", "red", "yellow", "blue")
"""The colour of each beacon the robot meets, in order (then again from the start)."""
ACTIONS = {"red": ("turn left", 15.0), "blue": ("turn right", -15.0)}
"""Answer -> (what the robot does, change of heading in degrees); any other colour: straight on."""
QUESTION = "What colour is the circle at the end?"


class Robot:
    """A heading and a camera: the beacon ahead is a circle drawn by the yardstick world's renderer."""

    def __init__(self, leg: float) -> None:
        self.leg, self.heading = leg, 0.0

    def beacon(self, t: float) -> str:
        return COURSE[int(t // self.leg) % len(COURSE)]

    def camera(self, t: float) -> np.ndarray:
        colour = self.beacon(t)
        near = (t % self.leg) / self.leg  # 0 when a beacon comes into view, 1 as the robot reaches it
        x = float(np.clip(FRAME_SIZE / 2 + 0.6 * self.heading, 14, FRAME_SIZE - 14))  # left turn: moves right
        beacon = Track("circle", 8.5 + 4.0 * near, colour, [(0, 1)], (x, FRAME_SIZE / 2), (0.0, 0.0))
        frames, _ = render([beacon], 1, np.random.default_rng(3))  # the same seed: the same floor each frame
        return frames[0]

    def act(self, colour: str) -> str:
        action, turn = ACTIONS.get(colour, ("straight on", 0.0))
        self.heading = float(np.clip(self.heading + turn, -45.0, 45.0))
        return action


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=positive(float), default=10.0, help="seconds of robot time to simulate")
    parser.add_argument("--leg", type=positive(float), default=5.0, help="seconds between beacons")
    parser.add_argument("--fps", type=positive(float), default=2.0, help="camera frames per second")
    parser.add_argument("--window", type=positive(int), default=2, help="newest chunks kept (1 chunk = 2 frames)")
    parser.add_argument("--min-p", type=float, default=0.5, help="act only on answers at least this likely")
    parser.add_argument("--realtime", action="store_true", help="the camera's pace, not as fast as possible")
    parser.add_argument("--model", default=None, help="path or hub id (default: the bundled yardstick model)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if not 0.0 <= args.min_p <= 1.0:
        parser.error(f"--min-p is a probability in [0, 1], got {args.min_p:g}")
    if args.duration * args.fps < 2:  # one chunk is two frames: fewer would ask nothing
        parser.error(f"--duration {args.duration:g} at --fps {args.fps:g} gives fewer than the 2 frames of one "
                     f"chunk: give at least {2 / args.fps:g} s")  # fmt: skip

    robot = Robot(args.leg)
    try:
        config = SessionConfig(fps=args.fps, device=args.device, kv=SinkWindowConfig(window=args.window))
        with Session(args.model, config) as session:
            start = time.monotonic()
            for i in range(int(args.duration * args.fps)):
                t = i / args.fps
                if args.realtime:
                    time.sleep(max(0.0, start + t - time.monotonic()))
                if session.push(robot.camera(t), pts_seconds=t) is None:
                    continue  # the chunk (2 frames) is not complete yet
                answer = session.choose(QUESTION, list(COLOURS))
                p = answer.probabilities[answer.choice]
                action = robot.act(answer.choice) if p >= args.min_p else "unsure, hold course"
                print(f"t={answer.pts_seconds:.1f}s answer={answer.choice} p={p:.2f} -> {action} "
                      f"(heading {robot.heading:+.0f} deg, beacon was {robot.beacon(t)})", flush=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except LivevlmError as e:
        print(f"robot_loop: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
