"""`frame` policy: reuse a whole chunk's features when its pixels barely changed (model-agnostic).

The reference is the chunk last encoded in full, so reuse never drifts further than `threshold` from it.
With threshold 0 only bit-identical pixels are reused and the features equal a full encode exactly.
"""

from __future__ import annotations

from typing import Any

import torch

from .vit_cache import FeatureCacheBase, to_device


class FrameReuseCache(FeatureCacheBase):
    """Per-stream: the last fully encoded chunk's pixels and features."""

    _pixels: torch.Tensor | None = None
    _grid: tuple[int, int, int] | None = None
    _embeds: torch.Tensor | None = None

    def _encode(self, pixels: torch.Tensor, grid: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        s = self.stats
        s.tokens += pixels.shape[0]
        if self._embeds is not None and grid == self._grid and self._similar(pixels):
            s.chunks_reused += 1
            s.last_event = "reuse"
            return self._embeds.clone(), torch.zeros(
                len(self._embeds), dtype=torch.bool, device=self._embeds.device
            )
        if self._embeds is None:
            s.last_event = "full:start"
        elif grid != self._grid:
            s.last_event, s.refreshes = "full:grid", s.refreshes + 1
        else:
            s.last_event = "full:changed"
        embeds = self.encoder.full(pixels, grid)
        self._pixels, self._grid, self._embeds = pixels.clone(), grid, embeds.clone()
        s.full_encodes += 1
        s.tokens_recomputed += pixels.shape[0]
        return embeds, None

    def state_dict(self) -> dict[str, Any]:
        grid = list(self._grid) if self._grid is not None else None
        return {**super().state_dict(), "pixels": self._pixels, "grid": grid, "embeds": self._embeds}

    def load_state(self, state: dict[str, Any], device: torch.device | str) -> None:
        super().load_state(state, device)
        self._pixels, self._embeds = (to_device(state[k], device) for k in ("pixels", "embeds"))
        self._grid = tuple(state["grid"]) if state["grid"] is not None else None  # type: ignore[assignment]

    def _similar(self, pixels: torch.Tensor) -> bool:
        if self.config.threshold == 0:
            return torch.equal(pixels, self._pixels)
        change = (pixels.float() - self._pixels.float()).abs().mean(dim=1)  # per patch
        return float(change.max()) <= self.config.threshold
