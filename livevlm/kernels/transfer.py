"""Copies between host and device that do not make the host wait for the device.

On a GPU a plain `.to("cuda")` from pageable memory and a `.cpu()` / `.item()` of a device tensor both
synchronise the stream: the host waits for every kernel queued before, and cannot prepare the next chunk
meanwhile. `upload` queues the copy from pinned memory; `download` queues it into pinned memory and hands back an
event to read it after. Elsewhere both are plain copies.
"""

from __future__ import annotations

from typing import Any

import torch


def upload(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`tensor` (host memory) on `device` without making the host wait for the device.

    A plain `.to("cuda")` from pageable memory synchronises the stream after the copy: the host waits for every
    kernel queued before it (the last chunk's prefill) and cannot prepare the next chunk meanwhile. Through
    pinned memory the copy is queued like a kernel; PyTorch's pinned allocator keeps the block until the copy is
    done. Elsewhere (cpu, or a tensor already on `device`) this is `.to(device)`."""
    if torch.device(device).type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


IN_FLIGHT = 8
"""Downloads a holder keeps unread at most: beyond, it reads the oldest (by then long done), so pinned memory
stays bounded however long the stream runs."""


def download(tensor: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """`tensor`'s values in host memory without making the host wait: (the host tensor, a CUDA event its copy is
    done at, or None when it is done). Read the host tensor only after `landed`: an event recorded chunks ago is
    long past, so the read does not wait for the work queued since (a plain `.cpu()` would). The host tensor is
    pinned; PyTorch caches pinned blocks in powers of two, so a holder keeps a copy (`landed`), not it."""
    if tensor.device.type != "cuda":
        return tensor.detach().to("cpu", copy=True), None
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor.detach(), non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event


def done(copied: Any) -> bool:
    """Whether a `download`'s copy is done, without waiting."""
    return copied is None or bool(copied.query())


def landed(host: torch.Tensor, copied: Any) -> torch.Tensor:
    """A `download`'s values once its copy is done (waiting for it if not), in pageable memory of their own."""
    if copied is None:
        return host
    copied.synchronize()
    return torch.empty(host.shape, dtype=host.dtype).copy_(host)
