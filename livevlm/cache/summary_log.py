"""`SummaryLog`: a chunk store's index, one row per chunk (mean key, mean value, atypical keys), in blocks.

Blocks of `block` rows (at most `SUMMARY_BLOCK`; fewer when the host budget is small, `block_for`) live in
host RAM; full ones spill to the store's spill file when RAM runs out, and the oldest spilled ones are
forgotten when the spill file's budget runs out (an endless stream's index would otherwise grow without
bound). The open last block never spills; it grows by doubling (1, 2, 4, ... rows), so a short stream holds
only about the rows it has, and a snapshot writes only its used rows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from ..kernels.quant import from_bytes, to_bytes
from ..records import Blob
from .disk import DiskTier

SUMMARY_BLOCK = 64


def block_for(cpu_bytes: int | None, row_bytes: int) -> int:
    """Rows per index block: `SUMMARY_BLOCK`, halved until the open block (which never leaves RAM) takes at
    most a quarter of the host budget `cpu_bytes`, so a small budget still keeps chunk KV there (at least 1)."""
    block = SUMMARY_BLOCK
    while cpu_bytes is not None and block > 1 and block * row_bytes > cpu_bytes // 4:
        block //= 2
    return block


class SummaryLog:
    """One (layers, width, kv_heads, head_dim) row per chunk, appended in order (width 2: mean key and value;
    the representative-keys log: `key_reps` keys); old full blocks may go to disk."""

    def __init__(
        self, layout: tuple[int, int, int], dtype: torch.dtype, block: int = SUMMARY_BLOCK, width: int = 2
    ) -> None:
        self.layout, self.dtype, self.block, self.width = layout, dtype, block, width
        self._blocks: list[torch.Tensor | int | None] = []  # a host tensor, its offset in the spill file, or None
        # (only the last block may hold fewer than `block` rows: its capacity doubles as rows arrive)
        self._on_disk = 0  # leading blocks that live in the spill file (or were forgotten)
        self.forgotten = 0  # leading blocks given up to keep the spill file within its budget
        self.count = 0
        self.ram_bytes = 0
        self.disk_bytes = 0

    def _shape(self, rows: int | None = None) -> tuple[int, ...]:
        layers, heads, dim = self.layout
        return (layers, self.width, heads, self.block if rows is None else rows, dim)

    @property
    def row_bytes(self) -> int:
        """Bytes of one chunk's index row."""
        return self._blocks_nbytes() // self.block

    def append(self, row: torch.Tensor) -> None:
        i = self.count % self.block
        if i == 0:
            self._blocks.append(torch.zeros(self._shape(1), dtype=self.dtype))
            self.ram_bytes += self._blocks[-1].nbytes
        blk = self._blocks[-1]
        assert isinstance(blk, torch.Tensor)
        if i == blk.shape[3]:  # the open block is full below `block` rows: double it (amortised, not per row)
            grown = torch.zeros(self._shape(min(2 * i, self.block)), dtype=self.dtype)
            grown[:, :, :, :i] = blk
            self.ram_bytes += grown.nbytes - blk.nbytes
            self._blocks[-1] = blk = grown
        blk[:, :, :, i] = row.to("cpu", self.dtype)
        self.count += 1

    def rows(self, start: int, stop: int, disk: DiskTier | None, layers: slice | None = None) -> torch.Tensor:
        """Index rows of chunks [start, stop) as one (layers, width, kv_heads, stop - start, head_dim) host tensor
        (zeros for forgotten chunks); `layers` (a step-1 slice) reads only those layers (a contiguous part of a
        spilled block)."""
        start, stop = max(start, 0), min(stop, self.count)
        first, last, _ = (layers or slice(None)).indices(self.layout[0])
        shape = (last - first, *self._shape()[1:])
        per_layer = self._blocks_nbytes() // self.layout[0]
        parts = []
        for b in range(start // self.block, -(-stop // self.block) if stop > start else 0):
            blk = self._blocks[b]
            if blk is None:
                blk = torch.zeros(shape, dtype=self.dtype)
            elif isinstance(blk, int):
                buf = disk.get(blk + first * per_layer, (last - first) * per_layer)  # type: ignore[union-attr]
                blk = from_bytes(buf, shape, self.dtype, 0, "cpu")
            else:
                blk = blk[first:last]
            lo, hi = max(start - b * self.block, 0), min(stop - b * self.block, self.block)
            parts.append(blk[:, :, :, lo:hi])
        if not parts:
            return torch.zeros((*shape[:3], 0, shape[4]), dtype=self.dtype)
        return parts[0] if len(parts) == 1 else torch.cat(parts, 3)

    def _blocks_nbytes(self) -> int:
        layers, heads, dim = self.layout
        return layers * self.width * heads * self.block * dim * torch.finfo(self.dtype).bits // 8

    def state_dict(self, disk: DiskTier | None) -> dict[str, Any]:
        """Blocks as host tensors (of the open last one a copy of its used rows only) or disk `Blob`s, the
        block size and the counters."""
        blocks: list[Any] = []
        for i, blk in enumerate(self._blocks):
            if blk is None:
                blocks.append(None)
            elif isinstance(blk, int):
                blocks.append(Blob(self._blocks_nbytes(), functools.partial(disk.get, blk, self._blocks_nbytes())))  # type: ignore[union-attr]
            else:
                last = i == len(self._blocks) - 1
                blocks.append(blk[:, :, :, : self.count - i * self.block].clone() if last else blk)
        return {"blocks": blocks, "block": self.block, "on_disk": self._on_disk, "count": self.count,
                "forgotten": self.forgotten, "ram_bytes": self.ram_bytes, "disk_bytes": self.disk_bytes}  # fmt: skip

    def load_state(self, state: dict[str, Any], disk: Callable[[], DiskTier]) -> None:
        """Take a `state_dict`'s blocks (its block size too: a snapshot of an older livevlm has 64-row blocks
        and a whole open one); the host bytes are counted from the tensors loaded."""
        self.block = int(state.get("block", SUMMARY_BLOCK))
        self._blocks = [
            None if b is None else disk().put(b.read()) if isinstance(b, Blob) else b.to("cpu", self.dtype)
            for b in state["blocks"]
        ]
        self._on_disk, self.count, self.forgotten = int(state["on_disk"]), int(state["count"]), int(state["forgotten"])
        self.ram_bytes = sum(b.nbytes for b in self._blocks if isinstance(b, torch.Tensor))
        self.disk_bytes = int(state["disk_bytes"])

    def spill(self, disk: DiskTier) -> bool:
        """Move the oldest full block in RAM to the spill file; False when none is left to move."""
        if self._on_disk >= len(self._blocks) - 1:
            return False
        blk = self._blocks[self._on_disk]
        assert isinstance(blk, torch.Tensor)
        self._blocks[self._on_disk] = disk.put(to_bytes(blk, 0))
        self.ram_bytes -= blk.nbytes
        self.disk_bytes += blk.nbytes
        self._on_disk += 1
        return True

    @property
    def can_spill(self) -> bool:
        """Whether a full block is still in RAM (the open last block never spills)."""
        return self._on_disk < len(self._blocks) - 1

    @property
    def block_bytes(self) -> int:
        return self._blocks_nbytes()

    @property
    def forgotten_rows(self) -> int:
        """Chunks before this index have no index row any more (their block was forgotten)."""
        return min(self.forgotten * self.block, self.count)

    def forget_oldest(self, disk: DiskTier | None, ram: bool = False) -> bool:
        """Give up the oldest block in the spill file (its chunks can no longer be scored or stood in for), or
        with `ram`, once none is there, the oldest full block in host RAM (a store with no room on disk);
        False when there is none."""
        if self.forgotten < self._on_disk:
            assert disk is not None
            offset = self._blocks[self.forgotten]
            assert isinstance(offset, int)
            disk.free(offset, self._blocks_nbytes())
            self.disk_bytes -= self._blocks_nbytes()
        elif ram and self.can_spill:
            blk = self._blocks[self.forgotten]
            assert isinstance(blk, torch.Tensor)
            self.ram_bytes -= blk.nbytes
            self._on_disk += 1  # blocks before `_on_disk` are on disk or forgotten
        else:
            return False
        self._blocks[self.forgotten] = None
        self.forgotten += 1
        return True
