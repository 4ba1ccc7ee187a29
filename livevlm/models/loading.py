"""Load a Hugging Face checkpoint (local path or hub id, safetensors) into the adapter for its family."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError

logger = logging.getLogger(__name__)

_FAMILIES: dict[str, Callable[[], type]] = {}


def register_model_family(model_type: str, adapter: Callable[[], type]) -> None:
    """Register a lazily imported adapter class for a transformers `model_type`."""
    _FAMILIES[model_type] = adapter


def _qwen25() -> type:
    from .qwen_vl import QwenVLAdapter

    return QwenVLAdapter


def _qwen2() -> type:
    from .qwen_vl import Qwen2VLAdapter

    return Qwen2VLAdapter


register_model_family("qwen2_5_vl", _qwen25)
register_model_family("qwen2_vl", _qwen2)


def supported_families() -> list[str]:
    return sorted(_FAMILIES)


def _resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return "auto"
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16") from None


def load_model(
    name_or_path: str | Path | None = None, *, device: str = "cpu", dtype: str = "auto", **adapter_kwargs: Any
):
    """Load `name_or_path` (None: the bundled default) and wrap it in its family's adapter."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer

    if name_or_path is None:
        from .tiny import default_model_path

        name_or_path = default_model_path()
    name = str(name_or_path)
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:
        hint = (
            "no such directory" if not Path(name).exists() and name.startswith(("/", ".", "~")) else str(exc)
        )
        raise ModelLoadError(f"cannot load model config from {name!r}: {hint}") from exc
    if config.model_type not in _FAMILIES:
        raise ModelLoadError(
            f"model {name!r} has model_type {config.model_type!r}; supported: {', '.join(supported_families())}"
        )
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            name, dtype=_resolve_dtype(dtype, device), use_safetensors=True
        ).to(device)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load weights or tokenizer of {name!r}: {exc}") from exc
    adapter_cls = _FAMILIES[config.model_type]()
    return adapter_cls(model, tokenizer, **adapter_kwargs)
