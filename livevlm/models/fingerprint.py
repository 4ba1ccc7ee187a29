"""A checkpoint's identity as one short string: what a session snapshot is tied to.

sha256 over the model config (minus where it was loaded from and in which dtype) and, for every parameter in
name order, its name, shape and up to 64 of its values sampled at fixed strides, read as float64. Exact on
any device, the same for the same checkpoint in any process; another checkpoint (another seed, a fine-tune)
changes it. A sample, not every weight: an edit of a few values can go unseen.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

SAMPLES = 64
_IGNORED = {"_name_or_path", "torch_dtype", "dtype", "transformers_version", "_attn_implementation_autoset"}


def weights_fingerprint(model: Any) -> str:
    """'sha256:<hex>' of `model`'s config and sampled weights (see the module docstring)."""
    h = hashlib.sha256()
    config = {k: v for k, v in model.config.to_dict().items() if k not in _IGNORED}
    h.update(json.dumps(_clean(config), sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, p in sorted(model.state_dict().items()):
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // SAMPLES)
            sample = flat[::step][:SAMPLES].to("cpu", torch.float64)
            h.update(f"{name}:{tuple(p.shape)}".encode())
            h.update(sample.numpy().tobytes())
    return "sha256:" + h.hexdigest()


def _clean(value: Any) -> Any:
    """Nested config dicts without the load-time keys (sub-configs carry their own dtype)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if k not in _IGNORED}
    return value
