"""The selecting policies' gather steps (`select.py`): cut layers to one token count, rank chunks within a span,
pool many chunks at once, run a question's kernels ahead of it. Plain tensor work, no store and no model."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..kernels.pool import pool_tokens
from ..kernels.quant import from_bytes, to_bytes


def equal_lengths(per_layer: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
    """Cut every layer's parts to the shortest layer's token count (only differs if a chunk vanished)."""
    lengths = [sum(int(p.shape[2]) for p in parts) for parts in per_layer]
    target = min(lengths)
    if all(n == target for n in lengths):
        return per_layer
    out = []
    for parts in per_layer:
        kept, left = [], target
        for p in parts:
            if left > 0:
                kept.append(p[:, :, :left])
                left -= min(left, int(p.shape[2]))
        out.append(kept)
    return out


def ranked(
    scores: torch.Tensor | None, forgotten: int, count: int, span: tuple[int, int] | None = None
) -> list[int]:
    """The `count` best-scored chunks, best first, among those that still have an index row (from `forgotten`
    on) and lie in `span`; filtered and cut as a tensor, so a long stream costs no Python loop per chunk."""
    if scores is None:
        return []
    if span is not None:
        lo = max(span[0], forgotten)
        return (scores[lo : span[1]].argsort(descending=True) + lo)[:count].tolist()
    order = scores.argsort(descending=True)
    if forgotten:
        order = order[order >= forgotten]
    return order[:count].tolist()


def pool_all(kvs: dict[int, torch.Tensor | None], factor: int) -> dict[int, torch.Tensor]:
    """`pool_tokens` of many chunks, batched by token count (one op per distinct chunk size)."""
    by_size: dict[int, list[int]] = {}
    for i, kv in kvs.items():
        if kv is not None:
            by_size.setdefault(int(kv.shape[3]), []).append(i)
    out: dict[int, torch.Tensor] = {}
    for members in by_size.values():
        pooled = pool_tokens(torch.stack([kvs[i] for i in members]), factor)  # type: ignore[misc]
        out.update(zip(members, pooled.unbind(0)))
    return out


def warm_answer_kernels(score: Callable[[], object], kv: torch.Tensor | None, pool: int, bits: int) -> tuple[str, ...]:
    """Run once what a question's view runs (`score`: chunk relevance; pooling by `pool`; dequantisation of
    `bits`-bit offloaded chunks) on a stored chunk `kv`, results dropped, so Triton compiles those kernels now and
    not at the first question. At the Qwen2.5-VL-7B shape on an H200 a first question took 436 ms against ~23 ms
    uncompressed (`gpu-cuda.json`), likely the pooling kernel's compile: the benchmark's warm-up, 4 chunks, had
    pooled none. Returns what ran."""
    score()
    warmed = ["relevance"]
    if kv is not None and pool > 1:
        pool_all({0: kv}, pool)
        warmed.append("pool")
    if kv is not None and bits:
        from_bytes(to_bytes(kv, bits), kv.shape, kv.dtype, bits, kv.device)
        warmed.append("quant")
    return tuple(warmed)
