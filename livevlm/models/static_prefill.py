"""Chunk prefills of fixed shape: a chunk's tokens and its view's past copied into buffers of bucketed size.

    ChunkPrefill(adapter, path)(embeds, positions, view):
        bucket = (rows >= n new tokens, past >= the view's longest layer)      one StaticPrefill per bucket
                 (a kept one at most a step larger serves: a wavering size does not rebuild)
        layer l's past (len tokens) -> buffer[l][past - len : past]; chunk -> rows [0, n) of the input buffer
        mask: the past's columns (every layer of an ingestion view holds the same past), and the new tokens
              causal among themselves (pad rows come last: no real row sees one)
        forward(rows tokens, every buffer) writes the new K/V at [past, past + rows) -> the view appends [0, n)

Every chunk of a bucket has the same shapes and reads and writes the same tensors, so on CUDA its forward is
captured as a CUDA graph (`path="graph"`) and replayed: one launch instead of ~1,300 per chunk at
Qwen2.5-VL-7B shape (a chunk's prefill was 24 ms of launches for a few ms of GPU work). The view the store
handed out gets the new tokens appended as the usual forward would have, so the store sees no difference
(it only stores). Pad rows and pad columns are masked out of every real row: the result equals the usual
forward to rounding (a longer softmax row summing the same terms). What a model needs for it is checked by
`static_prefill_refusal`; a refused chunk runs the usual forward, and `SessionStats.prefills_by_path` says why.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from transformers.cache_utils import Cache

from ..errors import ConfigError
from ..kernels.attention import sdpa_backends
from ..kernels.cuda_graph import GraphedCall
from .fixed_shapes import (
    FixedLayer,
    fitting_bucket,
    fixed_shape_refusal,
    keep_buckets,
    past_lengths,
)
from .layer_additions import ADDED_PER_LAYER


def static_prefill_refusal(adapter: Any, embeds: torch.Tensor, lengths: list[int]) -> str | None:
    """Why this chunk cannot be prefilled in fixed shapes (it then runs the usual forward), or None."""
    if len(set(lengths)) > 1:  # no store hands out such an ingestion view (the decoder's one mask could not serve)
        return "it needs every layer of the view to hold the same past"
    why = fixed_shape_refusal(adapter, lengths, "the view's")
    if why is None and set(adapter._decoder_inputs(embeds[:1])[1]) - {ADDED_PER_LAYER}:  # added features: buffered
        return "it needs a chunk to enter the decoder as embeddings alone (this model adds extra inputs)"
    return why


class StaticPrefill:
    """One bucket: buffers for `rows` new tokens over `past` past tokens per layer, and their forward."""

    @torch.inference_mode()
    def __init__(self, adapter: Any, width: int, rows: int, past: int, graph: bool) -> None:
        self.adapter, self.rows, self.past = adapter, rows, past
        layers, kv_heads, head_dim = adapter.kv_layout().shape3
        device, capacity = adapter.device, past + rows
        self.embeds = torch.zeros(rows, width, dtype=adapter.dtype, device=device)
        self.positions = adapter.text_positions(0, rows).clone()
        self.at = torch.arange(past, capacity, device=device)
        self.keys = [torch.zeros(1, kv_heads, capacity, head_dim, dtype=adapter.dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self.cache = Cache(layers=[FixedLayer(k, v, self.at) for k, v in zip(self.keys, self.values)])
        self._column = torch.arange(capacity, device=device)
        row = torch.arange(rows, device=device)
        self._causal = (self._column[None] >= past) & (self._column[None] - past <= row[:, None])  # (rows, capacity)
        self.mask = torch.zeros(1, 1, rows, capacity, dtype=torch.bool, device=device)
        self._graphed = GraphedCall(self._run) if graph else None

    @property
    def failed(self) -> str | None:
        return None if self._graphed is None else self._graphed.failed

    @torch.inference_mode()
    def __call__(self, embeds: torch.Tensor, positions: torch.Tensor, view: Any, lengths: list[int]) -> None:
        """Prefill `embeds` at `positions` over `view`'s past; the new K/V are appended to `view`'s layers."""
        n, past = int(embeds.shape[0]), self.past
        self.embeds[:n].copy_(embeds)
        self.embeds[n:].zero_()
        self.positions[:, :n].copy_(positions)
        self.positions[:, n:].copy_(positions[:, -1:].expand(-1, self.rows - n))
        length = lengths[0]  # every layer's (static_prefill_refusal)
        torch.logical_or(self._column.ge(past - length) & self._column.lt(past), self._causal, out=self.mask[0, 0])
        for layer, keys, values in zip(view.layers, self.keys, self.values):
            if length:
                keys[:, :, past - length : past].copy_(layer.keys)
                values[:, :, past - length : past].copy_(layer.values)
        self._run() if self._graphed is None else self._graphed()
        for layer, keys, values in zip(view.layers, self.keys, self.values):
            layer.update(keys[:, :, past : past + n], values[:, :, past : past + n])  # a copy: the view's own

    def _run(self) -> None:
        """The decoder's forward over the buffers (what a graph captures): K/V written at [past, past + rows)."""
        adapter = self.adapter
        inputs, extra = adapter._decoder_inputs(self.embeds)
        extra[adapter._cache_kwarg] = self.cache
        with sdpa_backends(self.at.device):
            adapter._decoder(inputs, extra, position_ids=adapter._position_ids(self.positions),
                             attention_mask=self.mask, use_cache=True)  # fmt: skip


class ChunkPrefill:
    """A session's chunk prefills on `path` (static or graph): a bucket per shape."""

    def __init__(self, adapter: Any, path: str) -> None:
        self.adapter, self.path = adapter, path
        self.graph = path == "graph"
        device = torch.device(getattr(adapter, "device", "cpu"))
        if self.graph and device.type != "cuda":
            raise ConfigError(f"prefill='graph' needs the language model on CUDA, it runs on {device}")
        self._buckets: OrderedDict[tuple[int, int], StaticPrefill] = OrderedDict()  # (rows, past)

    def __call__(self, embeds: torch.Tensor, positions: torch.Tensor, view: Any) -> str:
        """Prefill a chunk's `embeds` at `positions` over `view` (the store's ingestion view), appending to it;
        returns the path taken: "graph", "static", "static: the graph capture failed, ..." or "eager: no ...
        prefill, <why>" (the fixed shapes refused)."""
        lengths = past_lengths(view)
        why = static_prefill_refusal(self.adapter, embeds, lengths)
        if why is not None:
            self.adapter.extend(embeds, positions, view)
            return f"eager: no {self.path} prefill, {why}"
        key = fitting_bucket(self._buckets, int(embeds.shape[0]), max(lengths))
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = StaticPrefill(self.adapter, int(embeds.shape[1]), *key, graph=self.graph)
        self._buckets = keep_buckets(self._buckets, key, bucket)
        bucket(embeds, positions, view, lengths)
        failed = bucket.failed
        return self.path if failed is None else f"static: the graph capture failed, {failed}"

    def clear(self) -> None:
        self._buckets.clear()
