"""kernels.attention: which attention implementation a model is loaded with and why, and that the choice is what
the loaded model really dispatches to (shown in `SessionStats.kernels` and `livevlm doctor`)."""

from __future__ import annotations

import numpy as np
import torch

from livevlm import Session, SessionConfig, kernels
from livevlm.kernels import attention


def test_attention_choice_says_why(monkeypatch):
    monkeypatch.delenv(kernels.FORCE_ENV, raising=False)
    monkeypatch.setattr(attention, "flash_attn_version", lambda: None)
    assert (
        str(attention.attention_choice("cpu", torch.bfloat16))
        == "sdpa: tensors on cpu (flash-attn runs on cuda)"
    )
    no_flash = attention.attention_choice("cuda:0", torch.bfloat16)
    assert (no_flash.backend, no_flash.reason) == (
        "sdpa",
        "flash-attn not installed (pip install 'livevlm[gpu]')",
    )
    monkeypatch.setattr(attention, "flash_attn_version", lambda: "2.8.3")
    assert (
        str(attention.attention_choice("cuda", torch.bfloat16))
        == "flash_attention_2: flash-attn 2.8.3 on cuda"
    )
    fp32 = attention.attention_choice("cuda", torch.float32)
    assert fp32.backend == "sdpa" and "float16/bfloat16" in fp32.reason
    assert attention.attention_choice("cpu", torch.float16).backend == "sdpa"  # flash-attn never on cpu
    assert attention.grouped_choice("cuda", torch.bfloat16).backend == "flash_attention_2"
    assert attention.grouped_choice("cpu", torch.bfloat16).backend == "sdpa_grouped"
    monkeypatch.setenv(kernels.FORCE_ENV, "torch")
    assert str(attention.attention_choice("cuda", torch.bfloat16)) == "sdpa: forced by LIVEVLM_KERNELS=torch"
    assert attention.grouped_choice("cpu", torch.bfloat16).backend == "sdpa"


def test_loaded_model_dispatches_to_the_chosen_attention(tiny_adapters):
    """The tiny model is loaded on cpu: grouped-query SDPA for the LLM (its 4 query heads share 2 KV heads), SDPA
    for the ViT, also after a query-aware question (the query probe wraps it and is reported as what it wraps)."""
    adapter = tiny_adapters["qwen2_5_vl"]
    session = Session(adapter, SessionConfig(kv="retrieval", max_pixels=16 * 28 * 28))
    rng = np.random.default_rng(0)
    session.ingest([rng.integers(0, 256, (56, 56, 3), dtype=np.uint8) for _ in range(4)])
    list(session.ask_ids("What moves?", max_new_tokens=2))
    stats = session.stats
    session.close()
    assert stats.kernels["attention_llm"] == "sdpa_grouped"  # 2 KV heads for 4 query heads: folded
    assert stats.kernels["attention_vit"] == "sdpa"
    assert adapter.model.config.text_config._attn_implementation == "livevlm_probe_sdpa_grouped"


def test_doctor_reports_the_attention_choice():
    from livevlm.cli.doctor import report

    tables = report()["kernels"]
    assert tables and all(
        table["attention"] == str(attention.attention_choice(device, torch.bfloat16))
        for device, table in tables.items()
    )


def test_sdpa_backends_leave_out_cudnn_on_cuda_only(monkeypatch):
    """cuDNN's SDPA plans each new key length (1.9 ms of host time per call at 7B on an H200): on CUDA the LLM's
    forwards exclude it; elsewhere, and with LIVEVLM_KERNELS=torch, PyTorch's own order stays."""
    import contextlib

    from livevlm import kernels
    from livevlm.kernels.attention import sdpa_backends, sdpa_choice

    monkeypatch.delenv(kernels.FORCE_ENV, raising=False)
    assert sdpa_choice("cuda:0").backend == "no_cudnn" and sdpa_choice("cpu").backend == "default"
    assert kernels.backend(device="cuda")["sdpa_backends"].backend == "no_cudnn"
    assert isinstance(sdpa_backends("cpu"), contextlib.nullcontext)
    assert not isinstance(sdpa_backends("cuda"), contextlib.nullcontext)
    monkeypatch.setenv(kernels.FORCE_ENV, "torch")
    assert str(sdpa_choice("cuda")).startswith("default: forced by LIVEVLM_KERNELS=torch")
    assert isinstance(sdpa_backends("cuda"), contextlib.nullcontext)
