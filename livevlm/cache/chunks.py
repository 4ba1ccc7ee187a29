"""`ChunkStore`: a stream's chunks across the device / host / disk tiers, and their summary index.

Each chunk also leaves one summary row: the mean of its (rotated) keys and of its values, per layer and KV
head. q·mean(k) is exactly the mean attention logit of q over the chunk's tokens, for a query at any position,
so a summary is both the chunk's representative key for relevance scores and a one-token stand-in for it.
With `key_reps` the row also carries the chunk's most atypical keys (a small event hides in the mean), and
every chunk gets a query-free novelty score against the chunk before it (`scoring.py`). Summary rows live in
host blocks of up to `SUMMARY_BLOCK` chunks, smaller under a small host budget (`summary_log.block_for`); full
blocks spill to disk when RAM runs out, first whenever the index holds more than half the host budget, so the
index does not crowd chunk KV out of host RAM.

A spill file that cannot grow (a full disk, an unwritable `spill_dir`: `OutputError`) is capped at the size it
reached, as `disk_bytes` caps it: the oldest chunks make room (`stats.disk_error` says why). With no room on
disk at all (`disk_bytes=0`), the oldest index blocks are forgotten so host RAM stays within `cpu_bytes`.
"""

from __future__ import annotations

import functools
import logging
import threading
from array import array
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import OutputError
from ..kernels.quant import from_bytes, to_bytes_on_device
from ..kernels.transfer import IN_FLIGHT, done, download, landed, upload
from ..records import Blob
from .disk import DiskTier
from .scoring import novelty, representative_keys, top_salient
from .summary_log import SummaryLog, block_for
from .tiers import ChunkRecord, KVTiers

logger = logging.getLogger(__name__)


class ChunkStore:
    """Chunks in age order across tiers, under byte budgets; thread-safe (one lock for moves and loads)."""

    def __init__(
        self,
        tiers: KVTiers,
        layout: tuple[int, int, int],
        dtype: torch.dtype,
        device: torch.device | str,
        summaries: bool = True,
        key_reps: int = 0,
    ) -> None:
        self.tiers, self.layout, self.dtype, self.device = tiers, layout, dtype, device
        self.records: list[ChunkRecord] = []
        self.key_reps = key_reps
        self.summaries = SummaryLog(layout, dtype, width=2 + key_reps) if summaries else None
        if self.summaries is not None:  # its open block takes at most a quarter of the host budget
            self.summaries.block = block_for(tiers.cpu_bytes, self.summaries.row_bytes)
        self._warned_host = False
        self._novelty = array("d")  # per chunk: how much it differs from the chunk before (scoring.novelty)
        self._novelty_due: deque[tuple[torch.Tensor, Any]] = deque()  # newer scores: (host copy, its event)
        self._staged: deque[ChunkRecord] = deque()  # chunks whose bytes are still on their way to the host tier
        self.alive = bytearray()  # per chunk: 1 while some tier holds its dense KV
        self._last_values: torch.Tensor | None = None
        self.bytes = {"device": 0, "cpu": 0, "disk": 0}
        self.dropped = 0
        self.tokens = 0  # tokens of the chunks not dropped
        self.lock = threading.RLock()
        self._queues: dict[str, deque[ChunkRecord]] = {t: deque() for t in self.bytes}
        self._disk: DiskTier | None = None
        self._disk_limit: int | None = None  # the spill file's size when it could not grow (a full disk)
        self.disk_error: str | None = None
        """Why the spill file stopped growing, if it did (`OutputError`'s message)."""

    def pin(self, nbytes: int) -> None:
        """Count `nbytes` held on the device outside the store (the sink) against `device_bytes`."""
        with self.lock:
            self.bytes["device"] += nbytes
            self._enforce()

    @property
    def novelty(self) -> array:
        """Per chunk: how much it differs from the chunk before (`scoring.novelty`)."""
        return self._novelty_until(None)

    def _novelty_until(self, stop: int | None) -> array:
        """The scores, those of chunks [0, stop) at least read to the host: each was copied there as its chunk
        was added, so reading one of an older chunk waits for nothing queued since."""
        with self.lock:
            due = self._novelty_due
            while due and (stop is None or len(self._novelty) < stop or len(due) > IN_FLIGHT or done(due[0][1])):
                self._novelty.append(float(landed(*due.popleft())))
            return self._novelty

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
                row = kv.float().mean(3)
                if self.key_reps:
                    row = torch.cat([row, representative_keys(kv[:, 0], self.key_reps)], 1)
                self.summaries.append(row)
            values = kv[:, 1]
            self._novelty_due.append(download(novelty(values, self._last_values)))  # read when a pick needs it
            self._novelty_until(0)  # (those whose copy is done)
            while self._staged and (len(self._staged) > IN_FLIGHT or done(self._staged[0].copied)):
                _settled(self._staged.popleft())  # chunks moved to the host tier: their bytes into pageable memory
            self.alive.append(1)
            self._last_values = values
            self._enforce()
            return rec

    def load(self, rec: ChunkRecord, device: torch.device | str | None = None) -> torch.Tensor | None:
        """The chunk's dense KV on `device` (default: the store's), or None once it was dropped."""
        with self.lock:
            if rec.tier == "device":
                return rec.kv
            if rec.tier == "cpu":
                buf = _settled(rec).blob
            elif rec.tier == "disk":
                buf = self._disk.get(rec.offset, rec.nbytes)  # type: ignore[union-attr]
            else:
                return None
        return from_bytes(buf, self.shape(rec.tokens), self.dtype, self.tiers.cpu_bits, device or self.device)

    def summary_rows(self, start: int, stop: int) -> torch.Tensor:
        """Summary rows of chunks [start, stop) on the store's device: one-token KV (layers, 2, kv_heads, n, dim)."""
        return self.index_rows(start, stop)[:, :2]

    def index_rows(self, start: int, stop: int, layers: slice | None = None) -> torch.Tensor:
        """Whole index rows of chunks [start, stop): (layers, 2 + key_reps, kv_heads, n, dim) = mean key, mean
        value, then the representative keys; `layers` (a step-1 slice) reads only those layers."""
        assert self.summaries is not None
        with self.lock:
            rows = self.summaries.rows(start, stop, self._disk, layers)
        return upload(rows, self.device)

    def salient(self, stop: int, count: int) -> list[int]:
        """The `count` most novel chunks before `stop` that still have dense KV, in stream order."""
        if count <= 0 or stop <= 0:  # nothing to pick: the scores stay on the device (no wait)
            return []
        with self.lock:
            scores = np.frombuffer(self._novelty_until(stop), dtype=np.float64, count=stop).copy()
            alive = np.frombuffer(self.alive, dtype=np.uint8, count=stop).astype(bool)
        return top_salient(scores, alive, count)

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
        index and the byte counts; the disk blobs are read from the spill file when the snapshot writes them.
        Chunks whose index rows were forgotten are only counted (`base`), so the state stays within budget."""
        with self.lock:
            base = self.forgotten
            records = [self._record_state(r) for r in self.records[base:]]
            summaries = self.summaries.state_dict(self._disk) if self.summaries is not None else None
            return {"base": base, "records": records, "summaries": summaries, "bytes": dict(self.bytes),
                    "dropped": self.dropped, "tokens": self.tokens, "novelty": list(self.novelty[base:]),
                    "last_values": self._last_values}  # fmt: skip

    def _record_state(self, r: ChunkRecord) -> dict[str, Any]:
        out = {"index": r.index, "tokens": r.tokens, "pts_seconds": list(r.pts_seconds), "tier": r.tier}
        if r.tier == "disk":
            out["disk"] = Blob(r.nbytes, functools.partial(self._disk_tier().get, r.offset, r.nbytes))
        if r.tier != "dropped":
            out.update(nbytes=r.nbytes, kv=r.kv, blob=_settled(r).blob)
        return out

    def load_state(self, state: dict[str, Any]) -> None:
        """Replace the chunks with a `state_dict`'s; disk blobs go into a fresh spill file (compacted). A spill
        file that cannot be written (`OutputError`: a full disk) is removed at once, not left half-filled."""
        with self.lock:
            if self._disk is not None:
                self._disk.close()
                self._disk = None
            try:
                self._load_state(state)
            except OutputError:
                if self._disk is not None:
                    self._disk.close()
                    self._disk = None
                raise

    def _load_state(self, state: dict[str, Any]) -> None:
        base = int(state["base"])
        self.records = [ChunkRecord(i, 0, (), "dropped") for i in range(base)]  # forgotten: index only
        self._queues = {t: deque() for t in self.bytes}
        for r in state["records"]:
            rec = ChunkRecord(int(r["index"]), int(r["tokens"]), tuple(r["pts_seconds"]), r["tier"],
                              nbytes=int(r.get("nbytes", 0)))  # fmt: skip
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
        self._novelty, self._novelty_due = array("d", [0.0] * base + [float(x) for x in state["novelty"]]), deque()
        self._staged.clear()
        self.alive = bytearray(rec.tier != "dropped" for rec in self.records)
        last = state["last_values"]
        self._last_values = last.to(self.device) if last is not None else None

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
        failures = 0
        while tiers.cpu_bytes is not None and self.bytes["cpu"] + self._index_ram() > tiers.cpu_bytes:
            try:
                if not self._free_ram():
                    break
            except OutputError as e:  # the spill file cannot grow: from now on it is capped at its size
                failures += 1
                self._disk_failed(e, give_up=failures > 1)

    def _index_ram(self) -> int:
        return self.summaries.ram_bytes if self.summaries is not None else 0

    def _free_ram(self) -> bool:
        """Spill an index block while the index holds over half the host budget, else move the oldest host
        chunk down (to disk, or dropped), else spill an index block, else forget the oldest index block (no disk
        tier, or a full one: its chunks' KV goes too); False when nothing can go. A failed spill write raises
        `OutputError` with nothing moved."""
        queue, log = self._queues["cpu"], self.summaries
        half = (self.tiers.cpu_bytes or 0) // 2
        if queue and log is not None and log.ram_bytes > half and self._disk_cap() != 0 and self._summary_room():
            log.spill(self._disk_tier(), pack=self._disk_cap() is None)
            return True
        if queue:
            rec = queue[0]
            self._move(rec, "disk" if self._disk_room(rec.nbytes) else "dropped")
            queue.popleft()
            return True
        if log is None or not log.can_spill:  # nothing in RAM but the open index block
            return False
        if self._disk_cap() != 0 and self._summary_room():
            log.spill(self._disk_tier(), pack=self._disk_cap() is None)
            return True
        device = self._queues["device"]
        newest = device[0].index if device else len(self.records)  # blocks of device chunks stay
        ram, start = log.ram_bytes, log.forgotten_rows
        while log.ram_bytes == ram and (log.forgotten + 1) * log.block <= newest:
            if not log.forget_oldest(self._disk, ram=True):
                break
        self._forget_records(start, log.forgotten_rows)
        return log.ram_bytes < ram

    def _check_host_room(self, nbytes: int) -> None:
        """Warn once when a nonzero host budget cannot hold one chunk (`nbytes` there) beside the index's open
        block: no chunk KV stays in host RAM, every one goes to disk or is dropped (a budget is in bytes)."""
        cap, log = self.tiers.cpu_bytes, self.summaries
        index = log.block_bytes if log is not None else 0
        if self._warned_host or not cap or nbytes + index <= cap:
            return
        self._warned_host = True
        logger.warning("the host KV budget of %d bytes holds no chunk of this stream (a chunk takes %d bytes there, "
                       "the summary index up to %d more): every chunk goes to disk or is dropped; a budget is in "
                       "bytes and --kv-budget puts 3/4 of it in host RAM (256M, 1G)", cap, nbytes, index)  # fmt: skip

    def _disk_failed(self, error: OutputError, give_up: bool = False) -> None:
        """Cap the spill file at the size it reached (0: no disk tier at all after `give_up`); logged once."""
        size = 0 if give_up or self._disk is None else self._disk.extent
        self._disk_limit = size if self._disk_limit is None else min(size, self._disk_limit)
        if self.disk_error is None:
            logger.warning("%s: the KV spill file stays at %d bytes from now on (the oldest chunks' KV is dropped "
                           "to make room, as past --kv-disk-budget)", error, self._disk_limit)  # fmt: skip
        self.disk_error = str(error)

    def _disk_cap(self) -> int | None:
        """`disk_bytes`, or less once the spill file could not grow: the size it had then."""
        caps = [c for c in (self.tiers.disk_bytes, self._disk_limit) if c is not None]
        return min(caps) if caps else None

    def _summary_room(self) -> bool:
        """Make room in the spill file for one more summary block: spilled blocks take at most half of
        `disk_bytes` (the oldest are forgotten beyond it), then the oldest disk chunks make way; False when no
        full block is left in RAM to spill or it cannot fit."""
        log = self.summaries
        assert log is not None
        cap = self._disk_cap()
        if not log.can_spill or cap is None:
            return log.can_spill
        share = cap // 2 if log.block_bytes <= cap // 2 else cap
        while log.disk_bytes + log.block_bytes > share:
            start = log.forgotten_rows
            if not log.forget_oldest(self._disk):
                break
            self._forget_records(start, log.forgotten_rows)
        return self._disk_room(log.block_bytes)

    def _forget_records(self, start: int, stop: int) -> None:
        """Chunks whose index rows were forgotten lose their dense KV too (they are the oldest anyway)."""
        for rec in self.records[start:stop]:
            if rec.tier != "dropped":
                self._queues[rec.tier].remove(rec)
                self._move(rec, "dropped")

    @property
    def forgotten(self) -> int:
        """Chunks [0, forgotten) have no index row left: they can be neither scored nor read."""
        return self.summaries.forgotten_rows if self.summaries is not None else 0

    def _disk_room(self, nbytes: int) -> bool:
        """Drop the oldest disk chunks until `nbytes` more fit under `disk_bytes` together with the spilled
        summary blocks, in bytes and in the spill file; False when they cannot fit at all."""
        cap = self._disk_cap()
        if cap is None or nbytes > cap:
            return cap is None
        disk, summaries = self._disk_tier(), (self.summaries.disk_bytes if self.summaries is not None else 0)
        queue = self._queues["disk"]
        while (self.bytes["disk"] + summaries + nbytes > cap or not disk.fits(nbytes, cap)) and queue:
            self._move(queue.popleft(), "dropped")
        return self.bytes["disk"] + summaries + nbytes <= cap and disk.fits(nbytes, cap)

    def _move(self, rec: ChunkRecord, to: str) -> None:
        """Move `rec` to tier `to` (its old queue is the caller's); a failed spill write changes nothing."""
        offset = self._disk_tier().put(_settled(rec).blob) if to == "disk" else -1  # type: ignore[arg-type]
        self.bytes[rec.tier] -= rec.nbytes
        if to == "cpu":
            rec.blob, rec.copied = download(to_bytes_on_device(rec.kv, self.tiers.cpu_bits))  # type: ignore[arg-type]
            rec.kv = None
            if rec.copied is not None:
                self._staged.append(rec)
            rec.nbytes = rec.blob.numel()
            self._check_host_room(rec.nbytes)
        elif to == "disk":
            rec.offset, rec.blob = offset, None
        else:  # dropped: only the summary row is left
            self.alive[rec.index] = 0
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


def _settled(rec: ChunkRecord) -> ChunkRecord:
    """`rec` once its blob's copy from the device is done, the bytes in pageable memory of their own (the host
    then may read them)."""
    if rec.copied is not None and rec.blob is not None:
        rec.blob = landed(rec.blob, rec.copied)
    rec.copied = None
    return rec
