"""Screenshot the `livevlm serve` page with headless Chromium's fake camera playing the bundled sample clip.

    python tools/screenshot_page.py [--out docs/serve-page.png] [--question "What colour is the circle?"]

Runs `livevlm serve` (bundled model) on 127.0.0.1 at a free port, opens the page in Debian's Chromium
(`/usr/bin/chromium`, driven by Playwright; no browser download), clicks "Use my camera", asks a question
once a few frames are processed and saves a PNG of the page. The helpers here (a y4m writer, the Chromium
flags, page waits) are shared with `tests/test_serve_page.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
# No GPU, no sandbox (root in CI), no calls home: this machine's closed network refuses them by the dozen.
CHROMIUM_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def write_y4m(
    src: str | Path,
    dst: str | Path,
    *,
    size: tuple[int, int] | None = None,
    seconds: float | None = None,
    fps: int | None = None,
) -> Path:
    """Re-encode the video `src` as raw YUV 4:2:0 `dst` (y4m: what Chromium's fake camera plays, in a loop).

    `size` (w, h) rescales, `seconds` cuts, `fps` re-times frame by frame (default: the source's rate)."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w", format="yuv4mpegpipe") as out:
        vin = inp.streams.video[0]
        rate = Fraction(fps) if fps else Fraction(vin.average_rate or 10)
        w, h = size or (vin.codec_context.width, vin.codec_context.height)
        stream = out.add_stream("rawvideo", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        n_max = None if seconds is None else max(1, round(seconds * rate))
        for i, frame in enumerate(inp.decode(vin)):
            if n_max is not None and i >= n_max:
                break
            frame = frame.reformat(width=w, height=h, format="yuv420p")
            frame.pts, frame.time_base = i, 1 / rate
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return Path(dst)


def chromium_args(y4m: str | Path) -> list[str]:
    """Flags for headless Chromium whose camera (allowed without a prompt) plays `y4m` in a loop."""
    return [
        *CHROMIUM_FLAGS,
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={y4m}",
    ]


@contextlib.contextmanager
def livevlm_serve(*flags: str, startup_timeout: float = 300.0) -> Iterator[str]:
    """Run `livevlm serve --port 0 FLAGS...` (the user's command) on 127.0.0.1; yield its base URL."""
    cmd = [sys.executable, "-m", "livevlm.cli", "serve", "--host", "127.0.0.1", "--port", "0", *flags]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        lines: queue.Queue[str] = queue.Queue()

        def relay() -> None:  # keep the pipe drained; show the server's log; hand lines to the waiter
            for line in proc.stderr:
                sys.stderr.write(line)
                lines.put(line)
            lines.put("")

        threading.Thread(target=relay, name="serve-stderr", daemon=True).start()
        deadline = time.monotonic() + startup_timeout
        while (
            line := lines.get(timeout=max(0.1, deadline - time.monotonic()))
        ) and "listening on" not in line:
            pass
        found = re.search(r"http://[^/\s]+", line)
        if found is None:
            raise RuntimeError(f"`{' '.join(cmd)}` exited ({proc.wait()}) before it listened")
        url = found[0]
        with urllib.request.urlopen(url + "/v1/health", timeout=startup_timeout):  # waits for the model load
            pass
        yield url
    finally:
        proc.terminate()  # SIGTERM: streams closed, then exit
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ask_in_page(page, question: str, timeout_ms: float = 180_000) -> str:
    """Type `question` into the page, press Ask, wait until its answer is in the history; return the answer."""
    before = page.locator("#history li").count()
    page.fill("#question", question)
    page.click("#ask")
    page.wait_for_function(
        "n => document.querySelectorAll('#history li').length > n", arg=before, timeout=timeout_ms
    )
    return page.text_content("#answer") or ""


def wait_frames(page, at_least: int, timeout_ms: float = 180_000) -> int:
    """Wait until the page's frames-processed counter reaches `at_least`; return its value.

    Raises AssertionError at once if the page shows an error instead."""
    page.wait_for_function(
        """n => !document.querySelector('#error').hidden
               || Number(document.querySelector('#frames-processed')?.textContent) >= n""",
        arg=at_least,
        timeout=timeout_ms,
    )
    assert page.is_hidden("#error"), f"the page shows an error: {page.text_content('#error')}"
    return int(page.text_content("#frames-processed") or 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/serve-page.png")
    parser.add_argument("--question", default="What colour is the circle?")
    parser.add_argument("--frames", type=int, default=8, help="frames processed before asking")
    args = parser.parse_args(argv)

    import tempfile

    from playwright.sync_api import sync_playwright

    from livevlm.assets import sample_video_path

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, livevlm_serve() as url, sync_playwright() as p:
        y4m = write_y4m(sample_video_path(), Path(tmp) / "sample.y4m")
        browser = p.chromium.launch(executable_path=CHROMIUM, args=chromium_args(y4m))
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        page.goto(url + "/")
        page.click("#use-camera")
        wait_frames(page, args.frames)
        answer = ask_in_page(page, args.question)
        page.screenshot(path=str(out))
        print(f"{args.question} -> {answer!r}; screenshot: {out}")
        page.goto("about:blank")  # pagehide: the page deletes its stream
        browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
