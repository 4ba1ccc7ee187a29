"""Which stored chunk stands for frames that stored nothing, so `ask(..., within=)` over them finds it.

A patch the pruner refused before the ViT (`dedup`: a near-duplicate of the last admitted one) or pruned to no
token leaves nothing in the KV context: a robot parked in front of an unchanged scene then asked "what is in view
in the last second?" was told no frame lies there. Such frames repeat what the last stored chunk showed, so a range
holding them is widened back to that chunk's last frame (no other chunk lies in between). One run per stretch of
frames between two stored chunks: memory grows with stored chunks, not frames.
"""

from __future__ import annotations

from typing import Any


class StandIns:
    """Runs of frames that stored nothing, each with the time of the last frame stored before them."""

    def __init__(self) -> None:
        self.runs: list[list[float]] = []
        """[first frame, last frame, last frame stored before them] per run, in time order."""
        self._stored: float | None = None  # the last frame time of the latest chunk that stored tokens

    def stored(self, pts_seconds: tuple[float, ...]) -> None:
        """A chunk of frames at `pts_seconds` stored tokens."""
        if pts_seconds:
            self._stored = max(pts_seconds)

    def skipped(self, pts_seconds: tuple[float, ...]) -> None:
        """A chunk of frames at `pts_seconds` stored nothing: the last stored chunk stands for them."""
        if not pts_seconds or self._stored is None:  # nothing stored yet: nothing stands for them
            return
        first, last = min(pts_seconds), max(pts_seconds)
        if self.runs and self.runs[-1][2] == self._stored:
            self.runs[-1][1] = last
        else:
            self.runs.append([first, last, self._stored])

    def widen(self, start: float, end: float) -> tuple[float, float]:
        """(start, end) of a `within=` range, widened back to the chunk standing for the first run of frames in
        it that stored nothing (the range as it is when it holds none)."""
        for first, last, stand_in in self.runs:
            if first <= end and last >= start:
                return min(start, stand_in), end
        return start, end

    def state_dict(self) -> dict[str, Any]:
        return {"runs": [list(r) for r in self.runs], "stored": self._stored}

    def load_state(self, state: dict[str, Any] | None) -> None:
        """Restore `state_dict()`; None (a snapshot of an older livevlm): no runs known."""
        state = state or {"runs": [], "stored": None}
        self.runs = [[float(a), float(b), float(c)] for a, b, c in state["runs"]]
        self._stored = None if state["stored"] is None else float(state["stored"])
