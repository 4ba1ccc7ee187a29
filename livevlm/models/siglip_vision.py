"""A SigLIP-style vision tower (LLaVA-OneVision's SigLIP, SmolVLM's Idefics3 ViT) run block by block.

    pixels (1, 3, H, W) ─► embeddings (patches + learned positions) ─► x0 (N, D) ─► layer 0 ─► ... ─► layer L-1
        ─► [post_layernorm] ─► head (the family's projector / pooling / pixel shuffle) ─► (M, D_llm)
    full(x0)            every token through every layer, op for op as the layer's own forward (the tower's
                        attention dispatch, no mask: one frame is one segment); keeps each layer's input, K, V
    partial(l, x, idx)  layer l for the rows `idx` only: their Q/K/V, attention over every token of the frame
                        (fresh K/V for `idx`, cached K/V for the others), out_proj and MLP

Positions are learned embeddings added before the first layer, so the layers themselves carry no rope. The
head mixes tokens across the frame (bilinear pooling, pixel shuffle), so the whole frame is one merge unit:
a chunk with any recomputed token re-runs the head (cheap next to the layers) and marks every output changed.
Nothing is patched: the layers' own submodules (norms, q/k/v/out projections, MLP) are called directly.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..kernels.linear import RowLinears
from ..kernels.packed_linear import is_packed
from ..kernels.sparse_attention import sparse_row_attention
from .qwen_vision import BlockState, FullPass, keep_cached


@dataclass(frozen=True)
class FrameLayout:
    """Per-grid constants of one frame: the merge-unit table (one unit: the whole frame)."""

    grid: tuple[int, int, int]
    unit_order: torch.Tensor
    """(1, M): the output rows of the single merge unit."""


class SiglipVisionRunner:
    """Runs the first `depth` layers of a SigLIP-style tower, then `head`; holds no per-stream state.

    `patches` tokens per frame (fixed: these families resize every frame to one size), `outputs` rows out of
    `head`; `post_norm` applies the tower's post_layernorm before the head (SmolVLM; LLaVA-OV reads the last
    layer's raw output)."""

    def __init__(
        self,
        tower: Any,
        depth: int,
        head: Callable[[torch.Tensor], torch.Tensor],
        patches: int,
        outputs: int,
        post_norm: bool = False,
        fast_linear: bool = True,
    ) -> None:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        self.tower = tower
        self.blocks = list(tower.encoder.layers)[:depth]
        self.depth = depth
        self.head = head
        self.outputs = outputs
        self.post_norm = post_norm
        self.merge_unit = patches  # the whole frame is one merge unit
        family = importlib.import_module(type(self.blocks[0]).__module__)
        self._attention = ALL_ATTENTION_FUNCTIONS.get_interface(
            tower.config._attn_implementation, family.eager_attention_forward
        )
        self._masked_embed = "patch_attention_mask" in inspect.signature(tower.embeddings.forward).parameters
        weight = tower.embeddings.patch_embedding.weight
        self.linear = RowLinears(weight.device, weight.dtype, enabled=fast_linear, packed=is_packed(tower))

    block_state = BlockState  # rebuilds a block's cached keys / values on a snapshot restore

    def layout(self, grid: tuple[int, int, int]) -> FrameLayout:
        device = self.tower.embeddings.patch_embedding.weight.device
        return FrameLayout(tuple(grid), torch.arange(self.outputs, device=device)[None])

    def embed(self, pixels: torch.Tensor, layout: FrameLayout) -> torch.Tensor:
        """(1, 3, H, W) normalized pixels -> (N, D) first-layer inputs (patch + position embeddings)."""
        weight = self.tower.embeddings.patch_embedding.weight
        kwargs = {}
        if self._masked_embed:  # Idefics3 / SmolVLM embeddings take the patch mask (all patches real here)
            kwargs["patch_attention_mask"] = torch.ones(
                1, *layout.grid[1:], dtype=torch.bool, device=weight.device
            )
        return self.tower.embeddings(pixel_values=pixels.to(weight.dtype), **kwargs)[0]

    @staticmethod
    def _qkv(blk: Any, x: torch.Tensor, linear: Any = None) -> tuple[torch.Tensor, ...]:
        """layer_norm1 + q/k/v projections for rows `x`: three (1, H, n, d) tensors (the attention's own steps)."""
        attn = blk.self_attn
        h = blk.layer_norm1(x)[None]
        proj = (lambda m: m(h)) if linear is None else (lambda m: linear(m, h))
        shape = (1, x.shape[0], -1, attn.head_dim)
        return tuple(proj(m).view(shape).transpose(1, 2) for m in (attn.q_proj, attn.k_proj, attn.v_proj))

    @staticmethod
    def _finish(blk: Any, x: torch.Tensor, attn_out: torch.Tensor, linear: Any = None) -> torch.Tensor:
        """out_proj, residual, layer_norm2 + MLP, residual: the rest of the layer for rows `x` (n, D)."""
        a = attn_out.reshape(1, x.shape[0], -1).contiguous()
        x = x[None] + (blk.self_attn.out_proj(a) if linear is None else linear(blk.self_attn.out_proj, a))
        h = blk.layer_norm2(x)
        mlp = blk.mlp
        h = mlp(h) if linear is None else linear(mlp.fc2, mlp.activation_fn(linear(mlp.fc1, h)))
        return (x + h)[0]

    def full(self, x: torch.Tensor, layout: FrameLayout) -> tuple[torch.Tensor, FullPass]:
        """Every token through every layer, as the layers' own forward; returns the last hidden + state."""
        state = FullPass([], [], [])
        for blk in self.blocks:
            attn = blk.self_attn
            q, k, v = self._qkv(blk, x)
            out, _ = self._attention(
                attn, q, k, v, None, is_causal=False, scaling=attn.scale, dropout=0.0
            )
            state.inputs.append(x)
            state.blocks.append(BlockState(k[0], v[0]))  # views, as the Qwen runner's
            x = self._finish(blk, x, out)
            state.outputs.append(x)
        return x, state

    def partial(
        self,
        index: int,
        x: torch.Tensor,
        rows: torch.Tensor,
        state: BlockState,
        layout: FrameLayout,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Layer `index` for tokens `rows` of `x` against the cached `state` (whose rows it updates); `valid` as
        the Qwen runner's (only those rows' keys / values are stored)."""
        blk = self.blocks[index]
        xr = x.index_select(0, rows)
        q, k, v = self._qkv(blk, xr, self.linear)
        k, v = k[0], v[0]
        if valid is not None:
            k, v = keep_cached(state, rows, valid, k, v)
        state.keys.index_copy_(1, rows, k)
        state.values.index_copy_(1, rows, v)
        # one segment (the frame): every row over all keys
        out = sparse_row_attention(
            q[0], state.keys, state.values, rows, None, blk.self_attn.scale, sync_free=valid is not None
        )
        return self._finish(blk, xr, out.transpose(0, 1), self.linear)

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """The dense encode of one frame through our loop (embed, every layer, head): (M, D_llm), what the model's
        image features give, without their host reads (SmolVLM's picks the real images by a boolean mask)."""
        layout = self.layout(grid)
        x, _ = self.full(self.embed(pixels, layout), layout)
        return self.merge(x, layout)

    def merge(self, x: torch.Tensor, layout: FrameLayout, units: torch.Tensor | None = None) -> torch.Tensor:
        """The family's head over the last hidden states: (M, D_llm) for the frame (its one merge unit)."""
        if self.post_norm:
            x = self.tower.post_layernorm(x)
        return self.head(x)
