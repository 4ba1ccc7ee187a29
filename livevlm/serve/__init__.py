"""`livevlm serve`: many live streams on one loaded model, over HTTP/WebSocket, with a web page.

    from livevlm.serve import ServeConfig, build_app
    app = build_app(ServeConfig())          # an ASGI app: run it with uvicorn

See `app.py` for the threading/async model, `scheduler.py` for how streams share the model, `sources.py` and
`security.py` for what a client may do.
"""

from typing import Any

from .config import ServeConfig, ServeLimits
from .scheduler import ModelScheduler, SchedulerStats

__all__ = ["ModelScheduler", "SchedulerStats", "ServeConfig", "ServeLimits", "build_app"]


def __getattr__(name: str) -> Any:
    """`build_app` imports FastAPI: only when asked for, so the rest of livevlm works without the extra."""
    if name == "build_app":
        from ..errors import ConfigError

        try:
            from .app import build_app
        except ImportError as e:
            raise ConfigError(
                f"livevlm serve needs the 'serve' extra ({e.name} is missing): pip install 'livevlm[serve]'"
            ) from None
        return build_app
    raise AttributeError(name)
