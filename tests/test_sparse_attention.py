"""kernels/sparse_attention: the torch reference of sparse-row attention against a dense masked-SDPA oracle in
float64, on odd shapes (N=37, uneven segments, a 1-token segment, unsorted rows, no rows, every row).
The Triton kernel is checked against both in tests/test_triton_kernels.py (under Triton's interpreter on CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from host_syncs import HostWaits

from livevlm import kernels
from livevlm.kernels.sparse_attention import (
    sparse_row_attention_masked,
    sparse_row_attention_torch,
    sparse_row_choice,
)

N = 37
SEGMENTS = {  # cu_seqlens over N tokens: uneven windows with a 1-token one, the whole frame, no bounds
    "windows": [0, 5, 6, 20, 37],
    "frame": [0, 37],
    "none": None,
}


def make_rows(kind: str, g: torch.Generator) -> torch.Tensor:
    """The change sets tested: none, every row (shuffled), an unsorted subset, the lone row of the 1-token segment."""
    return {
        "empty": torch.empty(0, dtype=torch.long),
        "all": torch.randperm(N, generator=g),
        "unsorted": torch.randperm(N, generator=g)[:11],
        "lone": torch.tensor([5]),
    }[kind]


def dense_mask(rows: torch.Tensor, cu: list[int] | None) -> torch.Tensor | None:
    """(n, N) True where key j shares row r's segment: the mask the dense path built."""
    if cu is None:
        return None
    seg = torch.repeat_interleave(torch.arange(len(cu) - 1), torch.tensor(cu).diff())
    return seg[rows][:, None] == seg[None, :]


def masked_sdpa(q, keys, values, rows, cu, scale) -> torch.Tensor:
    """The dense path: all N keys, a boolean mask per row (float64 inputs give the oracle)."""
    mask = dense_mask(rows, cu)
    return F.scaled_dot_product_attention(q[None], keys[None], values[None], attn_mask=mask, scale=scale)[0]


def inputs(kind: str, dtype: torch.dtype, heads: int = 3, dim: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rows = make_rows(kind, g)
    q = torch.randn(len(rows), heads, dim, generator=g).to(dtype).transpose(0, 1)  # (H, n, d) strided
    keys, values = (torch.randn(heads, N, dim, generator=g).to(dtype) for _ in range(2))
    return q, keys, values, rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("segments", list(SEGMENTS))
@pytest.mark.parametrize("kind", ["empty", "all", "unsorted", "lone"])
def test_torch_reference_matches_the_dense_masked_oracle(dtype, segments, kind):
    cu = SEGMENTS[segments]
    q, keys, values, rows = inputs(kind, dtype)
    scale = 0.3
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    out = sparse_row_attention_torch(q, keys, values, rows, cu_t, scale)
    assert out.shape == q.shape and out.dtype == dtype
    oracle = masked_sdpa(q.double(), keys.double(), values.double(), rows, cu, scale)
    dense = masked_sdpa(q, keys, values, rows, cu, scale)  # what the ViT cache ran before, same dtype
    if not len(rows):
        return
    err = (out.double() - oracle).abs().max().item()
    dense_err = (dense.double() - oracle).abs().max().item()
    assert err <= 2 * dense_err + 1e-6, f"{err:.3g} vs the dense path's {dense_err:.3g}"
    if dtype == torch.float32:
        assert err < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("segments", list(SEGMENTS))
@pytest.mark.parametrize("kind", ["empty", "all", "unsorted", "lone"])
def test_masked_path_matches_the_reference(dtype, segments, kind):
    """CUDA's backend (one SDPA, the segment mask built on the device), run here on CPU tensors: the reference's
    answers to rounding, a no-row call an empty result, one segment the reference's very call."""
    cu = SEGMENTS[segments]
    q, keys, values, rows = inputs(kind, dtype, seed=1)
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    out = sparse_row_attention_masked(q, keys, values, rows, cu_t, 0.3)
    reference = sparse_row_attention_torch(q, keys, values, rows, cu_t, 0.3)
    assert out.shape == q.shape and out.dtype == dtype
    if segments != "windows":
        assert torch.equal(out, reference)
    oracle = masked_sdpa(q.double(), keys.double(), values.double(), rows, cu, 0.3)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.double(), oracle, rtol=tol, atol=tol)
    torch.testing.assert_close(out, reference, rtol=tol, atol=tol)


def test_backend_choice_per_device(monkeypatch):
    """cuda: the masked SDPA (measured faster than the Triton kernel on an H200); cpu: the per-segment
    reference; LIVEVLM_KERNELS forces either kernel."""
    monkeypatch.delenv(kernels.FORCE_ENV, raising=False)
    assert sparse_row_choice("cuda:0").backend == "sdpa"
    assert "no host sync" in sparse_row_choice("cuda").reason
    assert kernels.backend(device="cuda")["sparse_attention"] == sparse_row_choice("cuda")
    assert sparse_row_choice("cpu").backend == "torch"
    monkeypatch.setenv(kernels.FORCE_ENV, "torch")
    assert str(sparse_row_choice("cuda")) == "torch: forced by LIVEVLM_KERNELS=torch"
    monkeypatch.setenv(kernels.FORCE_ENV, "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert sparse_row_choice("cuda").backend == sparse_row_choice("cpu").backend == "triton"


@pytest.mark.parametrize("attend", [sparse_row_attention_torch, sparse_row_attention_masked], ids=["torch", "masked"])
def test_each_row_reads_only_its_own_segment(attend):
    q, keys, values, rows = inputs("all", torch.float32)
    cu = torch.tensor(SEGMENTS["windows"], dtype=torch.int32)
    before = attend(q, keys, values, rows, cu, 0.5)
    keys[:, 6:20] += 10.0  # a third segment's keys and values moved: only its rows may change
    values[:, 6:20] -= 3.0
    after = attend(q, keys, values, rows, cu, 0.5)
    inside = (rows >= 6) & (rows < 20)
    assert torch.equal(after[:, ~inside], before[:, ~inside])
    assert not torch.isclose(after[:, inside], before[:, inside]).all(dim=-1).any()


def test_public_op_runs_the_reference_on_cpu(monkeypatch):
    monkeypatch.delenv(kernels.FORCE_ENV, raising=False)
    q, keys, values, rows = inputs("unsorted", torch.float32)
    cu = torch.tensor(SEGMENTS["windows"], dtype=torch.int32)
    assert kernels.backend()["sparse_attention"].backend == "torch"
    expected = sparse_row_attention_torch(q, keys, values, rows, cu, 12**-0.5)
    assert torch.equal(kernels.sparse_row_attention(q, keys, values, rows, cu), expected)  # scale: d^-1/2


@pytest.mark.parametrize("force", ["", "torch"])
def test_a_sync_free_call_never_reads_the_bounds_on_the_host(monkeypatch, force):
    """What a fixed-shape ViT pass asks for (it is captured as a CUDA graph on a GPU, where a host read fails the
    capture): the masked SDPA in place of the per-segment reference, on CPU and under LIVEVLM_KERNELS=torch."""
    monkeypatch.setenv(kernels.FORCE_ENV, force)
    q, keys, values, rows = inputs("unsorted", torch.float32)
    cu = torch.tensor(SEGMENTS["windows"], dtype=torch.int32)
    with HostWaits() as usual:
        expected = kernels.sparse_row_attention(q, keys, values, rows, cu)
    with HostWaits() as waits:
        out = kernels.sparse_row_attention(q, keys, values, rows, cu, sync_free=True)
    assert usual.found["tolist"] >= 1 and not waits.found, (usual.found, waits.found)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"q": torch.randn(2, 4, 12)}, r"heads or head dim; got q \(2, 4, 12\), keys \(3, 37, 12\)"),
        ({"q": torch.randn(3, 4, 8)}, r"heads or head dim; got q \(3, 4, 8\)"),
        ({"values": torch.randn(3, 36, 12)}, r"values \(3, 36, 12\)"),
        ({"keys": torch.randn(37, 12)}, r"keys and values \(H, N, d\); got q \(3, 4, 12\), keys \(37, 12\)"),
        ({"rows": torch.arange(5)}, r"one integer row index per query; got .* rows \(5,\)"),
        ({"rows": torch.zeros(4)}, r"one integer row index per query"),
        ({"q": torch.randn(3, 4, 12).double()}, "one dtype"),
        ({"cu": torch.tensor([0], dtype=torch.int32)}, r"cu_seqlens \(S\+1,\) with S >= 1, got \(1,\)"),
        ({"cu": torch.tensor([0, 5, 30], dtype=torch.int32)}, "from 0 to N=37, got 0 .. 30"),
    ],
)
def test_mismatched_shapes_are_refused_naming_them(change, message):
    args = {
        "q": torch.randn(3, 4, 12),
        "keys": torch.randn(3, N, 12),
        "values": torch.randn(3, N, 12),
        "rows": torch.tensor([0, 9, 3, 30]),
        "cu": torch.tensor(SEGMENTS["windows"], dtype=torch.int32),
    } | change
    with pytest.raises(ValueError, match=message):
        kernels.sparse_row_attention(args["q"], args["keys"], args["values"], args["rows"], args["cu"])
