"""`dedup` (B-VLLM-style): near-duplicate frames are dropped BEFORE the vision encoder; then an in-frame selector.

B-VLLM (balanced spatio-temporal tokens for video LLMs) removes temporally redundant, near-identical frames
so their tokens are never produced. Here the unit is the loop's temporal patch (the 2 frames the ViT encodes
together), and the decision is the pre-encode hook every pruner has, `admit(frames)`, which the session
calls before it encodes (the pruner decides; the session alone runs the model):

    signature   each frame: grey levels in [0, 1], area-averaged to `size` x `size`
    difference  the largest, over the patch's frames, of the share of thumbnail cells whose grey level moved
                by more than `cell_change` from the same frame of the last ADMITTED patch (drift therefore
                accumulates until it counts; a small object moving still changes its cells, where a mean
                difference over the frame would average it away)
    duplicate   difference < `threshold` (strictly: threshold 0 admits everything), unless `max_skip`
                patches in a row were already skipped
A skipped patch costs no ViT and no prefill: the session stores no token for it, its positions still advance
the stream's clock, and the tokens it would have had count as dropped (`PruneStats.chunks_skipped`). An
admitted patch's tokens go to `selector` (stc, dual_anchor or uniform) at the `budget`; budget 1.0 keeps them
all, so threshold 0 with budget 1.0 is the baseline exactly.

Adapted to streaming: B-VLLM compares frames of a whole clip; here only the past (the last admitted patch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..records import VisualChunk
from .base import PRUNERS, BasePruner, register_pruner
from .config import PrunerConfig
from .keyframe import SELECTORS


@dataclass
class DedupConfig(PrunerConfig):
    """Drop near-duplicate frame patches before the ViT; pick tokens of the others with `selector`."""

    strategy: str = "dedup"
    """Registered strategy name."""
    threshold: float = 0.01
    """Share of thumbnail cells changed (vs the last admitted patch) below which a patch is a near-duplicate
    and never encoded; 0: every patch is encoded."""
    cell_change: float = 0.05
    """Grey-level change (0-1 scale) for which a thumbnail cell counts as changed."""
    size: int = 32
    """Side of the grey thumbnail frames are compared on (area averaging)."""
    max_skip: int = 0
    """Encode at least one patch after this many skipped in a row (0: no limit)."""
    selector: str = "stc"
    """In-frame selector for admitted patches at the budget: stc, dual_anchor or uniform."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"threshold must be a share of cells in [0, 1], got {self.threshold}")
        if not 0.0 <= self.cell_change < 1.0:
            raise ConfigError(f"cell_change must be a grey-level change in [0, 1), got {self.cell_change}")
        if self.size < 1 or self.max_skip < 0:
            raise ConfigError(f"need size >= 1 and max_skip >= 0, got {self.size}, {self.max_skip}")
        if self.selector not in SELECTORS:
            raise ConfigError(f"selector must be one of {', '.join(SELECTORS)}, got {self.selector!r}")


def signature(frames: Sequence[np.ndarray], size: int) -> np.ndarray:
    """(F, size, size) float32 grey thumbnails in [0, 1] of (H, W, 3) uint8 frames (area averaging)."""
    x = torch.from_numpy(np.stack(frames)).float().mean(-1, keepdim=True).permute(0, 3, 1, 2)
    return torch.nn.functional.adaptive_avg_pool2d(x / 255.0, size)[:, 0].numpy()


@register_pruner("dedup")
class DedupPruner(BasePruner):
    """B-VLLM-style frame de-duplication before the ViT, then in-frame selection."""

    config_class = DedupConfig
    config: DedupConfig
    exact = False  # skipped patches keep nothing

    def __init__(self, config: DedupConfig | None = None) -> None:
        super().__init__(config)
        c = self.config
        self.selector = PRUNERS.load(c.selector)(PRUNERS.config_class(c.selector)(budget=c.budget, fps=c.fps))
        self._reference: np.ndarray | None = None
        self._skipped_in_a_row = 0
        self._tokens_per_chunk = 0

    def state_dict(self) -> dict[str, Any]:
        ref = torch.from_numpy(self._reference.copy()) if self._reference is not None else None
        return {**super().state_dict(), "selector": self.selector.state_dict(), "reference": ref,
                "skipped_in_a_row": self._skipped_in_a_row, "tokens_per_chunk": self._tokens_per_chunk}  # fmt: skip

    def load_state(self, state: dict[str, Any], device: torch.device | str) -> None:
        super().load_state(state, device)
        self.selector.load_state(state["selector"], device)
        ref = state["reference"]
        self._reference = ref.cpu().numpy() if ref is not None else None
        self._skipped_in_a_row, self._tokens_per_chunk = int(state["skipped_in_a_row"]), int(state["tokens_per_chunk"])

    def admit(self, frames: Sequence[np.ndarray]) -> bool:
        """False: `frames` ((H, W, 3) uint8 each) repeat the last admitted patch; the session then skips the ViT."""
        c = self.config
        sig = signature(frames, c.size)
        ref = self._reference
        if c.threshold > 0 and ref is not None and ref.shape == sig.shape and self._tokens_per_chunk:
            difference = float((np.abs(sig - ref) > c.cell_change).mean(axis=(1, 2)).max())
            if difference < c.threshold and not (c.max_skip and self._skipped_in_a_row >= c.max_skip):
                self._skipped_in_a_row += 1
                s, n = self.stats, self._tokens_per_chunk
                s.chunks, s.chunks_skipped, s.tokens_in, s.tokens_dropped = (
                    s.chunks + 1, s.chunks_skipped + 1, s.tokens_in + n, s.tokens_dropped + n,
                )  # fmt: skip
                return False
        self._reference, self._skipped_in_a_row = sig, 0
        return True

    def select(self, chunk: VisualChunk, k: int) -> torch.Tensor:
        self._tokens_per_chunk = chunk.num_tokens
        return self.selector.select(chunk, k)
