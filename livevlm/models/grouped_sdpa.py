"""Select the grouped-query SDPA (`kernels.grouped_attention`) on a language model, through transformers'
attention dispatch table (`AttentionInterface`; nothing is patched). Only the language model switches: the
vision towers have as many KV heads as query heads."""

from __future__ import annotations

from typing import Any

from ..kernels.grouped_attention import GROUPED_SDPA, grouped_attention_forward


def enable_grouped_sdpa(lm: Any) -> bool:
    """Route `lm`'s attention through `sdpa_grouped` when it runs SDPA with grouped KV heads; True if it does."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    text = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    heads, kv_heads = text.num_attention_heads, getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    if lm.config._attn_implementation == GROUPED_SDPA:
        return True
    if lm.config._attn_implementation != "sdpa" or heads == kv_heads:
        return False
    if GROUPED_SDPA not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(GROUPED_SDPA, grouped_attention_forward(ALL_ATTENTION_FUNCTIONS["sdpa"]))
        AttentionMaskInterface.register(GROUPED_SDPA, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    lm.set_attn_implementation(GROUPED_SDPA)
    return True
