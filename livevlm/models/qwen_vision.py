"""The Qwen2-VL / Qwen2.5-VL vision tower run block by block in our own loop, over the tower's own modules.

    pixels ─► embed (patch_embed, window permutation) ─► x0 ─► block 0 ─► ... ─► block L-1 ─► merge ─► (M, D)
    full(x0)            every token through every block: the tower's own forward, op for op (bit-exact on
                        CPU); also returns each block's input and rotated K / V, the state a feature cache keeps
    partial(l, x, idx)  block l for the rows `idx` only: their Q/K/V, attention rows over the whole segment
                        (frame or window) with the cached K/V of the other tokens (`kernels.sparse_row_attention`:
                        each row reads only its segment's keys), proj and MLP

Tokens live in the tower's internal order: Qwen2.5-VL permutes 2x2 merge units by attention window (and
un-permutes after the merger); Qwen2-VL keeps the processor's merge-block order. Nothing here is patched:
the tower's submodules (norms, qkv, proj, mlp, merger) and its own attention dispatch are called directly.

Partial passes multiply few rows by every weight matrix of a block; they run the block linears through
`livevlm.kernels.RowLinears` ("packed": a bf16 tower's linears were packed at load, `kernels.packed_linear`,
and run as they are; "onednn": oneDNN on each module's own fp32 weight, no packed copy kept; else the module
itself). Full passes always use the modules themselves, so they stay bit-exact.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import torch

from ..kernels.linear import RowLinears
from ..kernels.packed_linear import is_packed, pack_linears
from ..kernels.sparse_attention import sparse_row_attention
from ..kernels.varlen_attention import VARLEN, varlen_attention, vision_choice


def patch_linear(conv: torch.nn.Conv3d) -> torch.nn.Module:
    """The patch conv (kernel == stride) as a linear over flattened (C, T, P, P) patches, packed like the tower's
    linears where those are (`kernels.packed_linear`), else over a view of the conv's own weight."""
    weight = conv.weight.detach().reshape(conv.out_channels, -1)
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=conv.bias is not None, device="meta")
    linear.weight = torch.nn.Parameter(weight, requires_grad=False)
    if conv.bias is not None:
        linear.bias = torch.nn.Parameter(conv.bias.detach(), requires_grad=False)
    holder = torch.nn.Sequential(linear)
    pack_linears(holder, release_pages=False)  # the conv still reads its weight: its pages stay
    return holder[0]


@dataclass(frozen=True)
class VisionLayout:
    """Per-grid constants of one temporal patch: rope tables, attention segments, window order."""

    grid: tuple[int, int, int]
    cos: torch.Tensor
    """(N, head_dim) rope cosines in internal token order."""
    sin: torch.Tensor
    cu_seqlens: tuple[torch.Tensor, ...]
    """Per block: int32 segment bounds (the whole frame, or Qwen2.5-VL's attention windows)."""
    segment_ids: tuple[torch.Tensor | None, ...]
    """Per block: (N,) segment of each token, None when the block attends over one segment."""
    unit_order: torch.Tensor
    """(M,) merged-token index (output order) of each internal merge-unit slot."""
    masks: tuple[torch.Tensor | None, ...]
    """Per block: (N, N) bool, True where two tokens share a segment; None for one segment (read by
    `received_attention`; partial passes use `cu_seqlens`)."""
    pos_embeds: torch.Tensor | None = None
    """(N, D) learned position embeddings interpolated onto the grid (Qwen3-VL), added to the patch embeddings."""
    longest: tuple[int, ...] = ()
    """Per block: the longest segment's length (read once per grid, so varlen attention never syncs for it)."""

    @property
    def num_tokens(self) -> int:
        return int(self.cos.shape[0])


@dataclass
class BlockState:
    """One block's cached per-token keys / values; `partial` updates the rows it recomputes in place."""

    keys: torch.Tensor
    """(H, N, d) rotated keys."""
    values: torch.Tensor


@dataclass
class FullPass:
    """What a full pass leaves behind: each block's input, output and attention state (views of the pass's own
    tensors: a caller that updates them in place copies them first)."""

    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]
    blocks: list[BlockState]


def keep_cached(
    state: BlockState, rows: torch.Tensor, valid: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, n, d) fresh keys / values of `rows`, with the cached ones where `valid` is False."""
    mask = valid[None, :, None]
    return (torch.where(mask, k, state.keys.index_select(1, rows)),
            torch.where(mask, v, state.values.index_select(1, rows)))  # fmt: skip


class QwenVisionRunner:
    """Runs a Qwen2/2.5-VL vision tower (`model.model.visual`) block by block; holds no per-stream state."""

    def __init__(self, visual: Any, fast_linear: bool = True) -> None:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        from transformers.utils.generic import is_flash_attention_requested

        self.visual = visual
        self.blocks = visual.blocks
        self.depth = len(self.blocks)
        self.merge_unit = int(visual.spatial_merge_size) ** 2
        self.windowed = hasattr(visual, "fullatt_block_indexes")
        family = importlib.import_module(type(visual).__module__)
        self._rope = family.apply_rotary_pos_emb_vision  # the tower's own rope function
        cfg = visual.config
        self._flash = is_flash_attention_requested(cfg)
        self._attention = ALL_ATTENTION_FUNCTIONS.get_interface(
            cfg._attn_implementation, family.eager_attention_forward
        )
        weight = visual.patch_embed.proj.weight
        self.linear = RowLinears(weight.device, weight.dtype, enabled=fast_linear, packed=is_packed(visual))
        self._patch_linear: torch.nn.Module | None = None
        self._device = weight.device
        self._layouts: dict[tuple[int, int, int], VisionLayout] = {}

    @property
    def varlen(self) -> bool:
        """Whether full passes attend with `varlen_attention` (`kernels.vision_choice`, read per call as every op's
        backend is); flash-attn's own implementation is varlen already."""
        return not self._flash and vision_choice(self._device).backend == VARLEN

    block_state = BlockState
    """`BlockState(keys=, values=)`: what a restored ViT cache rebuilds its per-block state with."""

    def layout(self, grid: tuple[int, int, int]) -> VisionLayout:
        """Rope tables, segments and window order for a (1, gh, gw) grid, as the tower's forward builds them."""
        from transformers.vision_utils import (
            get_vision_cu_seqlens,
            get_vision_position_ids,
            get_vision_window_index,
        )

        v = self.visual
        device = v.patch_embed.proj.weight.device
        grid_t = torch.tensor([grid], dtype=torch.long, device=device)
        position_ids = get_vision_position_ids(grid_t, v.spatial_merge_size)
        n = position_ids.shape[0]
        cos, sin = v.rotary_pos_emb(torch.empty(0, device=device), position_ids)
        full_cu = get_vision_cu_seqlens(grid_t)
        cu = [full_cu] * self.depth
        seg: list[torch.Tensor | None] = [None] * self.depth
        order = torch.arange(n // self.merge_unit, device=device)
        if self.windowed:
            order, win_cu = get_vision_window_index(grid_t, v.spatial_merge_size, v.window_size, v.patch_size)
            order = order.to(device)
            cos, sin = (self._permute(t, order) for t in (cos, sin))
            win_seg = torch.repeat_interleave(
                torch.arange(len(win_cu) - 1, device=device), (win_cu[1:] - win_cu[:-1]).long()
            )
            full = set(v.fullatt_block_indexes)
            cu = [full_cu if i in full else win_cu.to(device) for i in range(self.depth)]
            seg = [None if i in full or len(win_cu) == 2 else win_seg for i in range(self.depth)]
        win_mask = next((m[:, None] == m[None, :] for m in seg if m is not None), None)
        masks = tuple(None if m is None else win_mask for m in seg)
        lengths = {id(c): int((c[1:] - c[:-1]).max()) for c in cu}
        longest = tuple(lengths[id(c)] for c in cu)
        return VisionLayout(tuple(grid), cos, sin, tuple(cu), tuple(seg), order, masks, longest=longest)

    def _permute(self, t: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """Reorder rows by merge unit (what the tower's `permute_input_for_window_attn` does)."""
        n = t.shape[0]
        return t.reshape(n // self.merge_unit, self.merge_unit, -1)[order].reshape(n, -1)

    def embed(self, pixels: torch.Tensor, layout: VisionLayout) -> torch.Tensor:
        """(N, 3*tp*p*p) HF-layout patches -> (N, D) block-0 inputs in internal order."""
        x = self.visual.patch_embed(pixels.type(self.visual.dtype))
        return self._permute(x, layout.unit_order) if self.windowed else x

    def detect_embed(self, pixels: torch.Tensor, layout: VisionLayout) -> torch.Tensor:
        """`embed` with the patch projection as one matmul over the flattened patches (the conv's kernel is its
        stride, so the same weights; the sums round differently, ~1 ulp): what a feature cache measures change
        with and feeds partial passes (a 3-D conv over every patch cost ~7 % of a static chunk's partial pass at
        the 2B shape); full passes keep the tower's own `embed`."""
        proj = self.visual.patch_embed.proj
        if self._patch_linear is None:
            self._patch_linear = patch_linear(proj)
        x = self._patch_linear(pixels.type(proj.weight.dtype))
        return self._permute(x, layout.unit_order) if self.windowed else x

    def _qkv(self, blk: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, linear: Any = None):
        """norm1 + qkv + rope for rows `x`: q, k, v of shape (n, H, d) (the attention module's own steps)."""
        attn = blk.attn
        n = x.shape[0]
        h = blk.norm1(x)
        qkv = attn.qkv(h) if linear is None else linear(attn.qkv, h)
        q, k, v = qkv.reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        q, k = self._rope(q, k, cos, sin)
        return q, k, v

    def _finish(self, blk: Any, x: torch.Tensor, attn_out: torch.Tensor, linear: Any = None) -> torch.Tensor:
        """proj, residual, norm2 + MLP, residual: the rest of the block for rows `x`."""
        a = attn_out.reshape(x.shape[0], -1).contiguous()
        x = x + (blk.attn.proj(a) if linear is None else linear(blk.attn.proj, a))
        return x + (blk.mlp(blk.norm2(x)) if linear is None else self._mlp(blk.mlp, blk.norm2(x), linear))

    @staticmethod
    def _mlp(mlp: Any, x: torch.Tensor, linear: Any) -> torch.Tensor:
        """The block MLP's own steps with `linear` for its matmuls (Qwen2-VL fc1/fc2, Qwen2.5-VL gated)."""
        if hasattr(mlp, "fc1"):
            return linear(mlp.fc2, mlp.act(linear(mlp.fc1, x)))
        if hasattr(mlp, "linear_fc1"):
            return linear(mlp.linear_fc2, mlp.act_fn(linear(mlp.linear_fc1, x)))
        if hasattr(mlp, "gate_proj"):
            return linear(mlp.down_proj, mlp.act_fn(linear(mlp.gate_proj, x)) * linear(mlp.up_proj, x))
        return mlp(x)

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """The dense encode of one temporal patch through our loop: (M, D) merged tokens in output order, what the
        tower's forward gives (its layout built once per grid, no state kept); Qwen3-VL's DeepStack features
        (the outputs of blocks `taps` through their mergers) side by side with the main ones."""
        layout = self._layouts.get(tuple(grid))
        if layout is None:
            if len(self._layouts) >= 8:  # a stream changes size rarely; a bound keeps odd streams from piling up
                self._layouts.clear()
            layout = self._layouts[tuple(grid)] = self.layout(grid)
        x = self.embed(pixels, layout)
        taps = getattr(self, "taps", ())
        tapped: dict[int, torch.Tensor] = {}
        for i, blk in enumerate(self.blocks):
            x = self._block(i, blk, x, layout)[0]
            if i in taps:
                tapped[i] = x
        if taps:
            return self.merge(x, layout, None, taps=[tapped[i] for i in taps])
        return self.merge(x, layout)

    def _block(self, i: int, blk: Any, x: torch.Tensor, layout: VisionLayout) -> tuple[torch.Tensor, BlockState]:
        """Block `i` for every token: its output and its rotated keys / values as (H, N, d) views."""
        q, k, v = self._qkv(blk, x, layout.cos, layout.sin)
        q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # (1, H, N, d)
        longest = layout.longest[i] if layout.longest else None
        out = self._attend_segments(blk.attn, q, k, v, layout.cu_seqlens[i], longest)
        return self._finish(blk, x, out), BlockState(k[0], v[0])

    def full(self, x: torch.Tensor, layout: VisionLayout) -> tuple[torch.Tensor, FullPass]:
        """Every token through every block, exactly as the tower's forward; returns final hidden + state.

        The state holds this pass's own tensors, nothing copied (a pass whose state is dropped costs what the
        tower's forward does): `inputs[l + 1]` is `outputs[l]`, and keys / values are (H, N, d) views of the
        block's rotated keys and qkv output. A caller that updates them in place copies them first."""
        state = FullPass([], [], [])
        for i, blk in enumerate(self.blocks):
            state.inputs.append(x)
            x, block_state = self._block(i, blk, x, layout)
            state.blocks.append(block_state)
            state.outputs.append(x)
        return x, state

    def _attend_segments(self, attn: Any, q, k, v, cu: torch.Tensor, longest: int | None = None) -> torch.Tensor:
        """Attention within each segment of `cu`: `varlen_attention` on CUDA (`self.varlen`), else the attention
        module's own dispatch (varlen flash over `cu`, or one call per segment as transformers' SDPA path)."""
        if self.varlen:
            return varlen_attention(q, k, v, cu, longest, attn.scaling)
        common = {"attention_mask": None, "scaling": attn.scaling, "dropout": 0.0, "is_causal": False}
        if self._flash:
            longest = int((cu[1:] - cu[:-1]).max()) if longest is None else longest
            out, _ = self._attention(
                attn,
                q,
                k,
                v,
                cu_seq_lens_q=cu,
                cu_seq_lens_k=cu,
                max_length_q=longest,
                max_length_k=longest,
                **common,
            )
            return out
        lengths = (cu[1:] - cu[:-1]).tolist()
        splits = [torch.split(t, lengths, dim=2) for t in (q, k, v)]
        return torch.cat([self._attention(attn, *qkv, **common)[0] for qkv in zip(*splits)], dim=1)

    def partial(
        self,
        index: int,
        x: torch.Tensor,
        rows: torch.Tensor,
        state: BlockState,
        layout: VisionLayout,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Block `index` for tokens `rows` of `x`, against the cached `state` (whose rows it updates).

        Each recomputed query attends over its whole segment (frame or window): fresh K/V for `rows`, the
        cached K/V (from the last time each was computed) for every other token. Returns (len(rows), D).
        `valid` ((len(rows),) bool): only those rows' fresh K/V are stored, the others' outputs are computed
        against the cache and meant to be dropped (a fixed-shape pass, `cache._fixed_recompute`).
        """
        blk = self.blocks[index]
        xr = x.index_select(0, rows)  # (index_select: a few times faster than x[rows] for a row gather)
        cos, sin = layout.cos.index_select(0, rows), layout.sin.index_select(0, rows)
        q, k, v = self._qkv(blk, xr, cos, sin, self.linear)
        k, v = k.transpose(0, 1), v.transpose(0, 1)
        if valid is not None:
            k, v = keep_cached(state, rows, valid, k, v)
        state.keys.index_copy_(1, rows, k)
        state.values.index_copy_(1, rows, v)
        attn = sparse_row_attention(
            q.transpose(0, 1), state.keys, state.values, rows, layout.cu_seqlens[index], blk.attn.scaling,
            sync_free=valid is not None,
        )  # (H, n, d): each row over its own segment's keys only (a fixed pass: never a host sync)
        return self._finish(blk, xr, attn.transpose(0, 1), self.linear)

    def merge(self, x: torch.Tensor, layout: VisionLayout, units: torch.Tensor | None = None) -> torch.Tensor:
        """The merger over final hidden states: all merge units in output order (units=None), or the
        internal unit slots `units` (rows in the order given; their output places are unit_order[units])."""
        d = x.shape[-1]
        if units is None:
            merged = self.visual.merger(x)
            return merged[torch.argsort(layout.unit_order)] if self.windowed else merged
        rows = x.reshape(-1, self.merge_unit, d)[units].reshape(-1, d)
        return self.visual.merger(rows)

    def received_attention(self, state: FullPass, layout: VisionLayout, layers: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
        """Per block in `layers`: (M,) attention each merged token receives, in output order.

        From the full pass's block inputs and keys: the block's own queries (norm1, qkv, rope) against its
        keys, softmax within each attention segment, averaged over heads and queries, summed over the
        patches of each merge unit. Read-only: the features of the pass are untouched."""
        out = []
        for index in layers:
            blk = self.blocks[index]
            q, _, _ = self._qkv(blk, state.inputs[index], layout.cos, layout.sin)
            keys = state.blocks[index].keys  # (H, N, d)
            logits = (q.transpose(0, 1).float() @ keys.float().transpose(1, 2)) * blk.attn.scaling
            mask = layout.masks[index]
            if mask is not None:
                logits = logits.masked_fill(~mask, float("-inf"))
            received = torch.softmax(logits, dim=-1).mean(0).mean(0)  # (N,)
            units = received.reshape(-1, self.merge_unit).sum(1)  # internal unit slots
            out.append(units[torch.argsort(layout.unit_order)] if self.windowed else units)
        return tuple(out)


class Qwen3VisionRunner(QwenVisionRunner):
    """Qwen3-VL's tower: learned position embeddings interpolated onto the grid (added after the patch embed),
    no attention windows, and DeepStack mergers over the outputs of blocks `taps`, packed after the main merge
    as (M, D * (1 + len(taps))), the layout the Qwen3-VL adapter gives a chunk's embeds."""

    def __init__(self, visual: Any, fast_linear: bool = True) -> None:
        super().__init__(visual, fast_linear)
        self.taps = tuple(int(i) for i in visual.deepstack_visual_indexes)

    def layout(self, grid: tuple[int, int, int]) -> VisionLayout:
        from dataclasses import replace

        from transformers.vision_utils import get_vision_interpolation_indices_and_weights

        v = self.visual
        device = v.patch_embed.proj.weight.device
        indices, weights = get_vision_interpolation_indices_and_weights(
            torch.tensor([grid], dtype=torch.long, device=device),
            num_grid_per_side=v.num_grid_per_side,
            mode=v.interpolation_mode,
            align_corners=v.interpolation_align_corners,
            spatial_merge_size=v.config.spatial_merge_size,
        )
        pos = (v.pos_embed(indices) * weights[:, :, None]).sum(1)  # the tower's own expression
        return replace(super().layout(grid), pos_embeds=pos)

    def embed(self, pixels: torch.Tensor, layout: VisionLayout) -> torch.Tensor:
        x = self.visual.patch_embed(pixels.type(self.visual.dtype))
        return x + layout.pos_embeds.to(x.dtype)

    def detect_embed(self, pixels: torch.Tensor, layout: VisionLayout) -> torch.Tensor:
        x = super().detect_embed(pixels, layout)  # Qwen3-VL has no windows: no permutation
        return x + layout.pos_embeds.to(x.dtype)

    def merge(
        self,
        x: torch.Tensor,
        layout: VisionLayout,
        units: torch.Tensor | None = None,
        taps: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The main merger over `x` and each DeepStack merger over its block's output (`taps`), side by side."""
        if taps is None or len(taps) != len(self.taps):
            raise ValueError(f"Qwen3-VL's merge needs the outputs of blocks {self.taps} (DeepStack)")
        mergers = [self.visual.merger, *self.visual.deepstack_merger_list]
        d = x.shape[-1]
        parts = []
        for merger, hidden in zip(mergers, [x, *taps], strict=True):
            rows = hidden if units is None else hidden.reshape(-1, self.merge_unit, d)[units].reshape(-1, d)
            parts.append(merger(rows))
        return torch.cat(parts, dim=-1)
