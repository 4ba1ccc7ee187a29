"""The decord file backend: picks the sampled frames from the index, then decodes only those (random access).

PyAV demuxes the file once (no decoding) for the exact timestamps: decord's own are float32 (an hour into a file
they are off by 0.1 ms, ten hours in by 4 ms, enough to move a sampling instant to the next frame). The same
`schedule` as the PyAV reader picks the frames and holds one over instants no frame reaches. A file decord
cannot read as PyAV does (a display rotation, which decord 0.6 mangles; frames without timestamps; damaged
data, which decord neither skips nor counts) is read by PyAV instead: `frame_index` says why.

Imported only when `FileSourceConfig.backend` selects decord, so decord stays an optional extra.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, NotAVideoError
from ._damage import Losses
from ._schedule import MAX_HOLD_SECONDS, schedule
from .base import SourceStats
from .frame import Frame
from .sampler import Sampler

_BATCH = 8  # frames decoded per decord call


@dataclass(frozen=True)
class FrameIndex:
    """Every frame's presentation time (seconds from the file's start, in order) and how long it is shown."""

    times: list[float]
    durations: list[float]
    clock: float = 0.0
    """The file's first timestamp (seconds): decord's float32 times are off by up to 2e-7 of the raw clock."""


def available() -> bool:
    """Whether decord can be imported."""
    return importlib.util.find_spec("decord") is not None


def frame_index(container: Any, stream: Any, origin: float) -> FrameIndex | str:
    """The times of `stream`'s frames from its packets (PyAV, nothing decoded but the first frame, for its
    rotation), counted from `origin`; or, as a string, why decord cannot read this file as PyAV does."""
    pts: list[tuple[int, int]] = []
    first, losses = True, Losses(container, None)
    for packet in container.demux(stream):
        losses.packet(packet)
        if packet.pts is None and packet.dts is None and not packet.size:
            continue  # the demuxer's final flush packet
        if packet.pts is None:
            return "its frames have no timestamps"
        if getattr(packet, "is_corrupt", False):
            return "it has damaged packets (PyAV skips and counts them)"
        pts.append((packet.pts, packet.duration or 0))
        if first:
            frames = packet.decode()
            first = not frames
            degrees = getattr(frames[0], "rotation", 0) or 0 if frames else 0  # PyAV < 13: no rotation
            if round(degrees / 90) % 4:
                return f"it is shown rotated by {degrees} degrees"
    if losses.missing(container, stream):
        return "its demuxer skipped damaged data (PyAV counts the frames lost)"
    base = float(stream.time_base)
    pts.sort()
    return FrameIndex([p * base - origin for p, _ in pts], [d * base for _, d in pts], abs(origin))


def open_reader(path: Path, size: tuple[int, int] | None = None) -> Any:
    """Open `path` with decord (frames scaled to `size` = (height, width) if given), mapping its failures."""
    try:
        import decord
    except ImportError as e:
        raise ConfigError("backend='decord' needs decord: pip install 'livevlm[decord]'") from e
    try:
        h, w = size if size is not None else (-1, -1)
        return decord.VideoReader(str(Path(path).absolute()), ctx=decord.cpu(0), num_threads=1, width=w, height=h)
    except (decord.DECORDError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NotAVideoError(f"not a video: decord cannot open {path} ({first})") from e


def disagreement(reader: Any, index: FrameIndex) -> str | None:
    """Why decord's frame numbering does not match `index` (another frame count, other times); None if it does."""
    if len(reader) != len(index.times):
        return f"decord counts {len(reader)} frames, the demuxer {len(index.times)}"
    if not index.times:
        return None
    own = [float(t) for t in reader.get_frame_timestamp(range(len(reader)))[:, 0]]
    for t, mine in zip(own, index.times):
        if abs((t - own[0]) - (mine - index.times[0])) > 1e-3 + 5e-7 * (abs(mine) + index.clock):  # float32
            return f"decord's frame at {t:.3f} s is the demuxer's at {mine:.3f} s"
    return None


def decord_frames(
    reader: Any,
    index: FrameIndex,
    path: Path,
    sampler: Sampler,
    stats: SourceStats,
    max_frames: int | None,
    wait: Callable[[float], bool],
    declared_duration: float | None,
    downscaled: bool = False,
) -> Iterator[Frame]:
    """Yield the frames `schedule` picks from `index` (a frame held over instants no frame reaches, as PyAV's
    reader does); frames decord fails to decode are skipped and counted.

    `downscaled`: the reader was opened at a reduced size (each frame counts in `stats.frames_downscaled`).
    """
    times, durations = index.times, index.durations

    def end(t: float, i: int) -> float | None:
        shown = t + min(durations[i], MAX_HOLD_SECONDS)
        return None if declared_duration is None else min(shown, declared_duration)

    plan = list(schedule(((t, i) for i, t in enumerate(times)), sampler, end))[:max_frames]
    done = 0
    while done < len(plan):
        batch: list[int] = []
        upto = done
        while upto < len(plan) and (plan[upto][1] in batch or len(batch) < _BATCH):
            batch += [] if plan[upto][1] in batch else [plan[upto][1]]
            upto += 1
        arrays = _decode(reader, batch, stats)
        for t, i, repeated in plan[done:upto]:
            data = arrays.get(i)
            if data is None:
                continue
            stats.last_pts_seconds = times[i]
            if not wait(t):
                return
            stats.frames_yielded += 1
            stats.frames_downscaled += int(downscaled)
            yield Frame(data.copy() if repeated else data, t, str(path))
        done = upto
    if times and (max_frames is None or stats.frames_yielded < max_frames):
        stats.last_pts_seconds = times[-1]  # read to the end


def _decode(reader: Any, indices: list[int], stats: SourceStats) -> dict[int, Any]:
    """Frames `indices` of `reader` as arrays; one that fails to decode is left out and counted as corrupt."""
    import decord

    try:
        arrays = dict(zip(indices, reader.get_batch(indices).asnumpy()))
    except decord.DECORDError:  # damaged data: decode one by one, skipping what fails
        arrays = {}
        for i in indices:
            try:
                arrays[i] = reader[i].asnumpy()
            except decord.DECORDError:
                stats.frames_corrupt += 1
    stats.frames_decoded += len(arrays)
    return arrays
