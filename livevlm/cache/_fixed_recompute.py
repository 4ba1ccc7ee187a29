"""The token policy's partial pass in fixed shapes (`ViTCacheConfig.recompute="static"` / `"graph"`).

    per block l:  change = |x - R_l| / |R_l|;  rows = topk(change, cap);  valid = change[rows] > threshold
                  y = block_l(x[rows]) against the cached K/V   (K/V, R, O stored only where valid)
                  x' = O_l + (x - R_l), with y where valid       (the dynamic pass's rows and values)
    merge every unit; keep the new features of units with a valid row, the cached ones elsewhere

The rows over `threshold` (at most `cap`, the largest) are exactly those the dynamic pass recomputes, so the
features are the same up to rounding (a matmul over more rows may sum in another order); the others are computed
and dropped, the price of shapes that never change: every chunk of a grid reads and writes the same tensors with
no host sync, so on CUDA the pass is captured once as a CUDA graph and replayed (`kernels.cuda_graph`): STC found
its selective recompute slower than a dense encode on a GPU until it did so. The reference state lives in this
object's buffers (one set per grid): a new reference (a restore, the grid's first full pass) is copied in
before its first partial pass instead of `_own`'s copy; later refreshes of the grid (a cut, age, drift, the end
of a backoff) run their full pass straight into the buffers (`refresh`), a second captured graph.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..kernels.cuda_graph import GraphedCall
from ._change import relative_change, row_norms


class FixedRecompute:
    """Partial passes of one grid in fixed shapes, over buffers that hold the reference's state."""

    def __init__(self, runner: Any, layout: Any, cap: int, threshold: float, graph: bool) -> None:
        self.runner, self.layout, self.cap, self.threshold = runner, layout, cap, threshold
        self.x: torch.Tensor | None = None
        self.ref: Any = None
        """The `_Reference` whose tensors are the buffers (a new one is copied in by `adopt`)."""
        self._graphed = GraphedCall(self._run) if graph else None
        # a Qwen tower attends a full pass's windows in one varlen call on CUDA; off it (forced torch kernels,
        # flash-attn) it reads the window bounds on the host, which no capture allows: those refreshes run eagerly
        capturable = getattr(runner, "varlen", True)
        self._graphed_refresh = GraphedCall(self._refresh) if graph and capturable else None
        self.pixels: torch.Tensor | None = None
        self.embed_at_refresh: torch.Tensor | None = None
        self.refresh_norms: torch.Tensor | None = None

    @property
    def captured(self) -> bool:
        return self._graphed is not None and self._graphed.graph is not None

    @property
    def failed(self) -> str | None:
        """Why this grid's graph capture failed (its passes then run eagerly), or None."""
        graphs = (self._graphed, self._graphed_refresh)
        return next((g.failed for g in graphs if g is not None and g.failed is not None), None)

    def adopt(self, ref: Any) -> None:
        """Make `ref`'s state live in the buffers: copied in once per reference (replaces `_own`'s copy)."""
        if ref is self.ref:
            return
        if len(ref.norms) < self.runner.depth:  # a full pass's state: block 0's norms only
            ref.norms = [ref.norms[0], *(row_norms(t) for t in ref.inputs[1:])]
        if self.ref is None:  # the first reference of this grid: the buffers are its state, copied
            ref.inputs = [t.clone() for t in ref.inputs]
            ref.norms = [t.clone() for t in ref.norms]
            ref.outputs = [t.clone() for t in ref.outputs]
            ref.blocks = [
                type(b)(**{f.name: getattr(b, f.name).clone() for f in dataclasses.fields(b)}) for b in ref.blocks
            ]
            ref.merged = ref.merged.clone()
            self.x = torch.empty_like(ref.inputs[0])
        else:  # later ones: copied into the same tensors (a captured graph reads them by address)
            old = self.ref
            for mine, theirs in ((old.inputs, ref.inputs), (old.norms, ref.norms), (old.outputs, ref.outputs)):
                for dst, src in zip(mine, theirs, strict=True):
                    dst.copy_(src)
            for dst_block, src_block in zip(old.blocks, ref.blocks, strict=True):
                for f in dataclasses.fields(dst_block):
                    getattr(dst_block, f.name).copy_(getattr(src_block, f.name))
            old.merged.copy_(ref.merged)
            ref.inputs, ref.norms, ref.outputs = old.inputs, old.norms, old.outputs
            ref.blocks, ref.merged = old.blocks, old.merged
        ref.owned = True
        self.ref = ref

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """One chunk's partial pass from its patch embeddings `x`: (changed (M,) bool in output order, rows kept
        per block); the reference's state is updated in place."""
        assert self.x is not None, "adopt a reference first"
        self.x.copy_(x)
        changed, counts = self._run() if self._graphed is None else self._graphed()
        return changed.clone(), counts.tolist()

    def refresh(self, pixels: torch.Tensor, x0: torch.Tensor) -> Any:
        """A full pass of `pixels` (detection embedding `x0`) written straight into the buffers: the adopted
        reference becomes the new one (its pixels and age are the caller's to set); returns it."""
        ref = self.ref
        assert ref is not None and self.x is not None, "adopt a reference first"
        if self.pixels is None:
            self.pixels = torch.empty_like(pixels)
            self.embed_at_refresh = torch.empty_like(x0)
            self.refresh_norms = torch.empty_like(ref.norms[0])
        self.pixels.copy_(pixels)
        self.x.copy_(x0)
        self._refresh() if self._graphed_refresh is None else self._graphed_refresh()
        ref.embed_at_refresh, ref.refresh_norms = self.embed_at_refresh, self.refresh_norms
        return ref

    def _refresh(self) -> None:
        """What the token cache's full pass records (`_full`), into the buffers: the exact embedding through every
        block, block 0's reference in the detection embedding, each block's norms, keys / values and merge."""
        ref, runner, layout, x0 = self.ref, self.runner, self.layout, self.x
        exact = runner.embed(self.pixels, layout) if hasattr(runner, "detect_embed") else x0
        x, state = runner.full(exact, layout)
        taps = getattr(runner, "taps", ())
        merged = runner.merge(x, layout, None, **({"taps": [state.outputs[i] for i in taps]} if taps else {}))
        for i in range(runner.depth):
            source = x0 if i == 0 else state.inputs[i]
            ref.inputs[i].copy_(source)
            ref.norms[i].copy_(row_norms(source))
            ref.outputs[i].copy_(state.outputs[i])
            for f in dataclasses.fields(ref.blocks[i]):
                getattr(ref.blocks[i], f.name).copy_(getattr(state.blocks[i], f.name))
        self.embed_at_refresh.copy_(x0)  # type: ignore[union-attr]
        self.refresh_norms.copy_(ref.norms[0])  # type: ignore[union-attr]
        ref.merged.copy_(merged)

    def _run(self) -> tuple[torch.Tensor, torch.Tensor]:
        ref, runner, layout = self.ref, self.runner, self.layout
        x = self.x
        touched = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        counts = []
        taps = set(getattr(runner, "taps", ()))
        tapped: dict[int, torch.Tensor] = {}
        for i in range(runner.depth):
            r_in, r_out, norms = ref.inputs[i], ref.outputs[i], ref.norms[i]
            delta = x - r_in
            top = torch.topk(relative_change(delta, norms), self.cap)
            rows, valid = top.indices, top.values > self.threshold
            y = runner.partial(i, x, rows, ref.blocks[i], layout, valid=valid)
            xr = x.index_select(0, rows)
            keep = valid[:, None]
            nxt = r_out + delta  # rows not recomputed: the reference output moved by the input's change
            r_in.index_copy_(0, rows, torch.where(keep, xr, r_in.index_select(0, rows)))
            norms.index_copy_(0, rows, torch.where(valid, row_norms(xr), norms.index_select(0, rows)))
            r_out.index_copy_(0, rows, torch.where(keep, y, r_out.index_select(0, rows)))
            nxt.index_copy_(0, rows, torch.where(keep, y, nxt.index_select(0, rows)))
            touched.index_copy_(0, rows, touched.index_select(0, rows) | valid)
            counts.append(valid.sum())
            x = nxt
            if i in taps:
                tapped[i] = x
        units = touched.view(-1, runner.merge_unit).any(dim=1)  # internal slot order
        places = layout.unit_order  # (units,) output row of each slot, or (units, rows) (a SigLIP frame: one unit)
        flags = units.view(-1, *([1] * (places.dim() - 1))).expand(places.shape)
        changed = torch.zeros(ref.merged.shape[0], dtype=torch.bool, device=x.device).index_put_((places,), flags)
        if tapped:
            merged = runner.merge(x, layout, None, taps=[tapped[i] for i in sorted(taps)])
        else:
            merged = runner.merge(x, layout, None)
        ref.merged.copy_(torch.where(changed[:, None], merged, ref.merged))
        return changed, torch.stack(counts)
