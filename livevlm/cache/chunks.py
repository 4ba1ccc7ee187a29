"""`ChunkStore`: a stream's chunks across the device / host / disk tiers, and their summary index.

Each chunk also leaves one summary row: the mean of its (rotated) keys and of its values, per layer and KV
head. q·mean(k) is exactly the mean attention logit of q over the chunk's tokens, for a query at any position,
so a summary is both the chunk's representative key for relevance scores and a one-token stand-in for it.
Summary rows live in host blocks of `SUMMARY_BLOCK` chunks; full blocks spill to disk when RAM runs out.
"""

from __future__ import annotations

import functools
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..kernels.quant import from_bytes, to_bytes
from ..records import Blob
from .disk import DiskTier
from .tiers import ChunkRecord, KVTiers

SUMMARY_BLOCK = 256


class SummaryLog:
    """One (layers, 2, kv_heads, head_dim) row per chunk, appended in order; old full blocks may go to disk."""

    def __init__(self, layout: tuple[int, int, int], dtype: torch.dtype, block: int = SUMMARY_BLOCK) -> None:
        self.layout, self.dtype, self.block = layout, dtype, block
        self._blocks: list[torch.Tensor | int] = []  # a host tensor, or its offset in the spill file
        self._on_disk = 0  # leading blocks that live in the spill file
        self.count = 0
        self.ram_bytes = 0
        self.disk_bytes = 0

    def _shape(self) -> tuple[int, ...]:
        layers, heads, dim = self.layout
        return (layers, 2, heads, self.block, dim)

    def append(self, row: torch.Tensor) -> None:
        i = self.count % self.block
        if i == 0:
            self._blocks.append(torch.zeros(self._shape(), dtype=self.dtype))
            self.ram_bytes += self._blocks[-1].nbytes
        self._blocks[-1][:, :, :, i] = row.to("cpu", self.dtype)
        self.count += 1

    def rows(self, start: int, stop: int, disk: DiskTier | None) -> torch.Tensor:
        """Summary rows of chunks [start, stop) as one (layers, 2, kv_heads, stop - start, head_dim) host tensor."""
        start, stop = max(start, 0), min(stop, self.count)
        parts = []
        for b in range(start // self.block, -(-stop // self.block) if stop > start else 0):
            blk = self._blocks[b]
            if isinstance(blk, int):
                nbytes = self._blocks_nbytes()
                blk = from_bytes(disk.get(blk, nbytes), self._shape(), self.dtype, 0, "cpu")  # type: ignore[union-attr]
            lo, hi = max(start - b * self.block, 0), min(stop - b * self.block, self.block)
            parts.append(blk[:, :, :, lo:hi])
        if not parts:
            layers, heads, dim = self.layout
            return torch.zeros((layers, 2, heads, 0, dim), dtype=self.dtype)
        return parts[0] if len(parts) == 1 else torch.cat(parts, 3)

    def _blocks_nbytes(self) -> int:
        layers, heads, dim = self.layout
        return layers * 2 * heads * self.block * dim * torch.finfo(self.dtype).bits // 8

    def state_dict(self, disk: DiskTier | None) -> dict[str, Any]:
        """Blocks as host tensors (the open last one copied) or disk `Blob`s, and the counters."""
        blocks: list[Any] = []
        for i, blk in enumerate(self._blocks):
            if isinstance(blk, int):
                blocks.append(Blob(self._blocks_nbytes(), functools.partial(disk.get, blk, self._blocks_nbytes())))  # type: ignore[union-attr]
            else:
                blocks.append(blk.clone() if i == len(self._blocks) - 1 else blk)
        return {"blocks": blocks, "on_disk": self._on_disk, "count": self.count,
                "ram_bytes": self.ram_bytes, "disk_bytes": self.disk_bytes}  # fmt: skip

    def load_state(self, state: dict[str, Any], disk: Callable[[], DiskTier]) -> None:
        self._blocks = [disk().put(b.read()) if isinstance(b, Blob) else b.to("cpu", self.dtype) for b in state["blocks"]]
        self._on_disk, self.count = int(state["on_disk"]), int(state["count"])
        self.ram_bytes, self.disk_bytes = int(state["ram_bytes"]), int(state["disk_bytes"])

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


class ChunkStore:
    """Chunks in age order across tiers, under byte budgets; thread-safe (one lock for moves and loads)."""

    def __init__(
        self,
        tiers: KVTiers,
        layout: tuple[int, int, int],
        dtype: torch.dtype,
        device: torch.device | str,
        summaries: bool = True,
    ) -> None:
        self.tiers, self.layout, self.dtype, self.device = tiers, layout, dtype, device
        self.records: list[ChunkRecord] = []
        self.summaries = SummaryLog(layout, dtype) if summaries else None
        self.bytes = {"device": 0, "cpu": 0, "disk": 0}
        self.dropped = 0
        self.tokens = 0  # tokens of the chunks not dropped
        self.lock = threading.RLock()
        self._queues: dict[str, deque[ChunkRecord]] = {t: deque() for t in self.bytes}
        self._disk: DiskTier | None = None

    def pin(self, nbytes: int) -> None:
        """Count `nbytes` held on the device outside the store (the sink) against `device_bytes`."""
        with self.lock:
            self.bytes["device"] += nbytes
            self._enforce()

    def shape(self, tokens: int) -> tuple[int, ...]:
        layers, heads, dim = self.layout
        return (layers, 2, heads, tokens, dim)

    def add(self, kv: torch.Tensor, pts_seconds: Sequence[float] = ()) -> ChunkRecord:
        """Keep a chunk's dense KV (layers, 2, kv_heads, tokens, head_dim) on the device tier; enforce budgets."""
        with self.lock:
            rec = ChunkRecord(len(self.records), int(kv.shape[3]), tuple(pts_seconds), kv=kv, nbytes=kv.nbytes)
            self.records.append(rec)
            self._queues["device"].append(rec)
            self.bytes["device"] += rec.nbytes
            self.tokens += rec.tokens
            if self.summaries is not None:
                self.summaries.append(kv.float().mean(3))
            self._enforce()
            return rec

    def load(self, rec: ChunkRecord, device: torch.device | str | None = None) -> torch.Tensor | None:
        """The chunk's dense KV on `device` (default: the store's), or None once it was dropped."""
        with self.lock:
            if rec.tier == "device":
                return rec.kv
            if rec.tier == "cpu":
                buf = rec.blob
            elif rec.tier == "disk":
                buf = self._disk.get(rec.offset, rec.nbytes)  # type: ignore[union-attr]
            else:
                return None
        return from_bytes(buf, self.shape(rec.tokens), self.dtype, self.tiers.cpu_bits, device or self.device)

    def summary_rows(self, start: int, stop: int) -> torch.Tensor:
        """Summary rows of chunks [start, stop) on the store's device."""
        assert self.summaries is not None
        with self.lock:
            rows = self.summaries.rows(start, stop, self._disk)
        return rows.to(self.device)

    def counts(self) -> dict[str, int]:
        return {tier: len(q) for tier, q in self._queues.items()}

    def close(self) -> None:
        with self.lock:
            if self._disk is not None:
                self._disk.close()
            self.records.clear()
            for q in self._queues.values():
                q.clear()
            self.summaries = None

    def state_dict(self) -> dict[str, Any]:
        """Every chunk where it lives (device KV, host blob, disk `Blob`, or nothing once dropped), the summary
        index and the byte counts; the disk blobs are read from the spill file when the snapshot writes them."""
        with self.lock:
            records = [self._record_state(r) for r in self.records]
            summaries = self.summaries.state_dict(self._disk) if self.summaries is not None else None
            return {"records": records, "summaries": summaries, "bytes": dict(self.bytes),
                    "dropped": self.dropped, "tokens": self.tokens}  # fmt: skip

    def _record_state(self, r: ChunkRecord) -> dict[str, Any]:
        disk = Blob(r.nbytes, functools.partial(self._disk_tier().get, r.offset, r.nbytes)) if r.tier == "disk" else None
        return {"index": r.index, "tokens": r.tokens, "pts_seconds": list(r.pts_seconds), "tier": r.tier,
                "nbytes": r.nbytes, "kv": r.kv, "blob": r.blob, "disk": disk}  # fmt: skip

    def load_state(self, state: dict[str, Any]) -> None:
        """Replace the chunks with a `state_dict`'s; disk blobs go into a fresh spill file (compacted)."""
        with self.lock:
            if self._disk is not None:
                self._disk.close()
                self._disk = None
            self.records, self._queues = [], {t: deque() for t in self.bytes}
            for r in state["records"]:
                rec = ChunkRecord(int(r["index"]), int(r["tokens"]), tuple(r["pts_seconds"]), r["tier"],
                                  nbytes=int(r["nbytes"]))  # fmt: skip
                if rec.tier == "device":
                    rec.kv = r["kv"].to(self.device)
                elif rec.tier == "cpu":
                    rec.blob = r["blob"].to("cpu")
                elif rec.tier == "disk":
                    rec.offset = self._disk_tier().put(r["disk"].read())
                self.records.append(rec)
                if rec.tier != "dropped":
                    self._queues[rec.tier].append(rec)
            if self.summaries is not None and state["summaries"] is not None:
                self.summaries.load_state(state["summaries"], self._disk_tier)
            self.bytes = {tier: int(n) for tier, n in state["bytes"].items()}
            self.dropped, self.tokens = int(state["dropped"]), int(state["tokens"])

    @property
    def disk_dir(self) -> str | None:
        return self._disk.dir if self._disk is not None else None

    def _disk_tier(self) -> DiskTier:
        if self._disk is None:
            self._disk = DiskTier(self.tiers.spill_dir)
        return self._disk

    def _enforce(self) -> None:
        tiers, queues = self.tiers, self._queues
        while tiers.device_bytes is not None and self.bytes["device"] > tiers.device_bytes and queues["device"]:
            self._move(queues["device"].popleft(), "cpu")
        ram = self.summaries.ram_bytes if self.summaries is not None else 0
        while tiers.cpu_bytes is not None and self.bytes["cpu"] + ram > tiers.cpu_bytes:
            if queues["cpu"]:
                rec = queues["cpu"].popleft()
                self._move(rec, "disk" if self._disk_room(rec.nbytes) else "dropped")
            elif self.summaries is not None and tiers.disk_bytes != 0 and self.summaries.spill(self._disk_tier()):
                ram = self.summaries.ram_bytes
            else:
                break

    def _disk_room(self, nbytes: int) -> bool:
        """Drop the oldest disk chunks until `nbytes` more fit under `disk_bytes`, in bytes and in the spill file
        (chunks + summary blocks), so the file never outgrows the cap; False when they cannot fit at all."""
        cap = self.tiers.disk_bytes
        if cap is None or nbytes > cap:
            return cap is None
        disk, limit = self._disk_tier(), cap + (self.summaries.disk_bytes if self.summaries is not None else 0)
        queue = self._queues["disk"]
        while (self.bytes["disk"] + nbytes > cap or not disk.fits(nbytes, limit)) and queue:
            self._move(queue.popleft(), "dropped")
        return self.bytes["disk"] + nbytes <= cap and disk.fits(nbytes, limit)

    def _move(self, rec: ChunkRecord, to: str) -> None:
        self.bytes[rec.tier] -= rec.nbytes
        if to == "cpu":
            rec.blob, rec.kv = to_bytes(rec.kv, self.tiers.cpu_bits), None  # type: ignore[arg-type]
            rec.nbytes = rec.blob.numel()
        elif to == "disk":
            rec.offset, rec.blob = self._disk_tier().put(rec.blob), None  # type: ignore[arg-type]
        else:  # dropped: only the summary row is left
            if rec.tier == "disk":
                self._disk_tier().free(rec.offset, rec.nbytes)
            rec.kv = rec.blob = None
            rec.nbytes, rec.offset = 0, -1
            self.dropped += 1
            self.tokens -= rec.tokens
        rec.tier = to
        if to != "dropped":
            self.bytes[to] += rec.nbytes
            self._queues[to].append(rec)
