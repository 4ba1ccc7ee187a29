"""Decode steps of fixed shape: the question's cache copied into buffers sized for the whole answer.

    DecodeBuffers.acquire(cache, budget) -> StaticDecode of bucket (past >= the longest layer, rows >= budget)
    load: layer l's past (len_l tokens) -> buffer[l][P - len_l : P]; masks: those columns; next slot P
    step(token, position): [index_fill mask at P + t] -> forward(1 token, every buffer, per-layer mask) -> logits
    release: the buffers (and the graph captured over them) wait for the session's next answer of that bucket

Every step has the same shapes and reads and writes the same tensors, so on CUDA one step is captured as a CUDA
graph (`graph=True`) and replayed: one launch for the whole forward instead of one per op (an answer token at
Qwen2.5-VL-7B shape was 33 ms of launches for 6.5 ms of GPU work). A session keeps its buffers between answers
(`DecodeBuffers`, at most two buckets), so a later answer of the same bucket replays the graph captured by an
earlier one from its first step instead of capturing again. Layers may hold different numbers of past tokens
(bilevel selects per layer): each reads its own mask, passed through the grouped-SDPA attention function
(`kernels.grouped_attention.layer_masks`); transformers' own SDPA reads the one mask the decoder is given, which
serves when every layer holds the same past. What this needs of a model is checked by `static_decode_refusal`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import torch
from transformers.cache_utils import Cache

from ..kernels.attention import sdpa_backends
from ..kernels.cuda_graph import GraphedCall
from ..kernels.grouped_attention import layer_masks
from .fixed_shapes import (
    FixedLayer,
    fitting_bucket,
    fixed_shape_refusal,
    keep_buckets,
    past_lengths,
)


def static_decode_refusal(adapter: Any, cache: Any) -> str | None:
    """Why this adapter / cache cannot decode in fixed shapes (the answer then decodes as usual), or None."""
    if not all(getattr(layer, "keys", None) is not None and layer.keys.dim() == 4 for layer in cache.layers):
        return "it needs a filled cache of (1, heads, tokens, dim) keys per layer"
    why = fixed_shape_refusal(adapter, past_lengths(cache), "its")
    if why is None and adapter._decoder_inputs(adapter.embed_ids([0]))[1]:
        return "it needs a text token to enter the decoder as one embedding (this model adds extra inputs)"
    return why


class StaticDecode:
    """Buffers for `rows` answer tokens after `past` past tokens per layer; `load` a question's cache, then `step`
    gives the logits after one more token."""

    @torch.inference_mode()
    def __init__(self, adapter: Any, past: int, rows: int, graph: bool = False) -> None:
        self.adapter, self.past, self.rows = adapter, past, rows
        layers, kv_heads, head_dim = adapter.kv_layout().shape3
        device, capacity = adapter.device, past + rows
        self.at = torch.full((1,), past, dtype=torch.long, device=device)
        self.masks = torch.zeros(layers, 1, 1, 1, capacity, dtype=torch.bool, device=device)
        keys = [torch.zeros(1, kv_heads, capacity, head_dim, dtype=adapter.dtype, device=device) for _ in range(layers)]
        self.cache = Cache(layers=[FixedLayer(k, torch.zeros_like(k), self.at) for k in keys])
        self.token = torch.zeros(1, dtype=torch.long, device=device)
        self.positions = adapter.text_positions(0, 1).clone()
        self.graph = graph and device.type == "cuda"
        self._graphed = GraphedCall(self._run) if self.graph else None  # eager, captured, then replayed
        self.steps = 0

    @classmethod
    def for_cache(cls, adapter: Any, cache: Any, budget: int, graph: bool = False) -> StaticDecode:
        """Buffers sized exactly for `cache` and `budget` answer tokens, loaded with it."""
        decode = cls(adapter, max(past_lengths(cache)), budget, graph)
        decode.load(cache)
        return decode

    @torch.inference_mode()
    def load(self, cache: Any) -> None:
        """Copy a question's cache into the buffers (right-aligned at `past`): the next step reads it alone."""
        past = self.past
        self.masks.zero_()
        for i, (layer, fixed) in enumerate(zip(cache.layers, self.cache.layers)):
            n = int(layer.keys.shape[2])
            fixed.keys[:, :, past - n : past].copy_(layer.keys)
            fixed.values[:, :, past - n : past].copy_(layer.values)
            self.masks[i, ..., past - n : past] = True
        self.at.fill_(past)
        self.steps = 0

    @property
    def path(self) -> str:
        """What the answer's steps ran as: "graph", "static", or the failed capture's reason (eager after it)."""
        failed = None if self._graphed is None else self._graphed.failed
        return ("graph" if self.graph else "static") if failed is None else f"static: the graph capture failed, {failed}"

    @torch.inference_mode()
    def step(self, token: int, position: int) -> torch.Tensor:
        """(vocab,) float logits after `token` at `position` (the next free slot of the buffers)."""
        if self.steps >= self.rows:
            raise RuntimeError(f"a fixed decode of {self.rows} rows was asked for step {self.steps + 1}")
        self.token.fill_(token)
        self.positions.copy_(self.adapter.text_positions(position, 1))
        self.steps += 1
        return (self._run() if self._graphed is None else self._graphed()).clone()

    def _run(self) -> torch.Tensor:
        """One token's forward on the buffers: its slot joins every layer's mask, then the slot moves on."""
        adapter = self.adapter
        self.masks.index_fill_(-1, self.at, True)
        inputs, extra = adapter._decoder_inputs(adapter._embed(self.token))
        extra[adapter._cache_kwarg] = self.cache
        with sdpa_backends(self.at.device), layer_masks(self.masks):
            out = adapter._decoder(inputs, extra, position_ids=adapter._position_ids(self.positions),
                                   attention_mask=self.masks[0], use_cache=True)  # fmt: skip
        self.at.add_(1)
        return adapter._lm_head(out.last_hidden_state[0, -1]).float()


class DecodeBuffers:
    """A session's fixed decode buffers, by bucket, kept between answers (at most `BUCKETS_KEPT` idle); an answer
    holds its own until `release`, so answers decoding at once never share one."""

    def __init__(self, adapter: Any, graph: bool) -> None:
        self.adapter, self.graph = adapter, graph
        self._idle: OrderedDict[tuple[int, int], StaticDecode] = OrderedDict()  # by (rows, past)
        self._lock = threading.Lock()

    def acquire(self, cache: Any, budget: int) -> StaticDecode:
        """Buffers of the bucket `cache` and `budget` fall in (an idle one, else new), loaded with `cache`."""
        with self._lock:
            rows, past = fitting_bucket(self._idle, budget, max(past_lengths(cache)))
            decode = self._idle.pop((rows, past), None)
        decode = decode or StaticDecode(self.adapter, past, rows, graph=self.graph)
        decode.load(cache)
        return decode

    def release(self, decode: StaticDecode) -> None:
        """An answer is done with `decode`: keep it for the next answer of its bucket; idle ones of a shorter past
        go (a growing context never returns to them), and the oldest past `BUCKETS_KEPT`."""
        with self._lock:
            self._idle = keep_buckets(self._idle, (decode.rows, decode.past), decode)

    def clear(self) -> None:
        with self._lock:
            self._idle.clear()
