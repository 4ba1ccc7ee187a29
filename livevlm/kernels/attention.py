"""Which attention implementation a model is loaded with, and why: flash-attn's varlen kernels on a GPU in a 16-bit
dtype when the `gpu` extra is installed, else PyTorch's SDPA. Both go through transformers' attention interface
(nothing is patched), so the query probe and the ViT cache's per-segment attention dispatch the same way."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ._backend import Choice, forced_torch, installed_version
from .grouped_attention import GROUPED_SDPA
from .packed_linear import packed_report

FLASH = "flash_attention_2"
SDPA = "sdpa"


def flash_attn_version() -> str | None:
    """The installed flash-attn's version, or None (flash-attn is imported only when used)."""
    return installed_version("flash_attn", "flash-attn")


def attention_choice(device: torch.device | str, dtype: torch.dtype | None) -> Choice:
    """The implementation `load_model` asks transformers for on `device` in `dtype` (None: the checkpoint's)."""
    device = torch.device(device)
    if forced_torch():
        return Choice(SDPA, "forced by LIVEVLM_KERNELS=torch")
    if device.type != "cuda":
        return Choice(SDPA, f"tensors on {device.type} (flash-attn runs on cuda)")
    if flash_attn_version() is None:
        return Choice(SDPA, "flash-attn not installed (pip install 'livevlm[gpu]')")
    if dtype not in (torch.float16, torch.bfloat16):
        return Choice(SDPA, f"dtype {str(dtype).removeprefix('torch.')} (flash-attn needs float16/bfloat16)")
    return Choice(FLASH, f"flash-attn {flash_attn_version()} on cuda")


def sdpa_choice(device: torch.device | str) -> Choice:
    """Which of PyTorch's SDPA backends the language model's attention may use on `device`, and why."""
    device = torch.device(device)
    if forced_torch():
        return Choice("default", "forced by LIVEVLM_KERNELS=torch (PyTorch's own backend order)")
    if device.type != "cuda":
        return Choice("default", f"tensors on {device.type}")
    return Choice("no_cudnn", "cuDNN plans each new key length (a stream's context grows every chunk and token)")


def sdpa_backends(device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
    """Around a forward on `device`: on CUDA, SDPA without its cuDNN backend (flash, memory-efficient, math).
    cuDNN builds an execution plan per new key length, ~1.9 ms of host time per call at the Qwen2.5-VL-7B shape on
    an H200 (`benchmarks/gpu.py --profile`): 28 layers of it per answer token. The others plan nothing."""
    if sdpa_choice(device).backend != "no_cudnn":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def grouped_choice(device: torch.device | str, dtype: torch.dtype | None) -> Choice:
    """What a language model whose query heads share KV heads runs on `device` in `dtype`, and why."""
    base = attention_choice(device, dtype)
    if base.backend != SDPA:
        return Choice(base.backend, "flash-attn reads grouped KV heads itself")
    if forced_torch():
        return Choice(SDPA, "forced by LIVEVLM_KERNELS=torch (transformers' SDPA repeats K/V per query head)")
    return Choice(GROUPED_SDPA, "query heads folded into their KV head's rows (no K/V repeat)")


def model_attention(model: torch.nn.Module) -> dict[str, str]:
    """What the loaded model's language model and vision tower really dispatch to (`SessionStats.kernels`):
    attention per part, and whether the linears run packed (`packed_linear`)."""
    out: dict[str, str] = {}
    config = model.config
    for part, sub in (("llm", "text_config"), ("vit", "vision_config")):
        cfg = getattr(config, sub, None) or config
        name = str(getattr(cfg, "_attn_implementation", None) or "eager")
        # the query probe (models/query_probe.py) wraps the implementation it names
        out[f"attention_{part}"] = name.removeprefix("livevlm_probe_")
    out["packed_linear"] = str(packed_report(model))
    return out
