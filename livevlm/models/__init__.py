"""Model adapters: one per Hugging Face family, behind the `VideoLMAdapter` protocol."""

from .base import ChunkPlace, VideoLMAdapter, VisualChunk
from .loading import load_model, register_model_family, supported_families

__all__ = [
    "ChunkPlace",
    "VideoLMAdapter",
    "VisualChunk",
    "load_model",
    "register_model_family",
    "supported_families",
]
