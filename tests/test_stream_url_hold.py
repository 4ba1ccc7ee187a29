"""A video file read by URL is sampled as the same file read by path: an instant no frame reaches (a 1 fps clip
read at 2 fps) gets the frame on screen again. A live stream (RTSP) or a lavfi graph yields only what arrived."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from http_files import serving_files
from media import encode_lavfi, make_stream_clip
from rtsp_server import RtspServer, require_rtsp

from livevlm import Session, SessionConfig, load_model
from livevlm.stream import Frame, open_source

HANG_GUARD = 60.0  # seconds; only there to turn a hang into a failure


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A 6 s clip at 1 fps, as a local path and as its URL on a real HTTP server on 127.0.0.1."""
    root = tmp_path_factory.mktemp("served")
    clip = encode_lavfi(root / "slow.mp4", seconds=6, fps=1, size=(64, 48), source="testsrc2")
    with serving_files(root) as url:
        yield clip, f"{url}/{clip.name}"


def _read(source: str, **kw: object) -> list[Frame]:
    with open_source(source, fps=2.0, realtime=False, **kw) as src:
        return list(src)


@pytest.mark.parametrize("how", ["http", "file_url"])
def test_a_url_to_a_file_holds_frames_like_its_path(served: tuple[Path, str], how: str) -> None:
    path, url = served
    local = _read(str(path))
    remote = _read(url if how == "http" else path.as_uri())
    assert [f.pts_seconds for f in local] == pytest.approx([k / 2 for k in range(12)])  # held up to 6 s
    assert [f.pts_seconds for f in remote] == [f.pts_seconds for f in local]
    for a, b in zip(local, remote, strict=True):
        np.testing.assert_array_equal(a.data, b.data)
    assert not any(np.shares_memory(f.data, g.data) for f, g in pairwise(remote))  # a held frame: a copy


def test_a_session_watching_or_ingesting_the_url_sees_what_ingesting_the_path_sees(served: tuple[Path, str]) -> None:
    path, url = served
    model = load_model(None, dtype="float32")
    seen = []
    for how in ("path", "watch", "ingest http", "ingest file"):
        with Session(model, SessionConfig(fps=2.0)) as session:
            if how == "watch":
                assert session.watch(url).wait(HANG_GUARD)
            elif how == "path":
                assert session.ingest(path) == 12
            else:  # a URL string was taken for a local path ("video file not found: http:/127...")
                assert session.ingest(url if how == "ingest http" else path.as_uri()) == 12
            s = session.stats
            probabilities = session.choose("What colour is the circle?", ["red", "green", "blue"]).probabilities
            seen.append((s.frames_seen, s.first_pts_seconds, s.last_pts_seconds, probabilities))
    assert seen[0][:3] == (12, 0.0, 5.5)
    assert seen[1:] == [seen[0]] * 3


def test_a_lavfi_graph_slower_than_fps_is_not_held() -> None:
    frames = _read("lavfi:testsrc2=size=64x48:rate=1", max_frames=4)
    assert [f.pts_seconds for f in frames] == pytest.approx([0.0, 1.0, 2.0, 3.0])


def test_a_live_rtsp_stream_slower_than_fps_is_not_held(tmp_path: Path) -> None:
    require_rtsp()
    clip = make_stream_clip(tmp_path / "slow.mp4", seconds=6, fps=1, size=(64, 48))
    with RtspServer(clip) as server, open_source(server.url, fps=2.0, max_frames=4) as src:
        assert src.live
        frames = [next(src) for _ in range(4)]
    assert np.diff([f.pts_seconds for f in frames]) == pytest.approx([1.0] * 3, abs=0.1)  # as it came
    assert len({f.data.tobytes() for f in frames}) == 4  # no frame invented
