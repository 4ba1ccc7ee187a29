"""The selecting policies' gather steps (`select.py`): cut layers to one token count, rank chunks within a span,
pool many chunks at once. Plain tensor work, no store and no model."""

from __future__ import annotations

import torch

from ..kernels.pool import pool_tokens


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
