"""The resume state beside `--out`: `OUT.partial/` holds `state.json` and one session snapshot.

    state.json   {format, version, video: identity, settings, first_pts, frames, ended, snapshot,
                  segments: [finished SegmentResult, ...]}   written whole to a temp file, then renamed
    snapshot-K/  `Session.save` after the K-th finished segment: the KV window, the pending odd frame, the
                 pruner and ViT cache state, positions and counters: the whole stream state at that boundary

After each segment: its snapshot is written (atomically), then state.json naming it, then the previous
snapshot is removed; an interruption at any point leaves a state.json whose snapshot is complete (a newer
orphan snapshot is removed on resume). Nothing is rebuilt by re-ingesting: the session comes back from the
snapshot exactly, so a resumed run's descriptions equal an uninterrupted run's. A finished run removes it all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import OutputError, ResumeError, SnapshotError

FORMAT, VERSION = "livevlm-summarize-state", 1
_HASHED = 1 << 20  # bytes of the video hashed to recognise it (with its size)


def is_device(path: Path) -> bool:
    """Whether `path` is a device or pipe (/dev/stdout, /dev/null): written to directly, with no resume state.
    Asked of the path as given: /dev/stdout on a pipe resolves to '/proc/PID/fd/pipe:[N]', which is no path."""
    return path.exists() and not path.is_file() and not path.is_dir()


def check_out(out: str | Path, video: Path | None = None) -> Path:
    """`out` as a path a file can be written to (its folder exists and takes files; a symlink resolved to its
    target; not the `video` being summarized), else `OutputError`."""
    if is_device(Path(out)):
        return Path(out)
    path = Path(os.path.realpath(out))
    if video is not None and path.exists() and os.path.samefile(path, video):
        raise OutputError(f"--out {out} is the video being summarized: writing there would replace it; give "
                          f"another file (e.g. {path.with_suffix('.md').name})")  # fmt: skip
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError(f"--out {path} is a folder: give a file name (e.g. {path / 'summary.md'})")
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise OutputError(f"cannot write {path}: its folder {parent} {what}")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {path}: no permission to write in {parent}")
    return path


def video_identity(path: Path) -> dict[str, Any]:
    """What recognises a video again: its size and the sha256 of its first MiB (the path is informational)."""
    with open(path, "rb") as f:
        head = hashlib.sha256(f.read(_HASHED)).hexdigest()
    return {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256_first_mib": head}


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (a temp file beside it, fsynced, renamed over it). A symlink is written
    through (its target replaced, the link kept); a device or pipe (/dev/stdout) is written to directly."""
    path = path if is_device(path) else Path(os.path.realpath(path))
    if is_device(path):
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            return
        except OSError as e:
            raise OutputError(f"cannot write {path}: {e}") from e
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {e}") from e


class ResumeState:
    """The `OUT.partial/` folder of one summarize run: created at the start, updated per segment, removed at
    the end of a finished run."""

    def __init__(self, out: Path) -> None:
        self.dir = out.with_name(out.name + ".partial")
        self.file = self.dir / "state.json"
        self._lock: int | None = None  # an fd of `dir` this run holds an exclusive flock on

    def exists(self) -> bool:
        return self.file.is_file()

    def refuse_overwrite(self) -> None:
        """A new run (no --resume) would throw away an interrupted run's finished segments: refuse (and say
        so when that run is not interrupted but still going)."""
        self.refuse_busy()
        if self.exists():
            raise ResumeError(
                f"{self.dir} holds an interrupted summarize run: pass --resume (resume=True) to continue it, "
                f"or delete that folder to start over"
            )

    def refuse_busy(self) -> None:
        """`ResumeError` when another process runs summarize into the same state now (it holds the lock)."""
        if self._lock is None and self.dir.is_dir():
            fd = self._try_lock()
            if fd is not None:
                os.close(fd)

    def _try_lock(self) -> int | None:
        """An fd of `dir` with an exclusive lock on it; `ResumeError` when another process holds it; None when
        the folder is gone."""
        import fcntl

        try:
            fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ResumeError(
                f"another summarize run is writing {self.dir} now (the same --out): wait for it to finish, or "
                "stop it and run again with --resume"
            ) from None
        return fd

    def begin(self, header: dict[str, Any], resume: bool) -> dict[str, Any] | None:
        """The saved run to continue (its video and settings must be `header`'s), or None after starting a new
        state (nothing to resume). The state folder is locked for this run until `remove` or `release`."""
        if self.dir.is_dir():
            self._lock = self._try_lock()  # (before reading: a running writer's state.json is not ours)
        if not resume:
            self.refuse_overwrite()
        elif self.exists():
            saved = self._read()
            _check_same(saved, header, self.dir)
            self._remove_orphans(saved.get("snapshot"))
            return saved
        try:
            self.dir.mkdir(exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create the resume state folder {self.dir}: {e}") from e
        if self._lock is None:
            self._lock = self._try_lock()
        self._write(
            {**header, "first_pts": None, "frames": 0, "ended": False, "segments": [], "snapshot": None}
        )
        return None

    def commit(self, session: Any, data: dict[str, Any]) -> None:
        """Save `session` as the snapshot after `data`'s segments, then `data` naming it, then drop the old one."""
        name = f"snapshot-{len(data['segments'])}"
        try:
            session.save(self.dir / name)
        except SnapshotError as e:
            raise OutputError(f"cannot save the resume state in {self.dir}: {e}") from e
        self._write({**data, "snapshot": name})
        self._remove_orphans(name)

    def load_session(self, saved: dict[str, Any], adapter: Any) -> Any:
        """The session as it was after the saved run's last finished segment."""
        from ..session import Session

        try:
            return Session.load(self.dir / saved["snapshot"], adapter)
        except SnapshotError as e:
            raise ResumeError(f"cannot resume from {self.dir}: {e}") from e

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.release()

    def release(self) -> None:
        """Let another run take the state folder (this process's lock on it dropped)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _read(self) -> dict[str, Any]:
        try:
            saved = json.loads(self.file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ResumeError(
                f"cannot read the resume state {self.file}: {e}; delete {self.dir} to start over"
            ) from e
        if not isinstance(saved, dict) or saved.get("format") != FORMAT or saved.get("version") != VERSION:
            raise ResumeError(
                f"{self.file} is not a {FORMAT} v{VERSION} file; delete {self.dir} to start over"
            )
        if saved.get("snapshot") is not None and not (self.dir / saved["snapshot"]).is_dir():
            raise ResumeError(
                f"{self.file} names a snapshot that is missing; delete {self.dir} to start over"
            )
        return saved

    def _write(self, data: dict[str, Any]) -> None:
        write_text(self.file, json.dumps({"format": FORMAT, "version": VERSION, **data}, indent=1))

    def _remove_orphans(self, keep: str | None) -> None:
        for old in self.dir.glob("snapshot-*"):
            if old.name != keep:
                shutil.rmtree(old, ignore_errors=True)


def _check_same(saved: dict[str, Any], header: dict[str, Any], where: Path) -> None:
    """Refuse a state written for another video, or with other settings (model, session config, options)."""
    video, mine = saved.get("video", {}), header["video"]
    if {k: video.get(k) for k in ("bytes", "sha256_first_mib")} != {
        k: mine[k] for k in ("bytes", "sha256_first_mib")
    }:
        raise ResumeError(
            f"the resume state in {where} is for another video ({video.get('path')}), not {mine['path']}: "
            f"give that video, or delete {where} to start over"
        )
    old, new = _flat(saved.get("settings", {})), _flat(header["settings"])
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if changed:
        diffs = "; ".join(f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in changed[:6])
        raise ResumeError(
            f"the resume state in {where} was written with other settings ({diffs}): resume with the same "
            f"settings, or delete {where} to start over"
        )


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as {'a.b': leaf} (JSON round-trips lists and tuples alike, so tuples become lists)."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: list(tree) if isinstance(tree, tuple) else tree}
