"""The language-model half every adapter shares: end tokens, embeddings, cached forward, KV layout, probes.

A family's adapter sets `model`, `tokenizer`, `device`, `dtype`, `_embed` (the input embeddings), `_lm` (the
decoder called with `inputs_embeds`) and `_lm_head`, calls `_init_text(end_of_turn)`, and overrides
`_position_ids` when its decoder wants another layout than (3, 1, L) M-RoPE ids.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from ..kernels.attention import sdpa_backends
from ..kernels.transfer import upload
from ..records import KVLayout
from .layer_additions import ADDED_PER_LAYER, LayerAdditions
from .query_probe import enable_query_probe, probe_queries


def cache_kwarg(decoder: Any) -> str:
    """The decoder's name for its KV cache argument: `cache` from transformers 5.24 on, `past_key_values` before
    (an unknown keyword would be swallowed by `**kwargs` and the decoder would fill a cache of its own)."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


class LanguageModelSide:
    """Text and LLM steps of an adapter, over transformers' own decoder modules."""

    model: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    _embed: Any
    _lm: Any
    _cache_kwarg: str
    _lm_head: Any

    def _bind_language_model(
        self, language_model: Any, end_of_turn: str, extra_eos: Sequence[str] = ("<|endoftext|>",)
    ) -> None:
        """The LLM half of `self.model` every adapter sets the same way: device, dtype, embeddings, decoder
        (`language_model`), head, no vision runner yet; then the end tokens (`_init_text`)."""
        first = next(self.model.parameters())
        self.device, self.dtype = first.device, first.dtype
        self._embed = self.model.get_input_embeddings()
        self._lm = language_model
        self._cache_kwarg = cache_kwarg(language_model)  # read once here, not per forward
        self._lm_head = self.model.lm_head
        self._vision_runner: Any = None
        self._init_text(end_of_turn, extra_eos)

    def _init_text(self, end_of_turn: str, extra_eos: Sequence[str] = ("<|endoftext|>",)) -> None:
        """End tokens (the checkpoint's eos, the end-of-turn token and `extra_eos`), context and vocab sizes."""
        cfg, tok = self.model.config, self.tokenizer
        text_cfg = cfg.get_text_config()
        self.max_context = int(text_cfg.max_position_embeddings)
        eos = text_cfg.eos_token_id if text_cfg.eos_token_id is not None else getattr(cfg, "eos_token_id", None)
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos])
        vocab = tok.get_vocab()
        eos_ids |= {vocab[t] for t in (end_of_turn, *extra_eos) if t in vocab}
        self.eos_token_ids = frozenset(int(i) for i in eos_ids if i is not None and i >= 0)
        self.end_of_turn_id = int(tok.convert_tokens_to_ids(end_of_turn))
        self.vocab_size = int(text_cfg.vocab_size)

    def fingerprint(self) -> str:
        """The checkpoint's identity (config and sampled weights), computed once: what snapshots are tied to."""
        if getattr(self, "_fingerprint", None) is None:
            from .fingerprint import weights_fingerprint

            self._fingerprint = weights_fingerprint(self.model)
        return self._fingerprint

    def chunk_text_ids(self, place: Any, pts_seconds: tuple[float, ...]) -> tuple[list[int], list[int]]:
        """No text around a chunk's visual tokens (families with timestamps or delimiters override this)."""
        return [], []

    def embed_ids(self, ids: Sequence[int]) -> torch.Tensor:
        with torch.inference_mode():
            return self._embed(upload(torch.tensor(list(ids), dtype=torch.long), self.device))

    def decode_text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config.get_text_config())

    def kv_layout(self) -> KVLayout:
        """(layers, kv_heads, head_dim), device and dtype of the language model's KV, as values for a store."""
        text = self.model.config.get_text_config()
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        return KVLayout(
            int(text.num_hidden_layers), int(text.num_key_value_heads), int(head_dim), self.device, self.dtype,
            query_heads=int(text.num_attention_heads),
        )  # fmt: skip

    def enable_query_probe(self) -> None:
        enable_query_probe(self.model.get_decoder())

    def question_queries(self, embeds: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        """(layers, heads, q_len, head_dim) query states of the question's tokens over `cache` (one probed
        forward, no head: only the queries are read); the policy reduces them (the answer position's, or the
        mean)."""
        with probe_queries() as queries, torch.inference_mode():
            self._hidden(embeds, positions, cache)
        layers = self.kv_layout().layers
        return torch.stack([queries[layer][0].float() for layer in range(layers)])

    def _position_ids(self, positions: torch.Tensor) -> torch.Tensor:
        """Our (3, L) M-RoPE ids as the decoder takes them: (3, 1, L)."""
        return positions.to(self.device)[:, None, :]

    def _decoder_inputs(self, embeds: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """(L, D') embeds -> the decoder's (1, L, D) `inputs_embeds` and extra keyword arguments (a family that
        packs per-layer visual features into extra columns unpacks them here)."""
        return embeds[None].to(self.dtype), {}

    @torch.inference_mode()
    def forward(
        self, embeds: torch.Tensor, positions: torch.Tensor, cache: Any, all_logits: bool = False
    ) -> torch.Tensor:
        hidden = self._hidden(embeds, positions, cache)
        return self._lm_head(hidden if all_logits else hidden[-1]).float()

    @torch.inference_mode()
    def extend(self, embeds: torch.Tensor, positions: torch.Tensor, cache: Any) -> None:
        """Append (L, D) embeds at `positions` to `cache`: a chunk's ingestion, which needs its K/V and no
        logits (the LM head over a 150k vocabulary is skipped)."""
        self._hidden(embeds, positions, cache)

    def _hidden(self, embeds: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        """(L, D) final hidden states of the decoder over `cache` (which the forward appends to)."""
        inputs, extra = self._decoder_inputs(embeds)
        extra[self._cache_kwarg] = cache
        with sdpa_backends(self.device):  # on CUDA no cuDNN SDPA: it plans every new context length
            out = self._decoder(inputs, extra, position_ids=self._position_ids(positions), use_cache=True)
        return out.last_hidden_state[0]

    def _decoder(self, inputs: torch.Tensor, extra: dict[str, Any], **kwargs: Any) -> Any:
        """The decoder over `inputs_embeds=inputs` with `_decoder_inputs`' extra inputs: features added after
        its first layers (`layer_additions`) through hooks, the rest as keyword arguments."""
        added = extra.pop(ADDED_PER_LAYER, None)
        if added is None:
            return self._lm(inputs_embeds=inputs, **extra, **kwargs)
        additions = getattr(self, "_additions", None)
        if additions is None:
            additions = self._additions = LayerAdditions(list(self._lm.layers)[: added.shape[1]])
        with additions.adding(added):
            return self._lm(inputs_embeds=inputs, **extra, **kwargs)

    def answer_ids(self, text: str) -> list[int]:
        """Token ids of `text` as the start of an answer, ended by the end-of-turn token (for scoring)."""
        return list(self.tokenizer(text, add_special_tokens=False).input_ids) + [self.end_of_turn_id]


class LinearPositions:
    """1-D positions (Llama / Qwen2 decoders): token i of the prompt sits at position i; a chunk's visual tokens
    follow whatever was placed before them (`ChunkPlace.start`), as the HF processor lays the prompt out."""

    device: torch.device

    def video_positions(self, place: Any, h: int, w: int) -> torch.Tensor:
        """(1, h*w) positions of a chunk's visual tokens, from `place.start` (on the host)."""
        return torch.arange(place.start, place.start + h * w)[None]

    def text_positions(self, start: int, count: int) -> torch.Tensor:
        return torch.arange(start, start + count, device=self.device)[None]

    def text_start_after_video(self, place: Any, num_chunks: int, grid_hw: tuple[int, int]) -> int:
        """Text resumes at the first free position after the last chunk (and its text)."""
        return place.start

    def _position_ids(self, positions: torch.Tensor) -> torch.Tensor:
        return positions.to(self.device).reshape(1, -1)
