"""What the demos share: a flag type for numbers above 0, and the bundled sample played as a live camera.

Imported as `from _common import ...`: Python puts a script's own folder on the path, so this works for
`python demos/NAME.py` from anywhere in a checkout (the demos are run from a checkout; see README.md).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from livevlm.assets import sample_video_path


def positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    """An argparse type: a number of `kind` above 0 (a zero --fps, --window or --deadline is refused at once,
    not when the demo first uses it)."""

    def parse(text: str) -> float:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
        return value

    return parse


def sample_as_camera() -> str:
    """The bundled 8 s sample as an endless live source: FFmpeg's movie filter, looped, paced in real time."""
    return f"lavfi:movie='{sample_video_path()}':loop=0,setpts=N/(FRAME_RATE*TB)"
