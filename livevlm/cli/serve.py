"""`livevlm serve`: one model, many live streams, over HTTP/WebSocket with a web page (`livevlm.serve`).

Flags are checked (and a non-loopback host without a key refused) before the model loads; the socket is
bound before it loads too, so a port in use fails at once. uvicorn runs the app; SIGTERM / Ctrl-C shut it
down gracefully: every stream's session is closed and its spill files removed.
"""

from __future__ import annotations

import argparse
import logging
import re
import socket
import sys
from typing import Any

from .flags import add_session_args, session_config


def add_parser(sub: Any) -> None:
    """Register the `serve` subcommand on the CLI's subparsers."""
    from ..serve.config import DEFAULT_SCHEMES, ServeLimits

    d = ServeLimits()
    s = sub.add_parser("serve", help="serve live video Q&A over HTTP/WebSocket, with a web page at /")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (non-loopback needs --api-key)")
    s.add_argument("--port", type=int, default=8000, help="port (0: any free port; the URL is printed)")
    s.add_argument("--api-key", default=None,
                   help="bearer token every route requires (default: $LIVEVLM_API_KEY; none on loopback)")  # fmt: skip
    s.add_argument("--max-streams", type=int, default=d.max_streams, help="streams open at once")
    s.add_argument("--media-dir", default=None, help="directory local video files may be streamed from")
    s.add_argument("--allow-schemes", default=",".join(DEFAULT_SCHEMES),
                   help="comma-separated source URL schemes clients may open")  # fmt: skip
    s.add_argument("--idle-timeout", type=float, default=d.idle_timeout_s,
                   help="close a stream after this many seconds without frames or requests (0: never)")  # fmt: skip
    s.add_argument("--questions-per-minute", type=int, default=d.questions_per_minute,
                   help="questions per API key (or client address) per minute (0: no limit)")  # fmt: skip
    s.add_argument(
        "--max-frame-bytes", type=int, default=d.max_frame_bytes, help="largest pushed frame in bytes"
    )
    s.add_argument("--max-frame-pixels", type=int, default=d.max_frame_pixels,
                   help="largest pushed frame in pixels, width x height (default: 3840x2160)")  # fmt: skip
    s.add_argument("--max-body-bytes", default=str(d.max_body_bytes), metavar="BYTES",
                   help=f"largest JSON request body, e.g. 1M (default: {d.max_body_bytes >> 10}K; a chat request "
                        "carries its whole history)")  # fmt: skip
    s.add_argument("--max-tokens-limit", type=int, default=None, metavar="N",
                   help=f"most answer tokens a client may ask for (max_tokens); default: {d.max_new_tokens}, or "
                        "--max-new-tokens where that is more")  # fmt: skip
    s.add_argument("--max-question-chars", type=int, default=d.max_question_chars, help="longest question")
    s.add_argument("--buffer", type=int, default=d.buffer_frames,
                   help="frames a stream buffers before dropping the oldest")  # fmt: skip
    s.add_argument(
        "--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"]
    )
    r = s.add_argument_group("scale-out on Ray (the ray extra; livevlm.ray)")
    r.add_argument("--ray", action="store_true", help="hold the streams on Ray replica actors (same HTTP API)")
    r.add_argument("--ray-address", default=None, help="Ray cluster to join (default: start a local one)")
    r.add_argument("--replicas", type=int, default=2, help="replica actors, each with its own copy of the model")
    r.add_argument("--replica-gpus", type=float, default=0.0, help="GPUs per replica (1: one replica per GPU)")
    r.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs per replica")
    r.add_argument("--snapshot-dir", default=None,
                   help="where streams are snapshotted, shared by every replica (default: a temp dir)")  # fmt: skip
    r.add_argument("--snapshot-every", type=float, default=30.0,
                   help="seconds between snapshots of every stream (0: never; a dead replica's streams restart empty)")  # fmt: skip
    add_session_args(s)


def serve_config(args: argparse.Namespace) -> Any:
    """The `ServeConfig` the flags describe (refused here, before any model is loaded, if impossible)."""
    from ..cache import parse_bytes
    from ..serve import ServeConfig, ServeLimits

    tokens = max(ServeLimits.max_new_tokens, args.max_new_tokens)  # a client may ask for the default answer length
    limits = ServeLimits(
        max_streams=args.max_streams, max_frame_bytes=args.max_frame_bytes, max_question_chars=args.max_question_chars,
        max_frame_pixels=args.max_frame_pixels,
        max_body_bytes=parse_bytes(args.max_body_bytes),
        max_new_tokens=tokens if args.max_tokens_limit is None else args.max_tokens_limit,
        questions_per_minute=args.questions_per_minute, idle_timeout_s=args.idle_timeout, buffer_frames=args.buffer,
    )  # fmt: skip
    schemes = tuple(x.strip() for x in args.allow_schemes.split(",") if x.strip())
    return ServeConfig(session=session_config(args), host=args.host, port=args.port, api_key=args.api_key,
                       media_dir=args.media_dir, allowed_schemes=schemes, limits=limits)  # fmt: skip


def ray_manager(args: argparse.Namespace, config: Any) -> Any:
    """`--ray`: join (or start) a Ray cluster; the streams go to a `Router`'s replicas."""
    from ..errors import ConfigError

    try:
        import ray

        from ..ray import RayStreamManager, RouterConfig
    except ImportError:
        raise ConfigError("livevlm serve --ray needs the 'ray' extra: pip install 'livevlm[ray]'") from None
    ray.init(address=args.ray_address, include_dashboard=False)
    router = RouterConfig(model=config.session.model, session=config.session, replicas=args.replicas,
                          replica_cpus=args.replica_cpus, replica_gpus=args.replica_gpus,
                          snapshot_dir=args.snapshot_dir, snapshot_every_s=args.snapshot_every or None)  # fmt: skip
    return RayStreamManager(config, router)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); a port in use is a typed error, not a traceback."""
    from ..errors import ConfigError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


_KEY_IN_QUERY = re.compile(r"((?:^|[?&])key=)[^&\s]*")


def _redact_key(record: logging.LogRecord) -> bool:
    """An access-log line without the API key a page URL carries (`/?key=KEY` would print it at --log-level info)."""
    if isinstance(record.args, tuple):
        record.args = tuple(_KEY_IN_QUERY.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
    return True


def run(args: argparse.Namespace) -> int:
    """The `serve` command; returns the exit status."""
    import uvicorn

    from ..serve import build_app  # a missing 'serve' extra is a typed error here
    from ..serve.server import Server

    config = serve_config(args)
    sock = bind(config.host, config.port)
    try:
        app = build_app(config, manager=ray_manager(args, config) if args.ray else None)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        key_hint = "?key=YOUR_KEY" if config.api_key else ""
        print(f"livevlm serve: listening on http://{shown}:{port}/{key_hint} (API docs: /docs)", file=sys.stderr,
              flush=True)  # fmt: skip
        ws_max = max(16 * 1024 * 1024, 2 * config.limits.max_frame_bytes)
        # X-Forwarded-For from 127.0.0.1 (uvicorn trusts it by default) would let any local client pick the address
        # a keyless server rate-limits it as; a keyed server limits per key, and behind a proxy logs its clients
        server = Server(uvicorn.Config(app, log_level=args.log_level, ws_max_size=ws_max, lifespan="on",
                                       timeout_graceful_shutdown=5, proxy_headers=config.api_key is not None))  # fmt: skip
        logging.getLogger("uvicorn.access").addFilter(_redact_key)  # (after Config: it sets up uvicorn's logging)
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0
