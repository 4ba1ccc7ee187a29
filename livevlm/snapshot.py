"""The snapshot format: a tree of tensors, disk blobs and JSON values in one directory, written atomically.

    write_snapshot(dir, meta, tree)
        tree ─► split: tensors ─► tensors.safetensors   disk `Blob`s ─► blobs.bin (one at a time)
                       the rest, with {"$tensor": key} / {"$blob": [offset, nbytes]} leaves ─► manifest.json
        ─► every file written into a temp dir beside `dir` and fsynced, then swapped in by one rename
           (Linux: renameat2 RENAME_EXCHANGE); the old snapshot is removed only once the new one is in place
    read_snapshot(dir) ─► manifest (format, version) ─► each file's size and sha256 ─► the tree back
        (tensors on the CPU; blobs read from blobs.bin on demand, one at a time)

A failure at any step raises `SnapshotError` and leaves an existing snapshot at `dir` as it was and no temp
dir behind. A killed writer (`kill -9`, a power cut) does leave its temp dir: its name carries the writer's pid,
start time and pid space, and the next `write_snapshot` into the same folder removes those of writers that
are gone. What the tree means is the caller's business (`Session.save` / `Session.load`).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from .cache.disk import owner_gone, owner_tag
from .errors import SnapshotError
from .records import Blob

FORMAT = "livevlm-session"
VERSION = 3
"""Bumped on any change a reader of the previous version would misread; readers refuse versions not in `READS`.
3: a KV index's open block holds only its used rows, and its block size is saved (2 misread both)."""
READS = (2, 3)
"""Versions this livevlm reads (2: the KV index's block size is 64 and its open block whole)."""
MANIFEST, TENSORS, BLOBS = "manifest.json", "tensors.safetensors", "blobs.bin"
_HASH_BLOCK = 8 << 20


@dataclass(frozen=True)
class SnapshotInfo:
    """What `write_snapshot` wrote."""

    path: Path
    bytes: int
    """Size of the snapshot's files together."""
    seconds: float
    frames_seen: int | None = None
    """A session's snapshot: frames the stream had seen (pending ones included)."""
    last_pts_seconds: float | None = None
    """A session's snapshot: stream time of the last frame in it."""


def write_snapshot(path: str | Path, meta: dict[str, Any], tree: Any) -> SnapshotInfo:
    """Write `tree` (dicts, lists, tensors, `Blob`s, JSON values) with `meta` as the snapshot at `path`."""
    start = time.perf_counter()
    target = snapshot_path(path).absolute()
    _check_replaceable(target)
    remove_stale_temp_dirs(target.parent)
    tmp = target.parent / f".{target.name}.tmp-{secrets.token_hex(4)}-{owner_tag()}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)  # (a file in the way: SnapshotError below)
        tmp.mkdir()
        with open(tmp / BLOBS, "wb") as out:
            blobs = _BlobWriter(out)
            tensors = _Tensors()
            body = _split(tree, "", tensors, blobs)
            _sync(out)
        data = save_tensors(tensors.by_key)
        with open(tmp / TENSORS, "wb") as out:
            out.write(data)
            _sync(out)
        files = {TENSORS: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
                 BLOBS: {"bytes": blobs.offset, "sha256": blobs.hash.hexdigest()}}  # fmt: skip
        manifest = {"format": FORMAT, "version": VERSION, **meta, "state": body, "files": files}
        with open(tmp / MANIFEST, "w") as out:
            json.dump(manifest, out)
            _sync(out)
        _fsync_dir(tmp)
        _swap_in(tmp, target)
    except OSError as e:
        raise SnapshotError(f"could not write the snapshot at {target}: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # after a swap: the old snapshot; after a failure: the partial one
    size = sum(f["bytes"] for f in files.values()) + (target / MANIFEST).stat().st_size
    return SnapshotInfo(target, size, time.perf_counter() - start)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of the snapshot at `path`, its format and version checked (the files are not read)."""
    target = snapshot_path(path)
    try:
        with open(target / MANIFEST) as f:
            manifest = json.load(f)
    except FileNotFoundError as e:
        raise SnapshotError(f"no snapshot at {target} (no {MANIFEST})") from e
    except (OSError, ValueError) as e:
        raise SnapshotError(f"the snapshot manifest {target / MANIFEST} is unreadable or corrupt: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SnapshotError(f"{target} is not a livevlm session snapshot")
    if manifest.get("version") not in READS:
        raise SnapshotError(
            f"the snapshot at {target} has format version {manifest.get('version')!r}; this livevlm reads "
            f"versions {', '.join(map(str, READS))} (save it again with the livevlm that reads it, or use the one "
            "that wrote it)"
        )
    return manifest


def read_snapshot(path: str | Path, manifest: dict[str, Any] | None = None) -> Any:
    """The tree written at `path` (tensors on the CPU, `Blob`s reading blobs.bin), every file verified first."""
    target = snapshot_path(path)
    manifest = manifest if manifest is not None else read_manifest(target)
    try:
        files = manifest["files"]
        for name in (TENSORS, BLOBS):
            _verify(target / name, int(files[name]["bytes"]), files[name]["sha256"])
        tensors = load_tensors((target / TENSORS).read_bytes())
        blobs = np.memmap(target / BLOBS, dtype=np.uint8, mode="r") if files[BLOBS]["bytes"] else None
        return _join(manifest["state"], tensors, blobs)
    except (KeyError, TypeError, ValueError, SafetensorError) as e:
        raise SnapshotError(f"the snapshot at {target} is corrupt: {type(e).__name__}: {e}") from e
    except OSError as e:
        raise SnapshotError(f"could not read the snapshot at {target}: {e}") from e


class _BlobWriter:
    def __init__(self, out: BinaryIO) -> None:
        self.out, self.offset, self.hash = out, 0, hashlib.sha256()

    def add(self, blob: Blob) -> int:
        data = blob.read()
        if data.numel() != blob.nbytes:
            raise SnapshotError(f"a disk blob read {data.numel()} bytes, expected {blob.nbytes}")
        view = memoryview(data.numpy())
        self.out.write(view)
        self.hash.update(view)
        self.offset += blob.nbytes
        return self.offset - blob.nbytes


class _Tensors:
    """Tensors by key, each on the CPU, contiguous and owning its storage alone (safetensors refuses shared or
    partial storage: views and tensors seen twice are copied)."""

    def __init__(self) -> None:
        self.by_key: dict[str, torch.Tensor] = {}
        self._storages: set[int] = set()

    def add(self, key: str, t: torch.Tensor) -> None:
        t = t.detach().to("cpu").contiguous()
        storage = t.untyped_storage()
        if t.numel() and (storage.data_ptr() in self._storages or storage.nbytes() != t.nbytes):
            t = t.clone()
        self._storages.add(t.untyped_storage().data_ptr())
        self.by_key[key] = t


def _split(node: Any, key: str, tensors: _Tensors, blobs: _BlobWriter) -> Any:
    if isinstance(node, torch.Tensor):
        tensors.add(key, node)
        return {"$tensor": key}
    if isinstance(node, Blob):
        return {"$blob": [blobs.add(node), node.nbytes]}
    if isinstance(node, dict):
        return {str(k): _split(v, f"{key}/{k}", tensors, blobs) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_split(v, f"{key}/{i}", tensors, blobs) for i, v in enumerate(node)]
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    raise SnapshotError(f"cannot snapshot a {type(node).__name__} (at {key or '/'})")


def _join(node: Any, tensors: dict[str, torch.Tensor], blobs: np.memmap | None) -> Any:
    if isinstance(node, dict):
        if set(node) == {"$tensor"}:
            return tensors[node["$tensor"]]
        if set(node) == {"$blob"}:
            offset, n = (int(v) for v in node["$blob"])
            if blobs is None or offset + n > blobs.shape[0]:
                raise ValueError(f"blob [{offset}, {offset + n}) lies outside {BLOBS}")
            return Blob(n, lambda: torch.from_numpy(np.array(blobs[offset : offset + n])))
        return {k: _join(v, tensors, blobs) for k, v in node.items()}
    if isinstance(node, list):
        return [_join(v, tensors, blobs) for v in node]
    return node


def _verify(path: Path, size: int, digest: str) -> None:
    actual = path.stat().st_size
    if actual != size:
        raise SnapshotError(f"{path} is {actual} bytes, its manifest says {size}: the snapshot is truncated or corrupt")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    if h.hexdigest() != digest:
        raise SnapshotError(f"{path} does not match its checksum: the snapshot is corrupt")


_TEMP_NAME = re.compile(r"^\..+\.tmp-[0-9a-f]{8}-(\d+-\d*-[0-9a-f]{8})$")


def remove_stale_temp_dirs(folder: str | Path) -> list[Path]:
    """Remove the temp dirs that writers killed mid-write left in `folder`; their paths. Only dirs named as
    `write_snapshot` names them, whose writer is gone (this pid space) and that hold nothing but snapshot files."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        try:
            if not match or not entry.is_dir(follow_symlinks=False) or entry.stat().st_uid != os.getuid():
                continue
            if not set(os.listdir(entry.path)) <= {MANIFEST, TENSORS, BLOBS} or not owner_gone(match.group(1)):
                continue
        except OSError:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        if not os.path.lexists(entry.path):
            removed.append(Path(entry.path))
    return removed


def snapshot_path(path: Any) -> Path:
    """`path` as a Path: a non-empty str or os.PathLike, else `SnapshotError` (Path("") is the current directory)."""
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise SnapshotError(f"a snapshot path must be a str or os.PathLike, not {type(path).__name__}")
    if not os.fspath(path).strip():
        raise SnapshotError("a snapshot path must not be empty (give the directory to write, e.g. 'run.snapshot')")
    return Path(path)


def _check_replaceable(target: Path) -> None:
    """Refuse to replace something at `target` that is not a snapshot (an unrelated directory, a file), or the
    current directory or one above it (swapping it out would leave the process in a deleted directory)."""
    try:
        here, real = Path.cwd(), target.resolve()
    except OSError:  # the current directory is gone: nothing to protect
        here = real = None
    if here is not None and (real == here or real in here.parents):
        raise SnapshotError(f"{target} is the current directory or holds it: give a snapshot directory inside it")
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise SnapshotError(f"{target} exists and is not a snapshot directory: refusing to replace it")
    if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST).exists():
        raise SnapshotError(f"{target} is a non-empty directory that holds no snapshot: refusing to replace it")


def _swap_in(tmp: Path, target: Path) -> None:
    """Put `tmp` at `target` atomically; an old `target` ends up at `tmp` (removed by the caller)."""
    if not target.exists():
        os.rename(tmp, target)
    elif not _exchange(tmp, target):  # no atomic exchange here: move the old one aside first
        aside = target.parent / f".{target.name}.old-{secrets.token_hex(4)}"
        os.rename(target, aside)
        os.rename(tmp, target)
        os.rename(aside, tmp)
    _fsync_dir(target.parent)


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths with renameat2(RENAME_EXCHANGE); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    ok = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0
    if not ok and ctypes.get_errno() not in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: fall back
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(b))
    return ok


def _sync(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
