"""kernels.varlen_attention: a Qwen vision block's segments (frames, Qwen2.5-VL windows) in one call, against a
float64 dense masked-attention oracle; and the tower's dense encode through it (the CUDA path, forced here) equal
to transformers' own forward. The uneven-segment path's Triton kernel is checked in tests/test_triton_kernels.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from livevlm import kernels
from livevlm.kernels.varlen_attention import varlen_attention, vision_choice
from livevlm.models.preprocess import frames_to_patches


def oracle(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: list[int]) -> torch.Tensor:
    """(1, H, N, d) -> (1, N, H, d): float64 attention with a block-diagonal mask of the segments."""
    n = q.shape[2]
    seg = torch.repeat_interleave(torch.arange(len(bounds) - 1), torch.tensor(bounds).diff())
    assert seg.numel() == n
    mask = seg[:, None] == seg[None, :]
    scores = (q.double() @ k.double().transpose(-1, -2)) * q.shape[-1] ** -0.5
    out = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v.double()
    return out.transpose(1, 2)


def qkv(n: int, dtype: torch.dtype, heads: int = 3, dim: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(n, 3, heads, dim, generator=g).to(dtype)  # the tower's (N, 3, H, d) then (1, H, N, d) views
    return tuple(t.transpose(0, 1).unsqueeze(0) for t in qkv.permute(1, 0, 2, 3).unbind(0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "bounds",
    [[0, 16, 32, 48, 64], [0, 16, 20, 36, 37, 45], [0, 29], [0, 1, 2, 3]],
    ids=["equal", "uneven", "one", "ones"],
)
def test_varlen_attention_matches_a_masked_oracle(dtype, bounds):
    q, k, v = qkv(bounds[-1], dtype)
    cu = torch.tensor(bounds, dtype=torch.int32)
    longest = int(cu.diff().max())
    out = varlen_attention(q, k, v, cu, longest)
    ref = oracle(q, k, v, bounds)
    assert out.shape == (1, bounds[-1], 3, 16) and out.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    # the longest length unknown: the uneven path, same answer
    torch.testing.assert_close(varlen_attention(q, k, v, cu, None).double(), ref, rtol=tol, atol=tol)


def test_varlen_attention_one_segment_without_bounds_and_bad_shapes():
    q, k, v = qkv(10, torch.float32)
    out = varlen_attention(q, k, v, None, None).double()
    torch.testing.assert_close(out, oracle(q, k, v, [0, 10]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(1, H, N, d\)"):
        varlen_attention(q[0], k[0], v[0], None, None)
    with pytest.raises(ValueError, match="S >= 1"):
        varlen_attention(q, k, v, torch.tensor([0], dtype=torch.int32), None)


def test_vision_choice_reasons(monkeypatch):
    monkeypatch.delenv(kernels.FORCE_ENV, raising=False)
    assert str(vision_choice("cuda:0")) == "varlen: cuda: one call per block, no host sync for the segment bounds"
    assert vision_choice("cpu").backend == "torch"
    assert kernels.backend(device="cpu")["vision_attention"].backend == "torch"
    monkeypatch.setenv(kernels.FORCE_ENV, "torch")
    assert str(vision_choice("cuda")).startswith("torch: forced by LIVEVLM_KERNELS=torch")
    monkeypatch.setenv(kernels.FORCE_ENV, "triton")
    assert str(vision_choice("cpu")) == "varlen: forced by LIVEVLM_KERNELS=triton"


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl"])
@pytest.mark.parametrize("side", [112, 168], ids=["8x8-patches", "12x12-patches"])
def test_dense_encode_through_varlen_equals_the_towers_forward(tiny_adapters, family, side, monkeypatch):
    """The path CUDA takes (forced by LIVEVLM_KERNELS=triton): our block loop with one varlen call per block gives
    the tower's own forward bit for bit on CPU (equal windows: one batched SDPA; Qwen2-VL: one frame segment)."""
    adapter = tiny_adapters[family]
    frames = np.random.default_rng(1).integers(0, 256, (2, side, side, 3), dtype=np.uint8)
    pixels, grid = frames_to_patches(frames, adapter.geometry, size=(side, side))
    monkeypatch.setenv(kernels.FORCE_ENV, "torch")
    assert not adapter.vision_runner().varlen
    reference = adapter.vision_features(pixels, tuple(grid))  # transformers' forward
    monkeypatch.setenv(kernels.FORCE_ENV, "triton")
    runner = adapter.vision_runner()
    assert runner.varlen
    ours = adapter.vision_features(pixels, tuple(grid))
    assert torch.equal(ours, reference)
    assert tuple(grid) in runner._layouts  # built once per grid, kept
