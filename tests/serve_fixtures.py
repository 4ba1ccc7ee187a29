"""A real uvicorn server on 127.0.0.1 (random port) running `livevlm.serve.build_app`, for the serve tests.

`start_server(config)` binds port 0, runs uvicorn on a thread and returns a `RunningServer` with its URL;
`stop()` shuts it down the way SIGTERM does (lifespan shutdown: every stream closed).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn

from livevlm.cli.serve import bind
from livevlm.serve import ServeConfig, build_app


@dataclass
class RunningServer:
    url: str
    app: Any
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def manager(self) -> Any:
        return self.app.app.app.state.manager  # AuthMiddleware -> BodyLimitMiddleware -> FastAPI

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive(), "the server did not shut down"


def start_server(config: ServeConfig, adapter: Any = None, manager: Any = None) -> RunningServer:
    """Start the app on a free loopback port (streams held by `manager` if given); returns once it accepts
    connections."""
    sock = bind("127.0.0.1", 0)
    app = build_app(config, adapter, manager)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", ws_max_size=32 * 1024 * 1024))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    port = sock.getsockname()[1]
    return RunningServer(f"http://127.0.0.1:{port}", app, server, thread)
