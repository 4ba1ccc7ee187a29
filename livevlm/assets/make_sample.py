"""Generate the bundled sample clip with PyAV: `python -m livevlm.assets.make_sample OUT`.

Encodes an FFmpeg lavfi test source (default `testsrc2`, moving colour content) to H.264 yuv420p mp4.
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import av


def encode_lavfi(
    out: str | Path,
    *,
    seconds: float = 4.0,
    fps: int = 10,
    size: tuple[int, int] = (320, 240),
    source: str = "testsrc2",
    crf: int = 32,
    faststart: bool = False,
) -> Path:
    """Encode `seconds` of lavfi `source` at `fps` and `size` (w, h) to an H.264 mp4 at `out`.

    `faststart` moves the mp4 index (moov atom) before the media data, as streaming servers want.
    """
    out = Path(out)
    w, h = size
    n_frames = max(1, round(seconds * fps))
    spec = f"{source}=size={w}x{h}:rate={fps}"  # no `duration`: not every lavfi source accepts it
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(spec, format="lavfi") as src, av.open(str(out), "w", options=options) as dst:
        stream = dst.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "slow", "g": str(2 * fps)}
        for i, frame in enumerate(src.decode(video=0)):
            if i >= n_frames:
                break
            frame = frame.reformat(format="yuv420p")
            frame.pts, frame.time_base = i, Fraction(1, fps)  # constant frame rate from 0
            dst.mux(stream.encode(frame))
        dst.mux(stream.encode(None))
    return out


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: write the sample clip to the given path."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path, help="output .mp4 path")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--source", default="testsrc2")
    args = parser.parse_args(argv)
    path = encode_lavfi(args.out, seconds=args.seconds, fps=args.fps, source=args.source)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
