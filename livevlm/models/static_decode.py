"""Decode steps of fixed shape: the question's cache copied into buffers sized for the whole answer.

    StaticDecode(adapter, cache, budget): layer l's past (len_l tokens) -> buffer[l][P - len_l : P], P = max len_l
    step(token, position): [index_fill mask at P + t] -> forward(1 token, every buffer, per-layer mask) -> logits

Every step has the same shapes and reads and writes the same tensors, so on CUDA one step is captured as a CUDA
graph (`graph=True`) and replayed: one launch for the whole forward instead of one per op (an answer token at
Qwen2.5-VL-7B shape was 33 ms of launches for 6.5 ms of GPU work). Layers may hold different numbers of past
tokens (bilevel selects per layer): each reads its own mask, passed through the grouped-SDPA attention function
(`kernels.grouped_attention.layer_masks`); transformers' own SDPA reads the one mask the decoder is given, which
serves when every layer holds the same past. What this needs of a model is checked by `static_decode_refusal`.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from ..kernels.attention import sdpa_backends
from ..kernels.cuda_graph import GraphedCall
from ..kernels.grouped_attention import GROUPED_SDPA, layer_masks
from .query_probe import PREFIX as PROBE_PREFIX


class FixedLayer(CacheLayerMixin):
    """One layer's keys / values in a buffer of fixed length; a step writes its token at `at` (a device tensor)."""

    is_compileable = True
    is_sliding = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, at: torch.Tensor) -> None:
        super().__init__()
        self.keys, self.values, self.at = keys, values, at
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        self.keys.index_copy_(2, self.at, key_states)
        self.values.index_copy_(2, self.at, value_states)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.keys.shape[2]

    def get_max_length(self) -> int:
        return self.keys.shape[2]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.keys.shape[2], 0


def static_decode_refusal(adapter: Any, cache: Any) -> str | None:
    """Why this adapter / cache cannot decode in fixed shapes (the answer then decodes as usual), or None."""
    text = adapter.model.config.get_text_config()
    impl = str(getattr(adapter._lm.config, "_attn_implementation", None)).removeprefix(PROBE_PREFIX)
    if impl not in (GROUPED_SDPA, "sdpa"):
        return f"it needs SDPA attention (the model runs {impl!r})"
    if any(kind != "full_attention" for kind in getattr(text, "layer_types", None) or ()):
        return "it needs every layer to attend to the whole context (this model has sliding-window layers)"
    if adapter._decoder_inputs(adapter.embed_ids([0]))[1]:
        return "it needs a text token to enter the decoder as one embedding (this model adds extra inputs)"
    if not all(getattr(layer, "keys", None) is not None and layer.keys.dim() == 4 for layer in cache.layers):
        return "it needs a filled cache of (1, heads, tokens, dim) keys per layer"
    if impl == "sdpa" and len({int(layer.keys.shape[2]) for layer in cache.layers}) > 1:
        return ("its layers hold pasts of different lengths, which transformers' SDPA cannot mask (one mask for "
                "every layer; livevlm's grouped SDPA reads one per layer)")  # fmt: skip
    return None


class StaticDecode:
    """The rest of one answer decoded on fixed buffers; `step` gives the logits after one more token."""

    @torch.inference_mode()
    def __init__(self, adapter: Any, cache: Any, budget: int, graph: bool = False) -> None:
        self.adapter = adapter
        lengths = [int(layer.keys.shape[2]) for layer in cache.layers]
        past = max(lengths)
        device = cache.layers[0].keys.device
        capacity = past + budget
        self.at = torch.full((1,), past, dtype=torch.long, device=device)
        self.masks = torch.zeros(len(lengths), 1, 1, 1, capacity, dtype=torch.bool, device=device)
        layers = []
        for i, (layer, n) in enumerate(zip(cache.layers, lengths)):
            keys = layer.keys.new_zeros(*layer.keys.shape[:2], capacity, layer.keys.shape[3])
            values = layer.values.new_zeros(*layer.values.shape[:2], capacity, layer.values.shape[3])
            keys[:, :, past - n : past] = layer.keys
            values[:, :, past - n : past] = layer.values
            self.masks[i, ..., past - n : past] = True
            layers.append(FixedLayer(keys, values, self.at))
        self.cache = Cache(layers=layers)
        self.token = torch.zeros(1, dtype=torch.long, device=device)
        self.positions = adapter.text_positions(0, 1).clone()
        self.graph = graph and device.type == "cuda"
        self._graphed = GraphedCall(self._run) if self.graph else None  # eager, captured, then replayed
        self.steps = 0

    @property
    def path(self) -> str:
        """What the answer's steps ran as: "graph", "static", or the failed capture's reason (eager after it)."""
        failed = None if self._graphed is None else self._graphed.failed
        return ("graph" if self.graph else "static") if failed is None else f"static: the graph capture failed, {failed}"

    @torch.inference_mode()
    def step(self, token: int, position: int) -> torch.Tensor:
        """(vocab,) float logits after `token` at `position` (the next free slot of the buffers)."""
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
            out = adapter._lm(inputs_embeds=inputs, position_ids=adapter._position_ids(self.positions),
                              attention_mask=self.masks[0], use_cache=True, **extra)  # fmt: skip
        self.at.add_(1)
        return adapter._lm_head(out.last_hidden_state[0, -1]).float()
