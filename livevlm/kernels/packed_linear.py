"""Linears on oneDNN's blocked weight layout, packed once at load in place of the plain weight.

On CPU a bf16 `F.linear` is a oneDNN matmul that re-lays out the whole weight on every call. For few rows (the
ViT cache's partial passes, a chunk's prefill of a few dozen visual tokens) weight reads dominate and that
relayout costs more than the product: Qwen2-VL-2B tower shapes, 10 rows, weights from DRAM, one thread:
3840x1280 1.25 ms plain vs 0.77 ms packed; full 216-row passes gain too (10.5 vs 9.7 ms). `load_model` packs
every linear but the output head (often tied to the embeddings): `pack_linears` swaps each `nn.Linear` for a
`PackedLinear` holding only the packed weight (no second copy: the plain weight is dropped), and only where the
packed product equals the module's own bit for bit on probe inputs, so no feature, answer or
lossless-equals-baseline check moves. `state_dict()` gives the plain weight back (`to_dense`), so
fingerprints, snapshots and `save_pretrained` see the checkpoint as it was.

bf16 only: fp32 `F.linear` is MKL's sgemm, whose sums round differently from oneDNN's (a packed fp32 tower
would change features at ~1e-4). oneDNN's bf16 packing needs avx512bw, avx_ne_convert or amx_bf16 (an AMD
EPYC without AVX-512 lacks them: the plain modules stay).
"""

from __future__ import annotations

import ctypes
import mmap
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch

from ._backend import Choice, cpu_flags, forced_torch

PACKED = "packed"
BF16_PACK_FLAGS = ("avx512bw", "avx_ne_convert", "amx_bf16")
PROBE_ROWS = (1, 13, 64)
"""Row counts checked at pack time, once per weight shape (oneDNN picks kernels by shape and row count, not by
the values: a few rows and a full pass)."""


def pack_choice(
    device: torch.device | str, dtype: torch.dtype | None, flags: frozenset[str] | None = None
) -> Choice:
    """Whether `pack_linears` packs weights of `dtype` on `device`, and why (`flags`: the CPU's feature flags,
    read from /proc/cpuinfo when None)."""
    device = torch.device(device)
    if forced_torch():
        return Choice("torch", "forced by LIVEVLM_KERNELS=torch")
    if device.type != "cpu":
        return Choice("torch", f"weights on {device.type}")
    if dtype != torch.bfloat16:
        name = str(dtype).removeprefix("torch.")
        return Choice("torch", f"{name} linears stay plain (packing is bit-exact for bf16 only)")
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return Choice("torch", "torch built without oneDNN linear packing")
    flags = cpu_flags() if flags is None else flags
    if not any(f in flags for f in BF16_PACK_FLAGS):
        return Choice("torch", "cpu lacks avx512bw / avx_ne_convert / amx_bf16 for the oneDNN bf16 packing")
    return Choice(PACKED, "bf16 linears on the oneDNN blocked weight layout (packed once, no plain copy)")


class PackedLinear(torch.nn.Module):
    """`nn.Linear` whose weight is held only in oneDNN's blocked layout (CPU, bf16); same outputs bit for bit.

    `weight` is the packed (opaque) tensor: its dtype, device and shape read as the plain one's (what model code
    asks of a weight), while arithmetic on it raises instead of computing on the blocked layout. The plain
    weight comes back through `state_dict()` and `dense_weight()`."""

    def __init__(
        self, packed: torch.Tensor, bias: torch.Tensor | None, in_features: int, out_features: int
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.packed = packed
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear) -> PackedLinear:
        with torch.no_grad():
            weight = linear.weight.detach()
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
            bias = None if linear.bias is None else linear.bias.detach()
        return cls(packed, bias, linear.in_features, linear.out_features)

    @property
    def weight(self) -> torch.Tensor:
        return self.packed

    def dense_weight(self) -> torch.Tensor:
        """The plain (out, in) weight, rebuilt from the packed one (a copy)."""
        return self.packed.to_dense()

    def unpacked(self) -> torch.nn.Linear:
        """A plain `nn.Linear` with the same weight and bias."""
        linear = torch.nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None, device="meta"
        )
        linear.weight = torch.nn.Parameter(self.dense_weight(), requires_grad=False)
        if self.bias is not None:
            linear.bias = self.bias
        return linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).contiguous()
        out = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
        return out.reshape(*x.shape[:-1], self.out_features)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = self.dense_weight()

    def _load_from_state_dict(
        self, state_dict: dict, prefix: str, local_metadata, strict, missing, unexpected, errors
    ) -> None:
        weight = state_dict.get(prefix + "weight")
        if weight is None:
            missing.append(prefix + "weight")
        elif (
            tuple(weight.shape) != (self.out_features, self.in_features) or weight.dtype != self.packed.dtype
        ):
            errors.append(
                f"{prefix}weight: {tuple(weight.shape)} {weight.dtype} cannot replace a packed "
                f"({self.out_features}, {self.in_features}) {self.packed.dtype} weight"
            )
        else:
            with torch.no_grad():
                self.packed = torch.ops.mkldnn._reorder_linear_weight(
                    weight.detach().to("cpu").contiguous(), None
                )
        rest = {k: v for k, v in state_dict.items() if k != prefix + "weight"}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing, unexpected, errors)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, packed"


@dataclass(frozen=True)
class PackReport:
    """What `pack_linears` did: the choice, modules packed, and bytes of weight now held packed."""

    choice: Choice
    modules: int = 0
    weight_bytes: int = 0
    file_bytes_released: int = 0
    """Bytes of plain weights mapped from the checkpoint file whose pages were handed back (`drop_file_pages`)."""


def _probe_equal(linear: torch.nn.Linear, packed: PackedLinear) -> bool:
    """True when the packed product equals the module's own on random rows of each probe size."""
    gen = torch.Generator().manual_seed(0)
    for rows in PROBE_ROWS:
        x = torch.randn(rows, linear.in_features, generator=gen).to(linear.weight.dtype)
        if not torch.equal(linear(x), packed(x)):
            return False
    return True


def pack_linears(module: Any, skip: tuple[Any, ...] = (), release_pages: bool = True) -> PackReport:
    """Swap every `nn.Linear` under `module` (not under a module in `skip`) for a `PackedLinear`, when
    `pack_choice` allows for its weights; all or nothing: should packing fail or change a probe's product, every
    module stays plain and the report says why. `release_pages=False` when the plain weights stay in use
    elsewhere (their file pages are then left resident)."""
    skipped = {id(m) for s in skip for m in s.modules()}
    targets = [
        (parent, f"{where}.{name}" if where else name, child)
        for where, parent in module.named_modules()
        if id(parent) not in skipped
        for name, child in parent.named_children()
        if type(child) is torch.nn.Linear and id(child) not in skipped
    ]
    owners = Counter(p.data_ptr() for m in module.modules() for p in m.parameters(recurse=False))
    # a weight tied to another module (lm_head and the embeddings) stays plain: packing would untie it
    targets = [t for t in targets if owners[t[2].weight.data_ptr()] == 1]
    if not targets:
        return PackReport(Choice("torch", "no linear layers to pack"))
    choice = pack_choice(targets[0][2].weight.device, targets[0][2].weight.dtype)
    if choice.backend != PACKED:
        return PackReport(choice)
    swaps: list[tuple[Any, str, PackedLinear]] = []
    mappings, released = _file_mappings(), 0
    probed: dict[tuple[int, int, bool], bool] = {}
    reason = None
    with torch.inference_mode():
        for parent, name, linear in targets:  # one at a time: never two copies of every weight
            if linear.weight.dtype != torch.bfloat16 or linear.weight.device.type != "cpu":
                reason = f"{name}: {linear.weight.dtype} on {linear.weight.device} cannot be packed"
                break
            try:
                packed = PackedLinear.from_linear(linear)
            except RuntimeError as exc:  # oneDNN refused this cpu / shape: leave every module as it is
                reason = f"oneDNN packing failed: {str(exc).splitlines()[0][:160]}"
                break
            shape = (linear.in_features, linear.out_features, linear.bias is not None)
            if shape not in probed:  # oneDNN picks kernels by shape, not by values: probe once per shape
                probed[shape] = _probe_equal(linear, packed)
            if not probed[shape]:
                reason = f"packed product differs from F.linear for {name}"
                break
            child = name.rsplit(".", 1)[-1]
            setattr(parent, child, packed)
            swaps.append((parent, child, packed))
            # a weight mmapped from the checkpoint: its pages leave the resident set now, not at exit
            if release_pages:
                released += drop_file_pages([linear.weight], mappings)
    if reason is not None:
        for parent, name, packed in swaps:  # all or nothing: the plain modules back
            setattr(parent, name, packed.unpacked())
        return PackReport(Choice("torch", f"{reason}: every linear stays plain"))
    del targets, linear  # the last references to the plain modules: their weights are freed here
    trim_heap()
    nbytes = sum(p.in_features * p.out_features * 2 for _, _, p in swaps)
    return PackReport(choice, len(swaps), nbytes, released)


MADV_DONTNEED = 4


def _file_mappings() -> list[tuple[int, int]]:
    """(start, end) of this process's mappings backed by a regular file (Linux /proc/self/maps; [] elsewhere)."""
    try:
        with open("/proc/self/maps", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/") and not parts[5].startswith("/dev/"):
            start, end = (int(v, 16) for v in parts[0].split("-"))
            out.append((start, end))
    return out


def drop_file_pages(tensors: list[torch.Tensor], mappings: list[tuple[int, int]] | None = None) -> int:
    """Hand back the resident pages of tensors whose data is mapped from a file (weights a loader mmapped from
    the checkpoint); returns the bytes released. Only whole pages inside each tensor and inside one file
    mapping: such pages are clean copies of the file (weights are never written), so should anything read them
    again they are read back from the file. Heap memory is never touched. Packing reads every plain weight
    once; without this the read pages of a 2B tower (+1.3 GiB) stayed resident beside their packed copies.
    `mappings`: `_file_mappings()` read once by the caller."""
    mappings = _file_mappings() if mappings is None else mappings
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError, TypeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page, released = mmap.PAGESIZE, 0
    for t in tensors:
        start = t.data_ptr()
        lo = -(-start // page) * page
        hi = (start + t.numel() * t.element_size()) // page * page
        if (
            hi > lo
            and any(a <= lo and hi <= b for a, b in mappings)
            and madvise(lo, hi - lo, MADV_DONTNEED) == 0
        ):
            released += hi - lo
    return released


def trim_heap() -> bool:
    """Hand freed heap memory back to the OS (glibc `malloc_trim`); False where there is no glibc.

    The plain weights freed while packing sit in glibc's heap between the packed ones it allocated, so the
    process would keep their pages (a 2B tower: +1.2 GiB RSS) though nothing uses them."""
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library this process runs on
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS, Windows): nothing to hand back
        return False
    trim(0)
    return True


def is_packed(module: Any) -> bool:
    """True when some linear under `module` runs packed (what a block runner's few-row linears then call)."""
    return any(isinstance(m, PackedLinear) for m in module.modules())


def packed_report(module: Any) -> Choice:
    """What a (loaded) module's linears run: packed (how many), or plain and why (`SessionStats.kernels`)."""
    packed = sum(isinstance(m, PackedLinear) for m in module.modules())
    if packed:
        return Choice(PACKED, f"{packed} linears on oneDNN blocked bf16 weights")
    first = next((m for m in module.modules() if isinstance(m, torch.nn.Linear)), None)
    if first is None:
        return Choice("torch", "no linear layers")
    now = pack_choice(first.weight.device, first.weight.dtype)
    return Choice("torch", "plain modules (not packed when loaded)" if now.backend == PACKED else now.reason)
