"""Where a chunked KV store keeps its chunks: device (active), host RAM (optionally low-bit), a spill file.

    ChunkStore.add(kv) ─► device tier ──(device_bytes full: oldest first)──► host tier (raw or 8/4-bit)
                          ──(cpu_bytes full)──► disk tier (one spill file) ──(disk_bytes full)──► dropped
    ChunkStore.load(record) ─► the chunk's dense KV on the compute device, from whichever tier holds it

A chunk's KV is one tensor (layers, 2, kv_heads, tokens, head_dim): keys (already rotated) and values. Every
tier change and every load happens under the store's lock, so a question may read while ingestion goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError

TIERS = ("device", "cpu", "disk", "dropped")


@dataclass
class KVTiers:
    """Byte budgets of the tiers a chunked KV store keeps its chunks in; the oldest chunks move down first."""

    device_bytes: int | None = 256 * 2**20
    """Dense chunk KV (and the sink) kept on the model's device: the newest chunks. None = no limit."""
    cpu_bytes: int | None = 2 * 2**30
    """Chunk KV and the per-chunk summary index kept in host RAM; beyond it chunks spill to disk. None = no limit."""
    cpu_bits: int = 0
    """Bits per value of chunks moved off the device: 0 = the model's dtype (lossless), 8 or 4 = quantized
    per (layer, head, token) row with a float32 scale and minimum."""
    disk_bytes: int | None = None
    """Chunk KV kept in the spill file; beyond it the oldest chunks are dropped (their summaries stay).
    0 = no disk tier (the summary index's oldest blocks are then forgotten to stay within `cpu_bytes`);
    None = no limit but the disk's (once it is full the file keeps its size, as if capped there)."""
    spill_dir: str | None = None
    """Where the spill file's private directory is made (removed on close); None = the system temp dir."""

    def __post_init__(self) -> None:
        for name in ("device_bytes", "cpu_bytes", "disk_bytes"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value >= 0):
                raise ConfigError(f"KVTiers.{name} must be an int >= 0 or None, got {value!r}")
        if self.cpu_bits not in (0, 4, 8):
            raise ConfigError(f"KVTiers.cpu_bits must be 0 (lossless), 8 or 4, got {self.cpu_bits!r}")




@dataclass(eq=False, slots=True)
class ChunkRecord:
    """One chunk of the stream: where its KV lives now, its size and the timestamps of its frames."""

    index: int
    tokens: int
    pts_seconds: tuple[float, ...] = ()
    tier: str = "device"
    kv: torch.Tensor | None = field(default=None, repr=False)
    """Device tier: the dense KV (layers, 2, kv_heads, tokens, head_dim)."""
    blob: torch.Tensor | None = field(default=None, repr=False)
    """Host tier: `to_bytes` of the KV."""
    copied: Any = field(default=None, repr=False)
    """A CUDA event the blob's copy from the device is done at (None: done); the host reads the blob after it."""
    offset: int = -1
    """Disk tier: offset of the blob in the spill file."""
    nbytes: int = 0
    """Bytes the chunk takes in its current tier."""
