"""Model adapters: one per Hugging Face family, behind the `VideoLMAdapter` protocol and `MODEL_FAMILIES`."""

from ..records import ChunkPlace, KVLayout, VisionEncoder, VisualChunk
from .base import DEFAULT_SYSTEM_PROMPT, VideoLMAdapter, check_adapter
from .loading import MODEL_FAMILIES, load_model, register_model_family, supported_families

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "MODEL_FAMILIES",
    "ChunkPlace",
    "KVLayout",
    "VideoLMAdapter",
    "VisionEncoder",
    "VisualChunk",
    "check_adapter",
    "load_model",
    "register_model_family",
    "supported_families",
]
