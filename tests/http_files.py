"""A real HTTP server on 127.0.0.1 (a free port) for tests: a folder's files, or any request handler.

Files go whole with a Content-Length; a Range header is ignored (200, never 206), as Python's http.server does.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HANG_GUARD = 60.0  # seconds; only there to turn a hang into a failure


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    """A folder's files, without a log line per request."""

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serving(handler: Any) -> Iterator[str]:
    """Serve with `handler` (a request handler class or factory) until the block ends; yields the base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(HANG_GUARD)


def serving_files(root: str | Path) -> contextlib.AbstractContextManager[str]:
    """Serve the files under `root`; yields the base URL (`/name` appended names a file)."""
    return serving(functools.partial(QuietFiles, directory=str(root)))
