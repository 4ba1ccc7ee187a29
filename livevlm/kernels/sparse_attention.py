"""Sparse-row attention for the ViT cache's partial recompute: only the recomputed rows are queries, each over the
keys of its own segment (the frame, or a Qwen2.5-VL attention window).

Backends (`sparse_row_choice`): on CUDA one SDPA over the frame's keys with a (rows, N) segment mask built on the
device (no host sync; measured 2.4x the Triton kernel over windows and 2.9x over a whole frame at the Qwen2.5-VL-7B
shape on an H200, `benchmarks/results/kernels-*-cuda.json`), the Triton kernel for masks past `MASK_LIMIT`
entries or when forced (`LIVEVLM_KERNELS=triton`); elsewhere the torch reference (one SDPA per segment over
that segment's keys alone: no wasted products on a CPU).

Segments are contiguous token ranges given as varlen bounds `cu_seqlens` = [0, ..., N] (the vision layout's
per-block bounds): row r attends to keys [cu[s], cu[s+1]) for the segment s holding token r.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._backend import Choice, forced, triton_choice, triton_version, use_triton

SDPA_MASK = "sdpa"
MASK_LIMIT = 1 << 24
"""Most (rows x keys) mask entries the CUDA path builds (16 MB of bools); a larger call takes the Triton kernel."""


def check_shapes(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    rows: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
) -> None:
    """ValueError naming the shapes when the arguments do not fit (H, n, d) x (H, N, d), (n,) rows, (S+1,) bounds."""
    shapes = f"q {tuple(q.shape)}, keys {tuple(keys.shape)}, values {tuple(values.shape)}, rows {tuple(rows.shape)}"
    if q.dim() != 3 or keys.dim() != 3 or keys.shape != values.shape:
        raise ValueError(f"sparse_row_attention needs q (H, n, d), keys and values (H, N, d); got {shapes}")
    if q.shape[0] != keys.shape[0] or q.shape[2] != keys.shape[2]:
        raise ValueError(f"sparse_row_attention: q and keys differ in heads or head dim; got {shapes}")
    if rows.shape != (q.shape[1],) or rows.dtype.is_floating_point:
        raise ValueError(
            f"sparse_row_attention needs one integer row index per query; got {shapes}, {rows.dtype}"
        )
    if q.dtype != keys.dtype or keys.dtype != values.dtype:
        raise ValueError(f"sparse_row_attention needs one dtype, got {q.dtype}, {keys.dtype}, {values.dtype}")
    if cu_seqlens is not None and (cu_seqlens.dim() != 1 or len(cu_seqlens) < 2):
        raise ValueError(
            f"sparse_row_attention needs cu_seqlens (S+1,) with S >= 1, got {tuple(cu_seqlens.shape)}"
        )


def sparse_row_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    rows: torch.Tensor,
    cu_seqlens: torch.Tensor | None = None,
    scale: float | None = None,
    sync_free: bool = False,
) -> torch.Tensor:
    """(H, n, d) queries of tokens `rows` (n,) over (H, N, d) keys / values, each only within its segment of
    `cu_seqlens` ((S+1,) ints from 0 to N; None: one segment) -> (H, n, d) in q's dtype; rows in any order.
    `sync_free`: never the torch reference, which reads the bounds on the host (a pass captured as a CUDA graph
    must not; the masked SDPA takes its place, on any device)."""
    check_shapes(q, keys, values, rows, cu_seqlens)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    choice = sparse_row_choice(q.device).backend
    if sync_free and choice == "torch":  # the torch reference reads the segment bounds on the host
        choice = SDPA_MASK
    if choice == SDPA_MASK and q.shape[1] * keys.shape[1] > MASK_LIMIT and use_triton(q.device):
        choice = "triton"
    if choice == SDPA_MASK:
        return sparse_row_attention_masked(q, keys, values, rows, cu_seqlens, scale)
    if choice == "triton":
        from ._triton_sparse_attention import sparse_row_attention_triton

        return sparse_row_attention_triton(q, keys, values, rows, cu_seqlens, scale)
    return sparse_row_attention_torch(q, keys, values, rows, cu_seqlens, scale)


def sparse_row_choice(device: torch.device | str) -> Choice:
    """Which backend `sparse_row_attention` runs for tensors on `device`, and why (op "sparse_attention")."""
    device = torch.device(device)
    mode = forced()
    if mode == "torch":
        return Choice("torch", "forced by LIVEVLM_KERNELS=torch")
    if mode == "triton":
        return triton_choice(device)  # (raises where triton cannot run)
    if device.type == "cuda":
        why = "cuda: one SDPA with the segment mask, no host sync (faster than the Triton kernel on an H200"
        return Choice(SDPA_MASK, why + (", which takes masks past 16M entries)" if triton_version() else ")"))
    return Choice("torch", f"tensors on {device.type}: one SDPA per segment over its own keys")


def sparse_row_attention_masked(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    rows: torch.Tensor,
    cu_seqlens: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """The CUDA path: one SDPA of the rows over all N keys, masked to each row's own segment (one segment: no
    mask, the reference's own call). The bounds never leave the device."""
    check_shapes(q, keys, values, rows, cu_seqlens)
    if not q.shape[1]:
        return torch.empty_like(q)
    if cu_seqlens is None or cu_seqlens.numel() == 2:  # one segment: every row over every key
        return _sdpa(q, keys, values, 0, int(keys.shape[1]), scale)
    cu = cu_seqlens.to(keys.device, torch.int64)
    key_seg = torch.searchsorted(cu, torch.arange(keys.shape[1], device=keys.device), right=True)
    row_seg = key_seg.index_select(0, rows.to(keys.device, torch.int64))
    mask = row_seg[:, None] == key_seg[None, :]  # (n, N)
    out = F.scaled_dot_product_attention(q[None], keys[None], values[None], attn_mask=mask[None, None], scale=scale)
    return out[0]


def sparse_row_attention_torch(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    rows: torch.Tensor,
    cu_seqlens: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """The torch reference: rows grouped by segment, one unmasked SDPA per segment over that segment's keys only
    (one segment: a single SDPA over all keys, the same call the dense path made)."""
    check_shapes(q, keys, values, rows, cu_seqlens)
    total = int(keys.shape[1])
    bounds = [0, total] if cu_seqlens is None else cu_seqlens.tolist()
    if bounds[0] != 0 or bounds[-1] != total:
        raise ValueError(f"cu_seqlens must run from 0 to N={total}, got {bounds[0]} .. {bounds[-1]}")
    if len(bounds) == 2 or not q.shape[1]:
        return _sdpa(q, keys, values, 0, total, scale)
    seg = torch.searchsorted(cu_seqlens.to(rows.device, torch.int32), rows.to(torch.int32), right=True) - 1
    order = torch.argsort(seg, stable=True)  # rows grouped by segment (already so when rows are sorted)
    segs, counts = torch.unique_consecutive(seg[order], return_counts=True)
    grouped = q[:, order]
    outs, at = [], 0
    for s, c in zip(segs.tolist(), counts.tolist(), strict=True):
        outs.append(_sdpa(grouped[:, at : at + c], keys, values, bounds[s], bounds[s + 1], scale))
        at += c
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    out[:, order] = torch.cat(outs, dim=1)
    return out


def _sdpa(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lo: int, hi: int, scale: float | None
) -> torch.Tensor:
    """(H, n, d) queries over keys / values [lo, hi): one unmasked SDPA."""
    k, v = keys[None, :, lo:hi], values[None, :, lo:hi]
    return F.scaled_dot_product_attention(q[None], k, v, scale=scale)[0]
