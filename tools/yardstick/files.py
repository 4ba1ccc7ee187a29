"""Atomic .npz files a yardstick training run writes and reads back (resume checkpoints, background banks): never
half-written, never unpickled, and a damaged or foreign file is a typed error."""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from livevlm.errors import LivevlmError


class TrainFileError(LivevlmError):
    """A file a training run reads back (resume checkpoint, background bank) is missing, truncated or of another kind."""


def write_npz(path: str | Path, arrays: Mapping[str, np.ndarray]) -> int:
    """Write `arrays` as a deflated .npz at `path` atomically (temp file beside it, fsynced, renamed); returns bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.stat().st_size


def read_npz(path: str | Path, kind: str) -> dict[str, np.ndarray]:
    """Every array of the .npz at `path` (no pickles); a missing, truncated or foreign file raises `TrainFileError`."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise TrainFileError(f"{kind} not found: {path}") from None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise TrainFileError(f"{kind} {path} is truncated or not an .npz ({type(e).__name__}: {e})") from e


def read_meta(arrays: Mapping[str, np.ndarray], path: str | Path, kind: str, fmt: str) -> dict[str, Any]:
    """The JSON `meta` member of a file read by `read_npz`, checked to be of format `fmt`."""
    try:
        meta = json.loads(arrays["meta"].tobytes())
    except (KeyError, ValueError) as e:
        raise TrainFileError(f"{kind} {path} has no readable meta ({type(e).__name__})") from e
    if meta.get("format") != fmt:
        raise TrainFileError(f"{kind} {path} is of format {meta.get('format')!r}, expected {fmt!r}")
    return meta


def meta_array(meta: Mapping[str, Any]) -> np.ndarray:
    return np.frombuffer(json.dumps(meta).encode(), np.uint8)
