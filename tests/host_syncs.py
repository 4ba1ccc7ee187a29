"""What a function does that a CUDA graph cannot capture, seen on any device: the aten ops that make the host
wait for the device (`.item()`, `.tolist()`, `bool(t)`, `nonzero`, boolean-mask indexing, `unique`, ...) and
tensors built from host data (`torch.tensor([...])`: a copy from pageable memory, refused while capturing).
Recorded with a TorchDispatchMode, so a CPU test can tell whether the function GraphedCall captures on CUDA
would capture at all."""

from __future__ import annotations

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
