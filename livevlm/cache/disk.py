"""The disk tier of a chunked KV store: byte blobs in one spill file inside a private temp directory."""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref

import torch


class DiskTier:
    """Byte blobs in one spill file inside a private temp directory; freed slots are reused; removed on close."""

    def __init__(self, parent: str | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="livevlm-kv-", dir=parent)
        self._fd = os.open(os.path.join(self.dir, "chunks.bin"), os.O_RDWR | os.O_CREAT, 0o600)
        self._end = 0
        self._free: dict[int, list[int]] = {}
        self.bytes = 0
        self._finalizer = weakref.finalize(self, _remove, self._fd, self.dir)

    def put(self, buf: torch.Tensor) -> int:
        """Write `buf` (flat uint8) to a free slot of its size or the file's end; returns its offset."""
        n = buf.numel()
        slots = self._free.get(n)
        offset = slots.pop() if slots else self._end
        if offset == self._end:
            self._end += n
        view, done = memoryview(buf.numpy()), 0
        while done < n:
            done += os.pwrite(self._fd, view[done:], offset + done)
        self.bytes += n
        return offset

    def get(self, offset: int, n: int) -> torch.Tensor:
        out = torch.empty(n, dtype=torch.uint8)
        view, done = memoryview(out.numpy()), 0
        while done < n:
            got = os.preadv(self._fd, [view[done:]], offset + done)
            if got <= 0:
                raise OSError(f"short read from the KV spill file at {offset + done}")
            done += got
        return out

    def free(self, offset: int, n: int) -> None:
        self._free.setdefault(n, []).append(offset)
        self.bytes -= n

    def close(self) -> None:
        self._finalizer()


def _remove(fd: int, path: str) -> None:
    os.close(fd)
    shutil.rmtree(path, ignore_errors=True)
