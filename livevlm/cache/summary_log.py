"""`SummaryLog`: a chunk store's index, one row per chunk (mean key, mean value, atypical keys), in blocks.

Blocks of `block` rows (at most `SUMMARY_BLOCK`; fewer when the host budget is small, `block_for`) live in
host RAM; full ones spill to the store's spill file when RAM runs out, and the oldest spilled ones are
forgotten when the spill file's budget runs out (an endless stream's index would otherwise grow without
bound). The open last block never spills; it grows by doubling (1, 2, 4, ... rows), so a short stream holds
only about the rows it has, and a snapshot writes only its used rows.

Blocks smaller than `SUMMARY_BLOCK` (a small host budget: 1 row each at `cpu_bytes=0`) are packed once spilled:
each run of `SUMMARY_BLOCK` rows on disk is rewritten as one extent (`Packed`), so a question reads the index in
`SUMMARY_BLOCK`-row reads, not one read per chunk (2000 chunks: 4x the question time of a normal budget).
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from ..errors import OutputError
from ..kernels.quant import from_bytes, to_bytes
from ..kernels.transfer import IN_FLIGHT, done, download, landed
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


class Packed(NamedTuple):
    """A spilled block that lives in a packed extent: `SUMMARY_BLOCK` rows (a whole group of blocks) laid out as
    one block of that many rows, starting at `offset` in the spill file; the block is the group's `slot`-th."""

    offset: int
    slot: int


class SummaryLog:
    """One (layers, width, kv_heads, head_dim) row per chunk, appended in order (width 2: mean key and value;
    the representative-keys log: `key_reps` keys); old full blocks may go to disk."""

    def __init__(
        self, layout: tuple[int, int, int], dtype: torch.dtype, block: int = SUMMARY_BLOCK, width: int = 2
    ) -> None:
        self.layout, self.dtype, self.block, self.width = layout, dtype, block, width
        self._blocks: list[torch.Tensor | int | Packed | None] = []  # in RAM, spilled (alone or packed), forgotten
        # (only the last block may hold fewer than `block` rows: its capacity doubles as rows arrive)
        self._on_disk = 0  # leading blocks that live in the spill file (or were forgotten)
        self.forgotten = 0  # leading blocks given up to keep the spill file within its budget
        self._packed_groups = 0  # leading groups of blocks packed (or passed over: some of their rows forgotten)
        self.count = 0
        self.ram_bytes = 0
        self.disk_bytes = 0
        self._due: deque[tuple[int, torch.Tensor, Any]] = deque()  # rows copied up, not yet in their block

    def _shape(self, rows: int | None = None) -> tuple[int, ...]:
        layers, heads, dim = self.layout
        return (layers, self.width, heads, self.block if rows is None else rows, dim)

    @property
    def row_bytes(self) -> int:
        """Bytes of one chunk's index row."""
        return self._blocks_nbytes() // self.block

    def append(self, row: torch.Tensor) -> None:
        """Add the next chunk's row; from a device it is copied up without a wait (`download`) and written into
        its block when a read needs it (`_settle`): on a GPU a plain copy would wait for the chunk's prefill."""
        i = self.count % self.block
        if i == 0:
            self._blocks.append(torch.zeros(self._shape(1), dtype=self.dtype))
            self.ram_bytes += self._blocks[-1].nbytes
        blk = self._blocks[-1]
        assert isinstance(blk, torch.Tensor)
        if i == blk.shape[3]:  # the open block is full below `block` rows: double it (amortised, not per row)
            self._settle()
            grown = torch.zeros(self._shape(min(2 * i, self.block)), dtype=self.dtype)
            grown[:, :, :, :i] = blk
            self.ram_bytes += grown.nbytes - blk.nbytes
            self._blocks[-1] = grown
        self._due.append((self.count, *download(row)))
        self.count += 1
        while self._due and (len(self._due) > IN_FLIGHT or done(self._due[0][2])):  # never waits in practice
            self._settle_one()

    def _settle(self, stop: int | None = None) -> None:
        """Write the copied rows of chunks [0, stop) (all: None) into their blocks, each after its copy is done."""
        while self._due and (stop is None or self._due[0][0] < stop):
            self._settle_one()

    def _settle_one(self) -> None:
        index, host, copied = self._due.popleft()
        blk = self._blocks[index // self.block]
        assert isinstance(blk, torch.Tensor)
        blk[:, :, :, index % self.block] = landed(host, copied).to(self.dtype)

    def rows(self, start: int, stop: int, disk: DiskTier | None, layers: slice | None = None) -> torch.Tensor:
        """Index rows of chunks [start, stop) as one (layers, width, kv_heads, stop - start, head_dim) host tensor
        (zeros for forgotten chunks); `layers` (a step-1 slice) reads only those layers (a contiguous part of a
        spilled block or packed extent, each read once)."""
        start, stop = max(start, 0), min(stop, self.count)
        self._settle(stop)
        first, last, _ = (layers or slice(None)).indices(self.layout[0])
        runs: list[list[Any]] = []  # [source tensor, first row, end row]: consecutive rows of one source merged
        extents: dict[int, torch.Tensor] = {}  # packed extents read by this call, by offset
        for b in range(start // self.block, -(-stop // self.block) if stop > start else 0):
            source, base = self._source(b, first, last, disk, extents)
            lo = base + max(start - b * self.block, 0)
            hi = base + min(stop - b * self.block, self.block)
            if runs and runs[-1][0] is source and runs[-1][2] == lo:
                runs[-1][2] = hi
            else:
                runs.append([source, lo, hi])
        if not runs:
            return torch.zeros((last - first, *self._shape(0)[1:]), dtype=self.dtype)
        parts = [source[:, :, :, lo:hi] for source, lo, hi in runs]
        return parts[0] if len(parts) == 1 else torch.cat(parts, 3)

    def _source(
        self, b: int, first: int, last: int, disk: DiskTier | None, extents: dict[int, torch.Tensor]
    ) -> tuple[torch.Tensor, int]:
        """Block `b`'s layers [first, last) as (a tensor holding its rows, the row they start at in it)."""
        blk = self._blocks[b]
        if isinstance(blk, Packed):
            if blk.offset not in extents:
                extents[blk.offset] = self._read(disk, blk.offset, self._group * self.block, first, last)
            return extents[blk.offset], blk.slot * self.block
        if isinstance(blk, int):
            return self._read(disk, blk, self.block, first, last), 0
        if blk is None:
            return torch.zeros((last - first, *self._shape()[1:]), dtype=self.dtype), 0
        return blk[first:last], 0

    def _read(self, disk: DiskTier | None, offset: int, rows: int, first: int, last: int) -> torch.Tensor:
        """Layers [first, last) of `rows` rows laid out as one block at `offset` in the spill file."""
        per_layer = self._blocks_nbytes() // self.block * rows // self.layout[0]
        buf = disk.get(offset + first * per_layer, (last - first) * per_layer)  # type: ignore[union-attr]
        return from_bytes(buf, (last - first, *self._shape(rows)[1:]), self.dtype, 0, "cpu")

    @property
    def _group(self) -> int:
        """Blocks per packed extent (1: blocks of `SUMMARY_BLOCK` rows are never packed)."""
        return max(1, SUMMARY_BLOCK // self.block)

    def _blocks_nbytes(self) -> int:
        layers, heads, dim = self.layout
        return layers * self.width * heads * self.block * dim * torch.finfo(self.dtype).bits // 8

    def state_dict(self, disk: DiskTier | None) -> dict[str, Any]:
        """Blocks as host tensors (of the open last one a copy of its used rows only) or disk `Blob`s, the
        block size and the counters."""
        self._settle()
        blocks: list[Any] = []
        packed = self._packed_reader(disk)
        for i, blk in enumerate(self._blocks):
            if blk is None:
                blocks.append(None)
            elif isinstance(blk, int):
                blocks.append(Blob(self._blocks_nbytes(), functools.partial(disk.get, blk, self._blocks_nbytes())))  # type: ignore[union-attr]
            elif isinstance(blk, Packed):  # the block's own rows, as if it had spilled alone
                blocks.append(Blob(self._blocks_nbytes(), functools.partial(packed, blk)))
            else:
                last = i == len(self._blocks) - 1
                blocks.append(blk[:, :, :, : self.count - i * self.block].clone() if last else blk)
        return {"blocks": blocks, "block": self.block, "on_disk": self._on_disk, "count": self.count,
                "forgotten": self.forgotten, "ram_bytes": self.ram_bytes, "disk_bytes": self.disk_bytes}  # fmt: skip

    def _packed_reader(self, disk: DiskTier | None) -> Callable[[Packed], torch.Tensor]:
        """Bytes of a packed block, laid out as a block of its own; blocks read in order read each extent once
        (the last one read is held)."""
        held: dict[int, torch.Tensor] = {}

        def read(blk: Packed) -> torch.Tensor:
            if blk.offset not in held:
                held.clear()
                held[blk.offset] = self._read(disk, blk.offset, self._group * self.block, 0, self.layout[0])
            return to_bytes(held[blk.offset][:, :, :, blk.slot * self.block : (blk.slot + 1) * self.block], 0)

        return read

    def load_state(self, state: dict[str, Any], disk: Callable[[], DiskTier]) -> None:
        """Take a `state_dict`'s blocks (its block size too: a snapshot of an older livevlm has 64-row blocks
        and a whole open one); the host bytes are counted from the tensors loaded."""
        self.block = int(state.get("block", SUMMARY_BLOCK))
        self._due.clear()
        self._blocks = [
            None if b is None else disk().put(b.read()) if isinstance(b, Blob) else b.to("cpu", self.dtype)
            for b in state["blocks"]
        ]
        self._on_disk, self.count, self.forgotten = int(state["on_disk"]), int(state["count"]), int(state["forgotten"])
        self._packed_groups = 0  # spilled blocks come back alone: the next spill packs them
        self.ram_bytes = sum(b.nbytes for b in self._blocks if isinstance(b, torch.Tensor))
        self.disk_bytes = int(state["disk_bytes"])

    def spill(self, disk: DiskTier, pack: bool = True) -> bool:
        """Move the oldest full block in RAM to the spill file; False when none is left to move. With `pack`, each
        group of blocks now all on disk is rewritten as one extent (`_pack`): the caller passes False when the
        spill file has a byte budget, whose oldest rows go block by block."""
        if self._on_disk >= len(self._blocks) - 1:
            return False
        self._settle()
        blk = self._blocks[self._on_disk]
        assert isinstance(blk, torch.Tensor)
        self._blocks[self._on_disk] = disk.put(to_bytes(blk, 0))
        self.ram_bytes -= blk.nbytes
        self.disk_bytes += blk.nbytes
        self._on_disk += 1
        while pack and self._group > 1 and (self._packed_groups + 1) * self._group <= self._on_disk:
            self._pack(disk, self._packed_groups)
            self._packed_groups += 1
        return True

    def _pack(self, disk: DiskTier, group: int) -> None:
        """Rewrite the spilled blocks of `group` as one extent of `SUMMARY_BLOCK` rows and free theirs. A group
        with forgotten or already packed blocks is left as it is, and so is one the spill file cannot take (a
        failed write changes nothing: its blocks stay where they are)."""
        blocks = range(group * self._group, (group + 1) * self._group)
        offsets = [self._blocks[b] for b in blocks]
        if not all(type(o) is int for o in offsets):
            return
        try:
            offset = disk.put(to_bytes(self.rows(blocks[0] * self.block, blocks[-1] * self.block + self.block, disk), 0))
        except OutputError:
            return
        for slot, (b, old) in enumerate(zip(blocks, offsets, strict=True)):
            disk.free(old, self._blocks_nbytes())  # type: ignore[arg-type]
            self._blocks[b] = Packed(offset, slot)

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
        self._settle()
        blk = self._blocks[self.forgotten] if self.forgotten < self._on_disk else None
        if isinstance(blk, Packed):  # its extent goes whole: every block in it with it
            assert disk is not None and blk.slot == 0
            disk.free(blk.offset, self._group * self._blocks_nbytes())
            self.disk_bytes -= self._group * self._blocks_nbytes()
            self._blocks[self.forgotten : self.forgotten + self._group] = [None] * self._group
            self.forgotten += self._group
            return True
        if self.forgotten < self._on_disk:
            assert disk is not None and isinstance(blk, int)
            disk.free(blk, self._blocks_nbytes())
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
