"""Features added to the outputs of a decoder's first layers (Qwen3-VL's DeepStack), by forward hooks.

transformers adds DeepStack features at the rows a boolean mask picks (`hidden[mask] += features`): on a GPU an
index by a mask waits for the device, and inside a CUDA graph capture it is an error. Our chunks carry the
features of every row (zeros where text sits), so the addition needs no mask: `output + features[:, i]` after
layer i, the same values. The hooks stay registered and add only inside `adding(...)`, per thread: a question
answered in one thread never sees the features of a chunk being prefilled in another.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch

ADDED_PER_LAYER = "added_per_layer"
"""Key of `_decoder_inputs`' extra inputs that holds (n, k, hidden) features added after layers 0..k-1."""


class LayerAdditions:
    """Forward hooks on `layers` that add this thread's current features (see the module docstring)."""

    def __init__(self, layers: Sequence[torch.nn.Module]) -> None:
        self._local = threading.local()
        self._hooks = [layer.register_forward_hook(partial(self._add, i)) for i, layer in enumerate(layers)]

    @contextmanager
    def adding(self, features: torch.Tensor) -> Iterator[None]:
        """Within: after layer i, add `features[:, i]` (n, hidden) to its (1, n, hidden) output."""
        before = getattr(self._local, "features", None)
        self._local.features = features
        try:
            yield
        finally:
            self._local.features = before

    def _add(self, index: int, module: torch.nn.Module, args: Any, output: Any) -> Any:
        features = getattr(self._local, "features", None)
        if features is None or index >= features.shape[1]:
            return None
        if isinstance(output, tuple):  # decoder layers that return (hidden, ...)
            return (output[0] + features[:, index].to(output[0].dtype), *output[1:])
        return output + features[:, index].to(output.dtype)
