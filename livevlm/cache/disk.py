"""The disk tier of a chunked KV store: byte blobs in one spill file inside a private temp directory.

A spill dir `livevlm-kv-XXXX` holds `chunks.bin` and `owner.pid` (pid, start time, pid namespace of the process
that made it). Closing the tier, dropping it or a normal exit removes the dir. What a killed process leaves
behind is removed by the next DiskTier made in the same parent (`remove_stale_spill_dirs`), which removes:
  - a spill dir whose owner is gone: its pid is dead or a zombie, or now names a process started at another time;
  - a spill dir with no readable owner file (an older livevlm's, or one caught being made) only when it holds
    nothing but those two files and none of them was touched for `STALE_SECONDS` (one hour).
It never touches another user's dirs, symlinks, other names, or owners in another pid namespace.
A write or a dir that fails (a full disk) raises `OutputError` and leaves the tier as it was.
`owner_tag` / `owner_gone` give other temp files (snapshot temp dirs) the same test of their maker.

SIGTERM kills a Python process without running finalizers; `install_sigterm_cleanup` makes it exit through
SystemExit(143) instead, and a DiskTier made in the main thread installs it while SIGTERM has its default action.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import shutil
import signal
import tempfile
import threading
import time
import weakref
from typing import Any

import torch

from ..errors import OutputError, SessionClosedError

PREFIX = "livevlm-kv-"
SPILL_FILE = "chunks.bin"
OWNER_FILE = "owner.pid"
STALE_SECONDS = 3600.0
"""How long a spill dir without an owner file must have been untouched before it counts as left behind."""


class DiskTier:
    """Byte blobs in one spill file; freed ranges are merged and reused first-fit; the dir is removed on close."""

    def __init__(self, parent: str | None = None) -> None:
        remove_stale_spill_dirs(parent)
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            install_sigterm_cleanup()  # (a no-op off the main thread)
        where = parent or tempfile.gettempdir()
        try:
            self.dir = tempfile.mkdtemp(prefix=PREFIX, dir=parent)
        except OSError as e:
            raise OutputError(f"cannot make a KV spill directory in {where}: {e.strerror or e}") from e
        try:
            _write_owner(self.dir)
            self._fd = os.open(os.path.join(self.dir, SPILL_FILE), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:  # a full disk: the half-made dir goes at once
            shutil.rmtree(self.dir, ignore_errors=True)
            raise OutputError(f"cannot write the KV spill file in {where}: {e.strerror or e}") from e
        self._end = 0
        self._holes: list[list[int]] = []  # free [offset, size] ranges below _end, by offset, never adjacent
        self.bytes = 0
        self._lock = threading.Lock()  # no read or write can race the close that frees the fd number
        self._finalizer = weakref.finalize(self, _remove, self._fd, self.dir, os.getpid(), self._lock)

    def fits(self, n: int, limit: int) -> bool:
        """Whether `put` of `n` bytes would keep the spill file within `limit` bytes."""
        return any(size >= n for _, size in self._holes) or self._end + n <= limit

    @property
    def extent(self) -> int:
        """Bytes the spill file spans (used ranges and the free ones between them)."""
        return self._end

    def put(self, buf: torch.Tensor) -> int:
        """Write `buf` (flat uint8) to the first free range it fits or the file's end; returns its offset.

        A failed write (a full disk, an I/O error) raises `OutputError` and leaves the tier as it was: the range
        stays free and a file grown by a partial write is cut back."""
        n = buf.numel()
        with self._lock:
            fd = self._open_fd()
            holes, end = [list(h) for h in self._holes], self._end
            offset = self._take(n)
            view, done = memoryview(buf.numpy()), 0
            try:
                while done < n:
                    done += os.pwrite(fd, view[done:], offset + done)
            except OSError as e:
                self._holes, self._end = holes, end
                _truncate(fd, end)
                raise OutputError(f"cannot write the KV spill file in {self.dir}: {e.strerror or e}") from e
            self.bytes += n
        return offset

    def get(self, offset: int, n: int) -> torch.Tensor:
        """The `n` bytes at `offset` as a flat uint8 tensor."""
        out = torch.empty(n, dtype=torch.uint8)
        view, done = memoryview(out.numpy()), 0
        with self._lock:
            fd = self._open_fd()
            while done < n:
                got = os.preadv(fd, [view[done:]], offset + done)
                if got <= 0:
                    raise OSError(f"short read from the KV spill file at {offset + done}")
                done += got
        return out

    def free(self, offset: int, n: int) -> None:
        """Give back the range `put` returned, merged with free neighbours."""
        with self._lock:
            self._open_fd()
            i = bisect.bisect(self._holes, [offset, n])
            self._holes.insert(i, [offset, n])
            for j in (i, i - 1):  # merge with the next range, then into the previous one
                if 0 <= j < len(self._holes) - 1 and sum(self._holes[j]) == self._holes[j + 1][0]:
                    self._holes[j][1] += self._holes.pop(j + 1)[1]
            self.bytes -= n

    def close(self) -> None:
        """Close the spill file and remove its dir; later put/get/free raise SessionClosedError."""
        self._finalizer()

    def _open_fd(self) -> int:
        if not self._finalizer.alive:
            raise SessionClosedError(f"the KV spill file in {self.dir} was used after close()")
        return self._fd

    def _take(self, n: int) -> int:
        for i, (offset, size) in enumerate(self._holes):
            if size >= n:
                if size == n:
                    del self._holes[i]
                else:
                    self._holes[i] = [offset + n, size - n]
                return offset
        self._end += n
        return self._end - n


def _truncate(fd: int, size: int) -> None:
    """Cut the file back to `size` bytes if it grew past it (what a failed write appended is given back)."""
    try:
        if os.fstat(fd).st_size > size:
            os.ftruncate(fd, size)
    except OSError:
        pass  # the next write over that range replaces it anyway


def _remove(fd: int, path: str, pid: int, lock: threading.Lock) -> None:
    if os.getpid() != pid:  # a forked child's exit must not delete its parent's spill dir
        os.close(fd)
        return
    with lock:
        os.close(fd)
        shutil.rmtree(path, ignore_errors=True)


def remove_stale_spill_dirs(parent: str | None = None) -> list[str]:
    """Remove the spill dirs in `parent` (default: the temp dir) left behind by dead processes; their paths."""
    try:
        with os.scandir(parent or tempfile.gettempdir()) as it:
            candidates = sorted((e for e in it if e.name.startswith(PREFIX)), key=lambda e: e.name)
    except OSError:
        return []
    removed = []
    for entry in candidates:
        if _is_stale(entry):
            shutil.rmtree(entry.path, ignore_errors=True)
            if not os.path.lexists(entry.path):
                removed.append(entry.path)
    return removed


def _is_stale(entry: os.DirEntry) -> bool:
    try:
        if not entry.is_dir(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_uid != os.getuid():
            return False
        owner = _read_owner(entry.path)
        return _untouched(entry.path) if owner is None else not _owner_alive(*owner)
    except OSError:
        return False


def _untouched(path: str) -> bool:
    """An ownerless dir holding only spill-dir files, none modified for STALE_SECONDS."""
    names = os.listdir(path)
    if not set(names) <= {SPILL_FILE, OWNER_FILE}:
        return False
    newest = max(os.stat(os.path.join(path, name)).st_mtime for name in [".", *names])
    return time.time() - newest > STALE_SECONDS


def _write_owner(path: str) -> None:
    pid = os.getpid()
    with open(os.path.join(path, OWNER_FILE), "x") as f:
        f.write(f"{pid}\n{_proc_stat(pid)[1]}\n{_pid_namespace()}\n")


def _read_owner(path: str) -> tuple[int, str, str] | None:
    """(pid, start time, pid namespace) from a complete owner file, else None."""
    try:
        with open(os.path.join(path, OWNER_FILE)) as f:
            lines = f.read().split("\n")
        pid = int(lines[0])
    except (OSError, ValueError):
        return None
    return (pid, lines[1], lines[2]) if pid > 0 and len(lines) == 4 else None


def _owner_alive(pid: int, start: str, namespace: str) -> bool:
    """Whether the process that wrote an owner file may still be running (True when it cannot tell)."""
    if namespace != _pid_namespace():
        return True  # its pid numbers mean nothing here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    state, now = _proc_stat(pid)
    return state != "Z" and not (start and now and now != start)


def _proc_stat(pid: int) -> tuple[str, str]:
    """(state, start time in clock ticks since boot) of a process from /proc; '' where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return "", ""


def pid_space() -> str:
    """Which machine and pid namespace this process's pid numbers belong to (boot id and namespace)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    return f"{boot}:{_pid_namespace()}"


def remove_spill_dirs_of(pid: int, parent: str | None = None, wait_s: float = 10.0) -> list[str]:
    """Wait up to `wait_s` for process `pid` (of this pid space) to be gone, then remove the stale spill dirs
    in `parent`; their paths. For a supervisor that saw a worker killed: the kill is asynchronous, and a
    dir whose owner is still exiting would otherwise stay until the next DiskTier made there."""
    deadline = time.monotonic() + wait_s
    while _owner_alive(pid, "", _pid_namespace()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return remove_stale_spill_dirs(parent)


def owner_tag() -> str:
    """This process as `PID-START-SPACE` (its start time in clock ticks, a hash of its pid space): what the name
    of a temp dir carries so that a later process can tell when its maker is gone (`owner_gone`)."""
    pid = os.getpid()
    space = hashlib.sha256(pid_space().encode()).hexdigest()[:8]
    return f"{pid}-{_proc_stat(pid)[1]}-{space}"


def owner_gone(tag: str) -> bool:
    """Whether the process an `owner_tag` names is gone; False when it cannot tell (another machine or pid
    namespace, a malformed tag)."""
    pid, _, rest = tag.partition("-")
    start, _, space = rest.partition("-")
    if not pid.isdigit() or int(pid) <= 0 or space != owner_tag().rpartition("-")[2]:
        return False
    return not _owner_alive(int(pid), start, _pid_namespace())


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


class _ExitOnSigterm:
    """A SIGTERM handler: run the handler it replaced (if a Python one), then exit through SystemExit(143)."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous

    def __call__(self, signum: int, frame: Any) -> None:
        if callable(self.previous):
            self.previous(signum, frame)
        raise SystemExit(128 + signum)


def install_sigterm_cleanup() -> bool:
    """Make SIGTERM exit with code 143 through SystemExit, so finalizers remove spill dirs; idempotent.

    Chains to a Python handler already set. Returns whether it is in place: False off the main thread, or when
    SIGTERM is ignored or handled outside Python (left as it is).
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    previous = signal.getsignal(signal.SIGTERM)
    if isinstance(previous, _ExitOnSigterm):
        return True
    if previous is None or previous == signal.SIG_IGN:
        return False
    signal.signal(signal.SIGTERM, _ExitOnSigterm(previous))
    return True
