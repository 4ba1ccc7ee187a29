"""A blocking FFmpeg open that Ctrl-C can cut short: run in a worker thread while the main thread waits.

FFmpeg's connect and header reads block inside C until `open_timeout`; Python only sees a Ctrl-C when they
return, so `livevlm watch rtsp://silent-camera` took the whole timeout to stop. The main thread's wait is
interruptible; a connection abandoned that way is closed by the worker when FFmpeg gives it up.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def open_interruptibly(open_fn: Callable[[], T], close: Callable[[T], Any]) -> T:
    """`open_fn()`, waited for so that a signal (KeyboardInterrupt) in the main thread ends the wait at once;
    its result, if it comes after the wait was given up, is passed to `close`. Off the main thread: called
    directly (only the main thread receives signals)."""
    if threading.current_thread() is not threading.main_thread():
        return open_fn()
    box: dict[str, Any] = {}
    lock = threading.Lock()
    done = threading.Event()

    def work() -> None:
        try:
            value = open_fn()
        except BaseException as e:  # noqa: BLE001 -- handed to the waiting thread, raised there
            box["error"] = e
        else:
            with lock:
                abandoned = box.get("abandoned", False)
                box["value"] = value
            if abandoned:
                close(value)
        finally:
            done.set()

    worker = threading.Thread(target=work, name="livevlm-open", daemon=True)
    worker.start()
    try:
        while not done.wait(0.05):
            pass
    except BaseException:
        with lock:
            box["abandoned"] = True
            value = box.pop("value", None)
        if value is not None:  # opened just as the wait was cut short
            close(value)
        raise
    if "error" in box:
        error = box.pop("error")
        raise error
    return box["value"]
