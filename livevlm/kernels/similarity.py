"""Similarity ops the pruners share: unit rows, deterministic top-k, a spatial dither order, merging dropped rows.

Torch reference implementations (the only backend so far); `livevlm.kernels.backend()` reports it."""

from __future__ import annotations

import torch


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm, in float32 (cosine similarity becomes a dot product)."""
    x = x.to(torch.float32, copy=True)  # a fresh copy: the in-place division never touches the caller's rows
    return x.div_(x.norm(dim=-1, keepdim=True).clamp_min_(1e-12))


def top_k(score: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the `k` highest scores, ties to the lower index, returned in ascending index order."""
    k = max(0, min(int(k), score.numel()))
    order = torch.sort(-score.float(), stable=True).indices[:k]
    return order.sort().values


def dither_rank(h: int, w: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(h*w,) a Bayer ordered-dither value per grid cell: the k lowest are spread evenly over the grid.

    For k = N/4 on an even grid they are exactly one token per 2x2 block (a stride-2 subsample)."""
    m = torch.zeros(1, 1, dtype=torch.long)
    while m.shape[0] < max(h, w):
        m = torch.cat([torch.cat([4 * m, 4 * m + 2], 1), torch.cat([4 * m + 3, 4 * m + 1], 1)], 0)
    return m[:h, :w].reshape(-1).to(device)


def merge_dropped(
    embeds: torch.Tensor, keep: torch.Tensor, mode: str, grid_hw: tuple[int, int]
) -> tuple[torch.Tensor, int]:
    """Kept rows with every dropped row averaged into its nearest (`mode`) kept row; (rows, merged count).

    nearest: the spatially nearest kept token on the (h, w) grid; similar: the most similar (cosine).
    Ties go to the lower index. The average is unweighted over the kept token and those merged into it."""
    n = embeds.shape[0]
    dropped = torch.ones(n, dtype=torch.bool, device=embeds.device)
    dropped[keep] = False
    drop = dropped.nonzero().squeeze(1)
    if keep.numel() == 0 or drop.numel() == 0:
        return embeds[keep], 0
    if mode == "nearest":
        idx = torch.arange(n, device=embeds.device)
        ij = torch.stack([idx // grid_hw[1], idx % grid_hw[1]], 1)
        target = ((ij[drop, None, :] - ij[None, keep, :]) ** 2).sum(-1).argmin(dim=1)  # exact integers
    elif mode == "similar":
        u = unit_rows(embeds)
        target = (u[drop] @ u[keep].T).argmax(dim=1)
    else:
        raise ValueError(f"unknown merge mode {mode!r}")
    total = embeds[keep].float().index_add(0, target, embeds[drop].float())
    count = torch.ones(keep.numel(), device=embeds.device).index_add(
        0, target, torch.ones(drop.numel(), device=embeds.device)
    )
    return (total / count[:, None]).to(embeds.dtype), int(drop.numel())
