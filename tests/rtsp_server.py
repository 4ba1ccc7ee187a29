"""A real RTSP server for tests: GStreamer's gst-rtsp-server serving an mp4's H.264 over UDP and TCP.

As a script, run by the *system* python (python3-gi lives there, not in the venv):
    /usr/bin/python3 tests/rtsp_server.py PORT CLIP.mp4      (prints "ready" once it listens)
    /usr/bin/python3 tests/rtsp_server.py --check            (exit 0 when everything it needs is installed)
Tests use `RtspServer(clip)`: `start()` on a free 127.0.0.1 port, `stop()` kills it mid-stream, `start()`
again brings it back on the same port. Every client gets its own pipeline: the clip plays from its start.
Install the system packages with `.ci/system-deps.sh`.
"""

from __future__ import annotations

import functools
import os
import select
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self

SYSTEM_PYTHON = "/usr/bin/python3"
MOUNT = "/clip"
ELEMENTS = ("qtdemux", "rtph264pay")


def _gst():  # imported here: the venv that runs the tests has no gi
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    missing = [e for e in ELEMENTS if Gst.ElementFactory.find(e) is None]
    if missing:
        raise SystemExit(f"GStreamer elements missing: {missing} (install gstreamer1.0-plugins-good)")
    return GLib, GstRtspServer


def serve(port: int, clip: str) -> None:
    """Serve `clip`'s H.264 track at rtsp://127.0.0.1:PORT/clip until killed."""
    glib, rtsp = _gst()
    server = rtsp.RTSPServer.new()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = rtsp.RTSPMediaFactory.new()
    factory.set_launch(
        f'( filesrc location="{clip}" ! qtdemux ! rtph264pay name=pay0 pt=96 config-interval=1 )'
    )
    server.get_mount_points().add_factory(MOUNT, factory)
    if server.attach(None) == 0:
        raise SystemExit(f"cannot listen on 127.0.0.1:{port}")
    print("ready", flush=True)
    glib.MainLoop().run()


@functools.lru_cache(maxsize=1)
def unavailable_reason() -> str | None:
    """None when the system python can run this server, else why it cannot."""
    if not os.path.exists(SYSTEM_PYTHON):
        return f"{SYSTEM_PYTHON} not found"
    try:
        res = subprocess.run(
            [SYSTEM_PYTHON, __file__, "--check"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot run {SYSTEM_PYTHON}: {e}"
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        return f"gst-rtsp-server is not usable from {SYSTEM_PYTHON} ({last}); run .ci/system-deps.sh"
    return None


def require_rtsp() -> None:
    """Skip the calling test when the server cannot run here; fail instead when LIVEVLM_REQUIRE_RTSP=1 (CI)."""
    import pytest

    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("LIVEVLM_REQUIRE_RTSP") == "1":
        pytest.fail(f"LIVEVLM_REQUIRE_RTSP=1 but the RTSP test server cannot run: {reason}")
    pytest.skip(f"RTSP test server unavailable: {reason}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RtspServer:
    """The server as a subprocess of the test: start, stop (a crash, mid-stream) and start again."""

    def __init__(self, clip: str | os.PathLike[str], port: int | None = None) -> None:
        self.clip = str(clip)
        self.port = port or free_port()
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{MOUNT}"

    def start(self, timeout: float = 60.0) -> Self:
        """Launch the server and wait (at most `timeout` s) until it listens."""
        deadline = time.monotonic() + timeout
        while True:
            self.proc = subprocess.Popen(
                [SYSTEM_PYTHON, __file__, str(self.port), self.clip],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if ready and self.proc.stdout.readline().strip() == "ready":
                return self
            self.stop()
            if time.monotonic() >= deadline:  # e.g. the port is still held by the killed server
                raise RuntimeError(f"RTSP server did not start on port {self.port} within {timeout}s")
            time.sleep(0.2)

    def stop(self) -> None:
        """Kill the server at once, as a crash or a pulled cable would."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.communicate(timeout=30)
            self.proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        _gst()
    else:
        serve(int(sys.argv[1]), sys.argv[2])
