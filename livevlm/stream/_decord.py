"""The decord file backend: picks the sampled frames from the index, then decodes only those (random access).

Imported only when `FileSourceConfig.backend` selects decord, so decord stays an optional extra.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigError, NotAVideoError
from .base import SourceStats
from .frame import Frame
from .sampler import Sampler

_BATCH = 8  # frames decoded per decord call


def available() -> bool:
    """Whether decord can be imported."""
    return importlib.util.find_spec("decord") is not None


def open_reader(path: Path, size: tuple[int, int] | None = None) -> Any:
    """Open `path` with decord (frames scaled to `size` = (height, width) if given), mapping its failures."""
    try:
        import decord
    except ImportError as e:
        raise ConfigError("backend='decord' needs decord: pip install 'livevlm[decord]'") from e
    try:
        h, w = size if size is not None else (-1, -1)
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1, width=w, height=h)
    except (decord.DECORDError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NotAVideoError(f"not a video: decord cannot open {path} ({first})") from e


def decord_frames(
    reader: Any,
    path: Path,
    sampler: Sampler,
    stats: SourceStats,
    max_frames: int | None,
    wait: Callable[[float], bool],
    downscaled: bool = False,
) -> Iterator[Frame]:
    """Yield the sampled frames of `reader`; frames decord fails to decode are skipped and counted.

    `downscaled`: the reader was opened at a reduced size (each frame counts in `stats.frames_downscaled`).
    """
    import decord

    times = [float(t) for t in reader.get_frame_timestamp(range(len(reader)))[:, 0]]
    picked = [i for i, t in enumerate(times) if sampler.keep(t)]
    if max_frames is not None:
        picked = picked[:max_frames]
    for lo in range(0, len(picked), _BATCH):
        indices = picked[lo : lo + _BATCH]
        try:
            arrays = list(reader.get_batch(indices).asnumpy())
        except decord.DECORDError:  # damaged data: decode one by one, skipping what fails
            arrays = []
            for i in indices:
                try:
                    arrays.append(reader[i].asnumpy())
                except decord.DECORDError:
                    arrays.append(None)
                    stats.frames_corrupt += 1
        for i, data in zip(indices, arrays):
            if data is None:
                continue
            stats.frames_decoded += 1
            stats.last_pts_seconds = times[i]
            if not wait(times[i]):
                return
            stats.frames_yielded += 1
            stats.frames_downscaled += int(downscaled)
            yield Frame(data, times[i], str(path))
