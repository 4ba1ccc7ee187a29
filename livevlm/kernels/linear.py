"""Few-row linear layers on weights prepacked once for oneDNN, with the plain `F.linear` fallback.

On CPU, oneDNN's bf16 matmul re-lays out the whole weight on every call (12 rows x 1280x5120: 1.06 ms vs
0.64 ms prepacked, one thread), so the ViT cache's partial passes run block linears on prepacked weights.
oneDNN's bf16 prepack needs avx512bw, avx_ne_convert or amx: without them (e.g. AMD EPYC without AVX-512) it
raises, so the backend is chosen from the CPU's flags and, should packing still fail, falls back once.
"""

from __future__ import annotations

import threading

import torch

from ._backend import Choice, cpu_flags, forced_torch

BF16_PACK_FLAGS = ("avx512bw", "avx_ne_convert", "amx_bf16")


def linear_choice(
    device: torch.device, dtype: torch.dtype, enabled: bool = True, flags: frozenset[str] | None = None
) -> Choice:
    """Which backend `PackedLinears` runs for weights of `dtype` on `device`, and why (`flags`: the CPU's
    feature flags, read from /proc/cpuinfo when None)."""
    if forced_torch():
        return Choice("torch", "forced by LIVEVLM_KERNELS=torch")
    if not enabled:
        return Choice("torch", "prepacking disabled")
    if device.type != "cpu":
        return Choice("torch", f"weights on {device.type}")
    if dtype not in (torch.float32, torch.bfloat16):
        return Choice("torch", f"no oneDNN prepack for {dtype}")
    ops = torch.ops.mkldnn
    if not (torch.backends.mkldnn.is_available() and hasattr(ops, "_reorder_linear_weight")):
        return Choice("torch", "torch built without oneDNN linear prepack")
    flags = cpu_flags() if flags is None else flags
    if dtype == torch.bfloat16 and not any(f in flags for f in BF16_PACK_FLAGS):
        return Choice("torch", "cpu lacks avx512bw / avx_ne_convert / amx_bf16 for bf16 prepack")
    return Choice("onednn", f"prepacked {str(dtype).removeprefix('torch.')} weights on this cpu")


class PackedLinears:
    """`nn.Linear` forwards with the weight prepacked once for oneDNN (CPU, fp32/bf16); F.linear otherwise.

    The packed copy is made on first use and shared by every stream of the model. `backend` / `choice` say
    which path runs; a prepack that fails at run time switches to "torch" for good, with the reason."""

    def __init__(self, device: torch.device, dtype: torch.dtype, enabled: bool = True) -> None:
        self.choice = linear_choice(device, dtype, enabled)
        self._packed: dict[torch.nn.Module, torch.Tensor] = {}
        self._lock = threading.Lock()

    @property
    def backend(self) -> str:
        return self.choice.backend

    def __call__(self, linear: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        if self.choice.backend == "torch":
            return linear(x)
        weight = self._packed.get(linear)
        if weight is None:
            weight = self._pack(linear)
        if weight is None:
            return linear(x)
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, linear.bias, "none", [], "")

    def _pack(self, linear: torch.nn.Linear) -> torch.Tensor | None:
        with self._lock, torch.inference_mode():
            if linear in self._packed:
                return self._packed[linear]
            try:
                weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
            except RuntimeError as exc:  # oneDNN refused this cpu / dtype: the reference path from now on
                self.choice = Choice("torch", f"oneDNN prepack failed: {str(exc).splitlines()[0][:160]}")
                return None
            self._packed[linear] = weight
            return weight
