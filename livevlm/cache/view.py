"""`ChunkView`: a transformers `Cache` over gathered K/V — exactly the tokens the next forward may attend to.

A view is built from parts (the sink, summaries, dense or pooled chunks), each a (layers, 2, kv_heads, n,
head_dim) tensor, or from per-layer (keys, values) when layers select different chunks. New tokens are
appended by concatenation (transformers' `DynamicLayer`), never in place, so the parts — the store's own
tensors — are never written. Masks follow from `get_seq_length`/`get_mask_sizes`: every gathered token is in
the past of every new one, new tokens are causal among themselves; the session passes positions explicitly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.cache_utils import Cache, DynamicLayer


class GatheredLayer(DynamicLayer):
    """A `DynamicLayer` that starts with gathered past keys/values of shape (1, kv_heads, n, head_dim)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values


class ChunkView(Cache):
    """A cache whose past is the concatenation of the given parts, per layer."""

    def __init__(self, per_layer: Sequence[tuple[torch.Tensor, torch.Tensor]] | None, num_layers: int) -> None:
        if per_layer is None:
            layers: list[DynamicLayer] = [DynamicLayer() for _ in range(num_layers)]
        else:
            layers = [GatheredLayer(k, v) for k, v in per_layer]
        super().__init__(layers=layers)

    @classmethod
    def gather(cls, parts: Sequence[torch.Tensor], num_layers: int) -> ChunkView:
        """A view over `parts` (each (layers, 2, kv_heads, n, head_dim)) concatenated along tokens."""
        parts = [p for p in parts if p.shape[3]]
        if not parts:
            return cls(None, num_layers)
        full = parts[0] if len(parts) == 1 else torch.cat(parts, 3)
        return cls([(full[layer, 0][None], full[layer, 1][None]) for layer in range(num_layers)], num_layers)

    @classmethod
    def gather_per_layer(cls, parts: Sequence[Sequence[torch.Tensor]], num_layers: int) -> ChunkView:
        """A view where layer l's past is the concatenation of `parts[l]` (each (2, kv_heads, n, head_dim))."""
        per_layer = []
        for layer_parts in parts:
            full = layer_parts[0] if len(layer_parts) == 1 else torch.cat(list(layer_parts), 2)
            per_layer.append((full[0][None], full[1][None]))
        return cls(per_layer, num_layers)

    def tail(self, n: int) -> torch.Tensor:
        """The last `n` tokens of every layer as one (layers, 2, kv_heads, n, head_dim) tensor (a copy)."""
        return torch.stack([torch.stack([layer.keys[0, :, -n:], layer.values[0, :, -n:]]) for layer in self.layers])
