"""uvicorn's `Server`, closing every stream first when it shuts down.

SIGTERM / Ctrl-C ─► close every stream (an answer still decoding ends with its 410 `error` event, as a deleted
stream's does) ─► uvicorn's own shutdown: no new connections, open ones given `timeout_graceful_shutdown` to end
(they have), lifespan shutdown. Without the first step an answer longer than that timeout was cut mid-SSE, the
client saw a partial transfer and the log a CancelledError traceback.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import uvicorn

log = logging.getLogger("livevlm.serve")


class Server(uvicorn.Server):
    """A uvicorn server for `build_app`'s app that closes its streams before it waits for connections to end."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.manager = manager_of(config.app)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await asyncio.to_thread(self.manager.close_streams)  # answers end with their 410 event
        except Exception:  # shutting down goes on; the lifespan closes what is left
            log.exception("closing the streams at shutdown failed")
        await super().shutdown(sockets)


def manager_of(app: Any) -> Any:
    """The `StreamManager` of an app `build_app` made (under its middleware)."""
    while app is not None:
        state = getattr(app, "state", None)
        if state is not None and hasattr(state, "manager"):
            return state.manager
        app = getattr(app, "app", None)
    raise TypeError("not an app built by livevlm.serve.build_app")
