"""Load a Hugging Face checkpoint (local path or hub id, safetensors) into the adapter for its family."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError
from ..registry import Registry

logger = logging.getLogger(__name__)

MODEL_FAMILIES: Registry = Registry("model family", error=ModelLoadError)
"""transformers `model_type` -> the adapter class for that family (imported on first use)."""
MODEL_FAMILIES.register("qwen2_5_vl", "livevlm.models.qwen_vl:QwenVLAdapter")
MODEL_FAMILIES.register("qwen2_vl", "livevlm.models.qwen_vl:Qwen2VLAdapter")


def register_model_family(model_type: str, adapter: Any) -> None:
    """Register an adapter class (or "module:attr") for a transformers `model_type`."""
    MODEL_FAMILIES.register(model_type, adapter)


def supported_families() -> list[str]:
    return MODEL_FAMILIES.names()


def _resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return "auto"
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16") from None


def default_model_path() -> Path:
    """The bundled default: the yardstick Qwen2.5-VL trained on the synthetic shapes world (tools/yardstick/)."""
    path = Path(__file__).resolve().parent.parent / "assets" / "yardstick"
    if not (path / "model.safetensors").exists():
        raise ModelLoadError(
            f"the bundled default model is missing from {path} (a broken install?); reinstall livevlm, "
            "pass a checkpoint with --model, or rebuild it from a source checkout with "
            "`python -m tools.yardstick.train`"
        )
    return path


def checkpoint_pixel_bounds(name: str) -> dict[str, int]:
    """min/max pixels per frame from the checkpoint's `video_preprocessor_config.json`, as HF's Qwen2-VL video
    processor reads them (`size.shortest_edge/longest_edge`, or the older `min_pixels/max_pixels`); {} if absent."""
    import json

    from transformers.utils import cached_file

    try:
        path = cached_file(
            name, "video_preprocessor_config.json", _raise_exceptions_for_missing_entries=False
        )
    except OSError:
        return {}
    if path is None:
        return {}
    try:
        cfg = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"unreadable video_preprocessor_config.json in {name!r}: {exc}") from exc
    size = cfg.get("size") or {}
    bounds = {
        "min_pixels": size.get("shortest_edge", cfg.get("min_pixels")),
        "max_pixels": size.get("longest_edge", cfg.get("max_pixels")),
    }
    return {k: int(v) for k, v in bounds.items() if v is not None}


def load_model(
    name_or_path: str | Path | None = None, *, device: str = "cpu", dtype: str = "auto", **adapter_kwargs: Any
):
    """Load `name_or_path` (None: the bundled default) and wrap it in its family's adapter.

    Frame pixel bounds come from the checkpoint's video processor config when it has one; `min_pixels` /
    `max_pixels` in `adapter_kwargs` override them."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer

    if name_or_path is None:
        name_or_path = default_model_path()
    name = str(name_or_path)
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:
        hint = (
            "no such directory" if not Path(name).exists() and name.startswith(("/", ".", "~")) else str(exc)
        )
        raise ModelLoadError(f"cannot load model config from {name!r}: {hint}") from exc
    if config.model_type not in MODEL_FAMILIES:
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
    adapter_cls = MODEL_FAMILIES.load(config.model_type)
    adapter_kwargs = {**checkpoint_pixel_bounds(name), **{k: v for k, v in adapter_kwargs.items() if v}}
    return adapter_cls(model, tokenizer, **adapter_kwargs)
