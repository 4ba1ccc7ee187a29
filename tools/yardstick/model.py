"""The yardstick model's pieces: a small tokenizer trained on the world's QA corpus, a small Qwen2.5-VL config,
and the processor file that pins its frame size; all saved in the layout of any Hugging Face checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from livevlm.models import DEFAULT_SYSTEM_PROMPT
from livevlm.models.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from livevlm.models.tokenizer import QWEN2_VL_CHAT_TEMPLATE, QWEN2_VL_SPECIAL_TOKENS
from tools.yardstick.world import FPS, FRAME_SIZE, corpus_lines

TOKENIZER_VOCAB = 448
TOKENIZER_VOCAB_V2 = 640
"""The v2 world has more words (its wordings and the describe grammar)."""


def build_tokenizer(vocab_size: int | None = None, world: int = 1) -> Any:
    """Byte-level BPE trained on the world's questions and the chat frame, Qwen's special tokens at ids 0..13
    (`world` 2: on the v2 seen wordings and descriptions; held-out wordings are never in its corpus)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if world == 2:
        from tools.yardstick.world_v2 import corpus_lines_v2

        lines, vocab_size = list(corpus_lines_v2()), vocab_size or TOKENIZER_VOCAB_V2
    else:
        lines, vocab_size = list(corpus_lines()), vocab_size or TOKENIZER_VOCAB
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(QWEN2_VL_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    chat = [f"system\n{DEFAULT_SYSTEM_PROMPT}\nuser\nassistant\n"] * 20
    tok.train_from_iterator(chat + [line for line in lines for _ in range(5)], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )
    fast.chat_template = QWEN2_VL_CHAT_TEMPLATE
    return fast


def load_tokenizer(path: str) -> Any:
    """The tokenizer saved with a yardstick model (`TrainConfig.vocab_from`), chat template included."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.chat_template is None:
        tok.chat_template = QWEN2_VL_CHAT_TEMPLATE
    return tok


def build_config(
    tokenizer: Any, hidden: int = 256, layers: int = 4, vit_depth: int = 4, vit_hidden: int = 128
):
    """A real `Qwen2_5_VLConfig` at yardstick size, with token ids taken from `tokenizer`."""
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN2_VL_SPECIAL_TOKENS}
    vocab = -(-len(tokenizer) // 64) * 64
    head_dim = hidden // 4
    text = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": hidden * 3,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10_000.0,
            "mrope_section": [
                head_dim // 2 - 2 * (3 * head_dim // 16),
                3 * head_dim // 16,
                3 * head_dim // 16,
            ],
        },
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": True,
        "initializer_range": 0.02,
    }
    vision = {
        "depth": vit_depth,
        "hidden_size": vit_hidden,
        "intermediate_size": vit_hidden * 4,
        "num_heads": 4,
        "out_hidden_size": hidden,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "in_channels": 3,
        "window_size": 112,
        "fullatt_block_indexes": [vit_depth - 1],
        "tokens_per_second": 2,
        "initializer_range": 0.02,
    }
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        tie_word_embeddings=True,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        initializer_range=0.02,
    )


def write_video_processor_config(path: str | Path, pixels: int = FRAME_SIZE * FRAME_SIZE) -> None:
    """The `video_preprocessor_config.json` HF's Qwen2VLVideoProcessor reads: frames resized to `pixels`."""
    cfg = {
        "video_processor_type": "Qwen2VLVideoProcessor",
        "size": {"shortest_edge": pixels, "longest_edge": pixels},
        "do_resize": True,
        "do_rescale": True,
        "do_normalize": True,
        "do_sample_frames": False,
        "rescale_factor": 1 / 255,
        "image_mean": list(OPENAI_CLIP_MEAN),
        "image_std": list(OPENAI_CLIP_STD),
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "fps": FPS,
    }
    Path(path, "video_preprocessor_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
