"""Hub ids on a machine without network: the cached snapshot folder, found once, instead of a retry round per file.

Offline, huggingface_hub retries each file lookup five times with back-off (~23 s) before it falls back to the
cache, and a checkpoint is a dozen lookups (config, tokenizer files, processor configs, weights): minutes of
"Retrying in 8s" before a cached model loads, ~50 s before an uncached one is refused. One short probe of the
hub endpoint decides instead: reachable, the name goes to transformers unchanged (its usual update check);
unreachable, the name becomes its cached snapshot folder (every later lookup a local read) or a clear error.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import ModelLoadError

PROBE_TIMEOUT_S = 10.0
"""Seconds the reachability probe waits (huggingface_hub's own per-request metadata timeout)."""


def looks_like_path(name: str) -> bool:
    """True for a name that can only be a local path (a hub id is `name` or `org/name`)."""
    return Path(name).exists() or name.startswith(("/", ".", "~")) or name.count("/") > 1


def typo_or_hub_hint(name: str, failure: str) -> str:
    """What to say when `name` is neither a local folder nor a loadable hub id: a typo'd folder and a hub id
    look alike, so say both."""
    return f"no folder {name!r} in {Path.cwd()}, and as a hub id it failed: {failure}"


def hub_reachable(timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub endpoint (HF_ENDPOINT) opens: one attempt, no retries. Behind a
    proxy (HTTPS_PROXY, ALL_PROXY) the direct route says nothing, so the hub is taken as reachable."""
    from huggingface_hub import constants

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlsplit(constants.ENDPOINT)
    try:
        port = url.port or (80 if url.scheme == "http" else 443)
        with socket.create_connection((url.hostname or "", port), timeout=timeout_s):
            return True
    except (OSError, ValueError):  # no DNS, refused, unroutable, timed out; a malformed endpoint
        return False


def resolve_offline(name: str) -> str:
    """`name` as `load_model` should read it: unchanged for a local path, in offline mode (HF_HUB_OFFLINE:
    transformers reads the cache without asking) or when the hub answers; else the hub id's cached snapshot
    folder, and a `ModelLoadError` when it is not cached."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError

    if looks_like_path(name) or constants.is_offline_mode() or hub_reachable():
        return name
    try:
        return snapshot_download(name, local_files_only=True)
    except (OSError, HFValidationError):
        failure = (
            f"it is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and {constants.ENDPOINT} "
            "cannot be reached; download it where there is network (`hf download NAME`) or pass a local folder"
        )
        raise ModelLoadError(f"cannot load model config from {name!r}: {typo_or_hub_hint(name, failure)}") from None
