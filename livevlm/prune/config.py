"""Pruner configs: the `Budget` (tokens per chunk, a ratio, or tokens per second) and `PrunerConfig`.

A "frame" for budget purposes is one chunk: the temporal patch of `frames_per_chunk` (2) frames that the
vision encoder turns into one grid of tokens. Budget strings, as on the CLI (`--budget`):

    "64"    64 tokens per chunk (at most the chunk's own count); "0" is refused: it would drop every token
    "0.25"  a quarter of each chunk's tokens (rounded down: never over the ratio); "1.0" keeps everything
    "32/s"  32 tokens per second of video: a chunk's duration is read from its frames' timestamps
            (`len(pts) / (len(pts) - 1) * (pts[-1] - pts[0])`), or `frames_per_chunk / fps` when they cannot
            tell it; the fractional remainder carries over, so over a stream the rate is exact
A chunk is never left with 0 tokens: a ratio or rate that rounds to 0 for a chunk keeps 1 token of it, and
the chunk is counted (`PruneStats.chunks_floored`), so a stream is never answered blind.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from ..errors import ConfigError

BUDGET_UNITS = ("tokens", "ratio", "per_second")
MERGE_MODES = ("none", "nearest", "similar")


@dataclass(frozen=True)
class Budget:
    """How many visual tokens one chunk may keep."""

    value: float
    """Tokens per chunk (an integer), a ratio in (0, 1], or tokens per second (> 0), as `unit` says."""
    unit: str = "ratio"
    """tokens, ratio or per_second."""

    def __post_init__(self) -> None:
        if self.unit not in BUDGET_UNITS:
            raise ConfigError(f"budget unit must be one of {', '.join(BUDGET_UNITS)}, got {self.unit!r}")
        v = self.value
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise ConfigError(f"budget value must be a finite number, got {v!r}")
        if self.unit == "tokens" and v != int(v):
            raise ConfigError(f"a budget in tokens per chunk must be an integer, got {v}")
        if self.unit == "tokens" and v < 1:
            raise ConfigError(
                f"a budget of {v:g} tokens per chunk would drop every visual token (the model would answer blind): "
                "keep at least 1 (e.g. --budget 64, a ratio --budget 0.25, a rate --budget 32/s) or prune nothing"
            )
        if self.unit == "ratio" and not 0 < v <= 1:
            raise ConfigError(f"a budget ratio must be in (0, 1], got {v}")
        if self.unit == "per_second" and not v > 0:
            raise ConfigError(f"a budget in tokens per second must be > 0, got {v}")

    @property
    def is_full(self) -> bool:
        """True when every token of every chunk fits (ratio 1.0): pruning is the identity."""
        return self.unit == "ratio" and self.value >= 1.0

    def __str__(self) -> str:
        if self.unit == "tokens":
            return str(int(self.value))
        return f"{self.value:g}/s" if self.unit == "per_second" else repr(float(self.value))


DEFAULT_BUDGET = Budget(0.25, "ratio")


def parse_budget(spec: Budget | str | float | None) -> Budget:
    """ "64" -> 64 tokens per chunk, "0.25" -> ratio, "32/s" -> tokens per second; None -> the default."""
    if spec is None:
        return DEFAULT_BUDGET
    if isinstance(spec, Budget):
        return spec
    if isinstance(spec, bool):
        raise ConfigError(f"bad budget {spec!r}")
    if isinstance(spec, int):
        return Budget(spec, "tokens")
    if isinstance(spec, float):
        return Budget(spec, "ratio")
    if not isinstance(spec, str):
        raise ConfigError(f"a budget is a string, a number or a Budget, got {type(spec).__name__}")
    text = spec.strip().lower().replace(" ", "")
    unit, number = "ratio", text
    if text.endswith("/s"):
        unit, number = "per_second", text[:-2]
    elif text.isdigit():
        unit = "tokens"
    try:
        value = int(number) if unit == "tokens" else float(number)
    except ValueError:
        raise ConfigError(
            f"bad budget {spec!r}: use tokens per chunk ('64'), a ratio ('0.25') "
            "or tokens per second ('32/s')"
        ) from None
    return Budget(value, unit)


@dataclass
class PrunerConfig:
    """What every strategy shares: which strategy, how many tokens it may keep, what happens to the rest."""

    strategy: str = "none"
    """Registered strategy (`available_pruners()`): none, uniform, temporal, dual_anchor, adaptive, stc, ..."""
    budget: Any = DEFAULT_BUDGET
    """A `Budget`, or what `parse_budget` accepts ("64", "0.25", "32/s"); normalized to a `Budget`."""
    merge: str = "none"
    """What dropped tokens become: none (dropped), nearest (averaged into the spatially nearest kept token
    of the chunk), similar (averaged into the most similar kept token, cosine). Kept rows keep their
    places."""
    fps: float = 2.0
    """Frames per second assumed for a tokens-per-second budget when a chunk's timestamps cannot tell its
    duration; set it to the session's fps."""

    def __post_init__(self) -> None:
        self.budget = parse_budget(self.budget)
        if self.merge not in MERGE_MODES:
            raise ConfigError(f"merge must be one of {', '.join(MERGE_MODES)}, got {self.merge!r}")
        if not self.fps > 0:
            raise ConfigError(f"fps must be > 0, got {self.fps}")

    @classmethod
    def from_config(cls, spec: Any) -> PrunerConfig:
        """This class's config holding the fields `spec` (any config with a `.strategy`) shares with it."""
        if isinstance(spec, cls):
            return spec
        names = {f.name for f in fields(cls)}
        return cls(**{n: getattr(spec, n) for n in names if hasattr(spec, n)})


class BudgetMeter:
    """Per-stream budget bookkeeping: how many tokens the next chunk may keep (exact over a stream)."""

    def __init__(self, budget: Budget, fps: float, frames_per_chunk: int = 2) -> None:
        self.budget = budget
        self.fps = fps
        self.frames_per_chunk = frames_per_chunk
        self.credit = 0.0  # tokens-per-second budgets: the fractional token carried to the next chunk
        self.floored = 0
        """Chunks whose budget rounded to 0 tokens and kept 1."""

    def allowance(self, num_tokens: int, pts_seconds: Sequence[float] = ()) -> int:
        """Tokens this chunk of `num_tokens` may keep (never more than it has, at least 1 when it has any)."""
        b = self.budget
        if b.unit == "tokens":
            k = int(b.value)
        elif b.unit == "ratio":
            k = math.floor(b.value * num_tokens + 1e-9)
        else:
            self.credit += b.value * self.chunk_seconds(pts_seconds)
            k = math.floor(self.credit + 1e-9)
            self.credit -= k  # what a chunk of fewer tokens than its share cannot use is not banked
        if k < 1 and num_tokens > 0:  # the floor: a chunk is never dropped whole by rounding
            self.floored += 1
            return 1
        return min(num_tokens, k)

    def chunk_seconds(self, pts: Sequence[float]) -> float:
        """Duration of a chunk from its frames' timestamps, else `frames_per_chunk / fps`."""
        if len(pts) >= 2 and pts[-1] > pts[0]:
            return len(pts) / (len(pts) - 1) * (pts[-1] - pts[0])
        return self.frames_per_chunk / self.fps
