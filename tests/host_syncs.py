"""What a function does that a CUDA graph cannot capture, seen on any device: the aten ops that make the host
wait for the device (`.item()`, `.tolist()`, `bool(t)`, `nonzero`, boolean-mask indexing, `unique`, ...) and
tensors built from host data (`torch.tensor([...])`: a copy from pageable memory, refused while capturing).
Recorded with a TorchDispatchMode, so a CPU test can tell whether the function GraphedCall captures on CUDA
would capture at all."""

from __future__ import annotations

import weakref
from collections import Counter
from typing import Any, Self

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNCING = frozenset(
    {
        "_local_scalar_dense",  # .item(), .tolist(), int(t), bool(t), if t: ...
        "nonzero",
        "masked_select",
        "unique_consecutive",
        "_unique2",
        "unique_dim",
        "equal",
        "is_nonzero",
        "bincount",
        "histc",
    }
)
"""aten ops (overload-free names) whose result size or value the host needs before it can go on."""

HOST_DATA = frozenset({"lift_fresh", "lift_fresh_copy"})
"""Ops that make a tensor of host data (torch.tensor / as_tensor of Python values)."""

HOST_READS = ("tolist", "numpy", "__array__")
"""Tensor methods that read a tensor's values on the host."""


class HostWaits(TorchDispatchMode):
    """Counts the ops that would sync or copy host data, by name (`found`); nothing else changes."""

    def __init__(self) -> None:
        super().__init__()
        self.found: Counter[str] = Counter()

    def __enter__(self) -> Self:
        # on CPU tensors these read memory without dispatching an op (on CUDA they copy to the host and wait)
        self._saved = {name: getattr(torch.Tensor, name) for name in HOST_READS}
        for name, method in self._saved.items():
            setattr(torch.Tensor, name, self._counting(name, method))
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        for name, method in self._saved.items():
            setattr(torch.Tensor, name, method)
        super().__exit__(*exc)

    def _counting(self, name: str, method: Any) -> Any:
        def counted(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            self.found[name] += 1
            return method(tensor, *args, **kwargs)

        return counted

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = func._schema.name.removeprefix("aten::")
        if name in SYNCING or name in HOST_DATA:
            self.found[name] += 1
        elif name == "repeat_interleave" and kwargs.get("output_size") is None and isinstance(args[0], torch.Tensor):
            self.found[name] += 1  # the output's length is the repeats' sum
        elif name in ("index", "index_put", "index_put_", "_index_put_impl_") and _bool_index(args[1]):
            self.found[f"{name} with a boolean mask"] += 1  # a nonzero inside
        return func(*args, **kwargs)


def _bool_index(indices: Any) -> bool:
    return any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in indices or ())


class DeviceWaits(HostWaits):
    """`HostWaits` for whole loops on CPU standing in for a GPU: counts only the waits on what would live on the
    device there — the model's weights, what `livevlm.kernels.transfer.upload` sent, and everything computed from
    either — so a host-side read (`int(positions.max())` of ids built on the host) is not counted and a read of
    a feature, a score or a device position is. Not seen: tensors made on the device by factory ops
(`torch.arange(..., device=)`) or from host data (`torch.tensor(..., device=)`: a waiting copy; `upload` it)."""

    def __init__(self, *modules: torch.nn.Module) -> None:
        super().__init__()
        self._device: dict[int, dict[int, weakref.ref]] = {}  # storage address -> the tensors marked on it
        for module in modules:
            for t in (*module.parameters(), *module.buffers()):
                self.mark(t)

    def mark(self, t: torch.Tensor) -> torch.Tensor:
        """Treat `t` (and the views of its storage made from it) as device memory."""
        self._device.setdefault(t.untyped_storage().data_ptr(), {})[id(t)] = weakref.ref(t)
        return t

    def _on_device(self, t: Any) -> bool:
        """A tensor on a marked storage that some marked tensor still holds (a freed address reused by host data
        is not device memory)."""
        if not isinstance(t, torch.Tensor) or t.numel() == 0:
            return False
        marked = self._device.get(t.untyped_storage().data_ptr(), {})
        return any(ref() is not None for ref in marked.values())

    def _counting(self, name: str, method: Any) -> Any:
        def counted(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if self._on_device(tensor):
                self.found[name] += 1
            return method(tensor, *args, **kwargs)

        return counted

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if not any(self._on_device(t) for t in tensors):  # host data only: nothing waits
            return func(*args, **kwargs)
        out = HostWaits.__torch_dispatch__(self, func, types, args, kwargs)
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.mark(t)
        return out
