"""`livevlm serve`: many live streams on one loaded model, over HTTP/WebSocket, with a web page.

    from livevlm.serve import ServeConfig, build_app
    app = build_app(ServeConfig())          # an ASGI app: run it with uvicorn

See `app.py` for the threading/async model, `scheduler.py` for how streams share the model, `sources.py` and
`security.py` for what a client may do.
"""

from .app import build_app
from .config import ServeConfig, ServeLimits
from .scheduler import ModelScheduler, SchedulerStats

__all__ = ["ModelScheduler", "SchedulerStats", "ServeConfig", "ServeLimits", "build_app"]
