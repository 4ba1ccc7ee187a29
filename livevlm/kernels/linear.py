"""Few-row linears for the ViT cache's partial passes: oneDNN on the module's own fp32 weight, else F.linear.

Partial passes multiply a few rows by every weight matrix of a block. For fp32 on CPU, `F.linear` goes to a
BLAS sgemm that repacks the whole weight on every call; oneDNN's `_linear_pointwise` reads the module's own
weight as it is and is faster at few rows (Qwen2-VL-2B tower, balanced preset, one thread: ~0.57 vs ~0.63 of
a full encode). No packed copy of any weight is kept: a prepacked copy of every ViT linear was faster still
(~0.52) but held the tower's weights twice (+2.5 GiB RSS at the 2B shape in fp32, issue 21). bf16 stays on
`F.linear` (itself oneDNN; calling oneDNN on the plain weight gained nothing there), unless the tower's
linears were packed at load (`kernels.packed_linear`: the weight held only in the blocked layout, so no copy):
then the packed modules run as they are ("packed"). Should oneDNN refuse at run time, the path falls back to
`F.linear` for good, with the reason.
"""

from __future__ import annotations

import torch

from ._backend import Choice, cpu_flags, forced_torch


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T + bias through oneDNN on the plain (out, in) weight: nothing is copied or kept."""
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")


def linear_choice(
    device: torch.device,
    dtype: torch.dtype,
    enabled: bool = True,
    flags: frozenset[str] | None = None,
    packed: bool = False,
) -> Choice:
    """Which backend `RowLinears` runs for weights of `dtype` on `device`, and why (`flags`: the CPU's
    feature flags, read from /proc/cpuinfo when None; oneDNN's fp32 path needs avx2 at least; `packed`: the
    tower's linears are `kernels.packed_linear.PackedLinear`s, whose own forward is the fast path)."""
    if packed:
        return Choice("packed", "the tower linears themselves, packed at load (kernels.packed_linear)")
    if forced_torch():
        return Choice("torch", "forced by LIVEVLM_KERNELS=torch")
    if not enabled:
        return Choice("torch", "oneDNN few-row linear disabled")
    if device.type != "cpu":
        return Choice("torch", f"weights on {device.type}")
    if dtype != torch.float32:
        return Choice("torch", f"F.linear for {str(dtype).removeprefix('torch.')} (no faster copy-free path)")
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return Choice("torch", "torch built without oneDNN linear")
    flags = cpu_flags() if flags is None else flags
    if "avx2" not in flags:
        return Choice("torch", "cpu lacks avx2 for oneDNN's fp32 linear")
    return Choice("onednn", "fp32 few-row linear on the module's own weight (no packed copy)")


class RowLinears:
    """`nn.Linear` forwards for few rows: oneDNN on the module's own fp32 weight (CPU), F.linear otherwise.

    Holds no tensors: every call reads the module's weight as it is. `backend` / `choice` say which path
    runs; a oneDNN call that fails at run time switches to "torch" for good, with the reason."""

    def __init__(
        self, device: torch.device, dtype: torch.dtype, enabled: bool = True, packed: bool = False
    ) -> None:
        self.choice = linear_choice(device, dtype, enabled, packed=packed)

    @property
    def backend(self) -> str:
        return self.choice.backend

    def __call__(self, linear: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.choice.backend == "onednn" and isinstance(linear, torch.nn.Linear):
            try:
                return onednn_linear(x, linear.weight, linear.bias)
            except RuntimeError as exc:  # oneDNN refused this cpu / shape: the reference path from now on
                self.choice = Choice("torch", f"oneDNN linear failed: {str(exc).splitlines()[0][:160]}")
        return linear(x)
