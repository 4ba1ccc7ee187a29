"""A `Summary` as text: Markdown chapters, JSON (segments with pts ranges, text, timings), WebVTT chapters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError

NOTHING = "(nothing was described)"
"""The text shown for a summary or chapter the model gave no description of."""
FORMATS = ("md", "json", "vtt")
_SUFFIXES = {".md": "md", ".markdown": "md", ".txt": "md", "": "md", ".json": "json", ".vtt": "vtt"}


def format_for(out: str | Path | None, fmt: str | None) -> str:
    """The format asked for, else the one `out`'s suffix names (none or .txt: md); a suffix naming another format
    (.pdf, .html, .srt) is refused rather than given Markdown under its name."""
    if fmt is None:
        if out is None:
            return "md"
        suffix = Path(out).suffix.lower()
        if suffix not in _SUFFIXES:
            raise ConfigError(
                f"{out}: a {suffix} file cannot be written; summaries are Markdown (.md), JSON (.json) or WebVTT "
                f"(.vtt): name the file so, or give the format (--format; fmt= in Python)"
            )
        return _SUFFIXES[suffix]
    if fmt not in FORMATS:
        raise ConfigError(f"unknown summary format {fmt!r}: use one of {', '.join(FORMATS)}")
    return fmt


def clock(seconds: float) -> str:
    """m:ss, or h:mm:ss from an hour on (what a reader expects in chapter titles and prompts)."""
    s = int(seconds + 1e-6)
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def clocks(start: float, end: float) -> tuple[str, str]:
    """`clock` of a span's start and end; with tenths of a second where whole seconds would print the same
    ('0:05.0', '0:05.2': a video's short last segment, not '0:05-0:05')."""
    a, b = clock(start), clock(end)
    if a != b or end <= start:
        return a, b
    return f"{a}.{int((start % 1) * 10 + 1e-6)}", f"{b}.{int((end % 1) * 10 + 1e-6)}"


def vtt_time(seconds: float) -> str:
    """hh:mm:ss.ttt as WebVTT wants it."""
    ms = round(seconds * 1000)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    return f"{h:02d}:{m:02d}:{rest // 1000:02d}.{rest % 1000:03d}"


def render(summary: Any, fmt: str) -> str:
    """A `Summary` in `fmt` (md, json or vtt), ending with a newline (typed Any: records imports this module)."""
    fmt = format_for(None, fmt)
    if fmt == "json":
        return json.dumps(summary.to_json(), indent=2, ensure_ascii=False) + "\n"
    if fmt == "vtt":
        return _vtt(summary)
    return _markdown(summary)


def _markdown(summary: Any) -> str:
    lines = [
        f"# Summary of {Path(summary.video).name}",
        "",
        summary.summary or NOTHING,
        "",
        "## Chapters",
        "",
    ]
    for c in summary.chapters:
        lines += [f"### {' – '.join(clocks(c.start, c.end))}", "", _one_line(c.text) or NOTHING, ""]
    return "\n".join(lines)


def _vtt(summary: Any) -> str:
    lines = ["WEBVTT", "", "NOTE chapters of " + Path(summary.video).name.replace("-->", "->"), ""]
    for i, c in enumerate(summary.chapters, 1):
        lines += [str(i), f"{vtt_time(c.start)} --> {vtt_time(c.end)}", _one_line(c.text) or NOTHING, ""]
    return "\n".join(lines)


def _one_line(text: str) -> str:
    """A cue or paragraph of one line: a blank line would end a WebVTT cue; '-->' would start one."""
    return " ".join(text.split()).replace("-->", "->")
