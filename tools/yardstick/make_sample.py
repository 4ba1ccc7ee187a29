"""Generate the bundled sample clip with PyAV: `python -m tools.yardstick.make_sample OUT`.

The sample is a scene of the yardstick world (tools.yardstick), the one the bundled model was trained on,
upscaled 4x and encoded to H.264 yuv420p mp4 at 2 fps.
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

SAMPLE_QUESTIONS = {
    "What colour is the circle?": "red",
    "What shape is the blue object?": "square",
    "Which appears first, the green triangle or the blue square?": "blue square",
}
"""Questions about the sample scene and their answers (the README asks the first)."""


def sample_scene() -> np.ndarray:
    """The sample's frames: a red circle and a blue square drift for 8 s; a green triangle joins at 4 s."""
    from tools.yardstick.world import Track, render

    frames = 16
    tracks = [
        Track("square", 11.0, "blue", [(0, frames)], (60.0, 24.0), (-1.6, 1.2)),
        Track("triangle", 11.0, "green", [(8, frames)], (22.0, 62.0), (1.2, -0.8)),
        Track("circle", 11.5, "red", [(0, frames)], (20.0, 20.0), (1.8, 1.5)),
    ]
    pixels, _ = render(tracks, frames, np.random.default_rng(7))
    return pixels


def encode_frames(frames: np.ndarray, out: str | Path, fps: int = 2, scale: int = 4, crf: int = 12) -> Path:
    """Encode uint8 RGB (T, H, W, 3) frames, each pixel repeated `scale` x `scale`, to an H.264 mp4."""
    out = Path(out)
    big = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    with av.open(str(out), "w", options={"movflags": "+faststart"}) as dst:
        stream = dst.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = big.shape[2], big.shape[1], "yuv420p"
        stream.options = {"crf": str(crf), "preset": "slow", "g": str(2 * fps)}
        for i, rgb in enumerate(big):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(
                format="yuv420p"
            )
            frame.pts, frame.time_base = i, Fraction(1, fps)
            dst.mux(stream.encode(frame))
        dst.mux(stream.encode(None))
    return out


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: write the sample clip to the given path."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path, help="output .mp4 path")
    args = parser.parse_args(argv)
    path = encode_frames(sample_scene(), args.out)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
