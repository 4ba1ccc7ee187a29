"""Tiny random-weight Qwen2-VL / Qwen2.5-VL checkpoints of the real architectures, for tests.

They are saved with `save_pretrained` (safetensors) next to the real Qwen2 tokenizer, so loading them goes
through exactly the path a user's real checkpoint takes.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError, OutputError

TINY_FAMILIES = ("qwen2_5_vl", "qwen2_vl", "llava_onevision", "smolvlm", "qwen3_vl")
QWEN2_VOCAB = 151936  # the real (padded) embedding size of Qwen2-VL / Qwen2.5-VL


_MODEL_CLASSES = {
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    "smolvlm": "SmolVLMForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
}

# Weights drawn wider than transformers' 0.02 default: at 0.02 a toy model answers every prompt with the
# same token, so no test could tell a right context from a wrong one; at 0.3 greedy answers depend on it.
TINY_INIT_STD = 0.3


def tiny_config(family: str = "qwen2_5_vl", hidden: int = 64, layers: int = 2):
    """A real config of `family` at toy size: LLM hidden `hidden`, `layers` layers, 2-block ViT of width 32."""
    if family == "llava_onevision":
        return _tiny_llava_onevision(hidden, layers)
    if family == "smolvlm":
        return _tiny_smolvlm(hidden, layers)
    if family == "qwen3_vl":
        return _tiny_qwen3_vl(hidden, layers)
    text = {
        "vocab_size": QWEN2_VOCAB,
        "hidden_size": hidden,
        "intermediate_size": hidden * 2,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]},
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "pad_token_id": 151643,
        "tie_word_embeddings": True,
        "initializer_range": TINY_INIT_STD,
    }
    vision = {
        "depth": 2,
        "num_heads": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "in_channels": 3,
        "initializer_range": TINY_INIT_STD,
    }
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig as Config

        vision.update(
            hidden_size=32,
            intermediate_size=64,
            out_hidden_size=hidden,
            window_size=56,
            fullatt_block_indexes=[1],
            tokens_per_second=2,
        )
    elif family == "qwen2_vl":
        from transformers import Qwen2VLConfig as Config

        vision.update(embed_dim=32, mlp_ratio=2, hidden_size=hidden)
    else:
        raise ConfigError(f"unknown tiny family {family!r}; choose one of {TINY_FAMILIES}")
    return Config(
        text_config=text,
        vision_config=vision,
        tie_word_embeddings=True,
        image_token_id=151655,
        video_token_id=151656,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
        initializer_range=TINY_INIT_STD,
    )


def _tiny_text(hidden: int, layers: int) -> dict:
    """A toy Qwen2 decoder config (the real Qwen2 vocabulary and special-token ids)."""
    return {
        "model_type": "qwen2",
        "vocab_size": QWEN2_VOCAB,
        "hidden_size": hidden,
        "intermediate_size": hidden * 2,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "pad_token_id": 151643,
        "tie_word_embeddings": True,
        "initializer_range": TINY_INIT_STD,
    }


# A 126 px SigLIP with 14 px patches: a 9x9 patch grid, pooled to 5x5 (exercises the pooling's ceil).
TINY_SIGLIP = {
    "model_type": "siglip_vision_model",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 126,
    "patch_size": 14,
    "vision_use_head": False,
    "initializer_range": TINY_INIT_STD,
}


def _tiny_llava_onevision(hidden: int, layers: int):
    from transformers import LlavaOnevisionConfig

    return LlavaOnevisionConfig(
        text_config=_tiny_text(hidden, layers),
        vision_config=TINY_SIGLIP,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        image_token_index=151646,
        video_token_index=151647,
        tie_word_embeddings=True,
        initializer_range=TINY_INIT_STD,
    )


def _tiny_smolvlm(hidden: int, layers: int):
    """SmolVLM2 at toy size: a 112 px Idefics3 ViT (8x8 patches, pixel shuffle 2: 16 tokens per frame) and a
    Llama decoder with SmolVLM2's vocabulary size; token ids those of `build_smolvlm_tokenizer`."""
    from transformers import SmolVLMConfig

    text = {**_tiny_text(hidden, layers), "model_type": "llama", "vocab_size": 49280, "bos_token_id": 49153,
            "eos_token_id": 49158, "pad_token_id": 49154, "rope_parameters": {"rope_type": "default",
                                                                              "rope_theta": 100_000.0}}
    vision = {**TINY_SIGLIP, "model_type": "smolvlm_vision", "image_size": 112}
    del vision["vision_use_head"]
    return SmolVLMConfig(text_config=text, vision_config=vision, scale_factor=2, image_token_id=49156,
                         tie_word_embeddings=True, initializer_range=TINY_INIT_STD)


def _tiny_qwen3_vl(hidden: int, layers: int):
    """Qwen3-VL at toy size: a 2-block ViT with 16 px patches whose both blocks feed DeepStack, interleaved
    M-RoPE over a 16-dim head; the Qwen2-VL tokenizer's special-token ids (Qwen3-VL keeps them)."""
    from transformers import Qwen3VLConfig

    rope = {"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [4, 2, 2], "mrope_interleaved": True}
    text = {**_tiny_text(hidden, layers), "model_type": "qwen3_vl_text", "head_dim": 16, "rope_parameters": rope}
    vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 16,
              "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": hidden,
              "num_position_embeddings": 64, "deepstack_visual_indexes": [0, 1], "initializer_range": TINY_INIT_STD}
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, image_token_id=151655,
                         video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
                         initializer_range=TINY_INIT_STD)


def save_processing(out: Path, family: str, config) -> None:
    """The tokenizer (built offline) and video processor config a real checkpoint of `family` ships."""
    import json

    from .tokenizer import LLAVA_OV_SPECIAL_TOKENS, build_qwen2_tokenizer, build_smolvlm_tokenizer

    if family == "smolvlm":
        side = int(config.vision_config.image_size)
        build_smolvlm_tokenizer().save_pretrained(out)
        video = {"video_sampling": {"fps": 1, "max_frames": 64, "video_size": {"longest_edge": side}},
                 "max_image_size": {"longest_edge": side}, "resample": 1,
                 "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
        (out / "video_preprocessor_config.json").write_text(json.dumps(video))
        return
    if family == "llava_onevision":
        side = int(config.vision_config.image_size)
        build_qwen2_tokenizer(LLAVA_OV_SPECIAL_TOKENS, chat_template=None).save_pretrained(out)
        video = {"size": {"height": side, "width": side}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
        (out / "video_preprocessor_config.json").write_text(json.dumps(video))
        return
    build_qwen2_tokenizer().save_pretrained(out)


def build_tiny_checkpoint(
    path: str | os.PathLike, family: str = "qwen2_5_vl", seed: int = 0, hidden: int = 64, layers: int = 2
) -> Path:
    """Build a seeded tiny random-weight model and save it (weights, config, tokenizer) to `path`: a new or empty
    folder, never one holding files (`save_pretrained` would replace a real checkpoint's config and delete its
    weight shards)."""
    import torch
    import transformers

    out = Path(path)
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held:
        shown = ", ".join(held[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
        raise OutputError(f"{str(out)!r} is not empty (it holds {shown}); build a tiny checkpoint into a new folder")
    config = tiny_config(family, hidden=hidden, layers=layers)
    cls = getattr(transformers, _MODEL_CLASSES[family])
    torch.manual_seed(seed)
    model = cls(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    save_processing(out, family, config)
    return out
