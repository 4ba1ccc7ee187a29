"""What a summary is made of: described segments, chapters merged from similar neighbours, the whole summary.

Chapters: adjacent segments whose descriptions share most of their words (Jaccard similarity of the sets
of normalised words, stop words and numbers left out) are one chapter; two empty descriptions are alike.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from dataclasses import dataclass, field
from typing import Any

# fmt: off
_STOP = frozenset((
    "a", "an", "the", "and", "or", "but", "of", "in", "on", "at", "to", "from", "by", "with", "for", "is",
    "are", "was", "were", "be", "been", "being", "it", "its", "this", "that", "these", "those", "there",
    "here", "then", "than", "as", "into", "onto", "over", "under", "between", "during", "while", "video",
    "clip", "segment", "scene", "frame", "frames", "shows", "show", "showing", "seen", "see", "we", "you",
    "they", "he", "she", "i",
))
# fmt: on


@dataclass(frozen=True)
class SegmentResult:
    """One segment of the video and the model's description of it, asked at the segment's end."""

    index: int
    """floor(start / segment seconds): segments without any frame are skipped, so indices may jump."""
    start: float
    """Seconds (video time) where the segment begins."""
    end: float
    """Seconds where it ends (the last segment: one sampling period after its last frame, at most start+segment)."""
    first_pts: float
    last_pts: float
    """Times of the first and last sampled frame in the segment."""
    frames: int
    """Sampled frames ingested in the segment."""
    text: str
    """The description (stripped); empty when the model described nothing."""
    tokens: int
    """Tokens decoded for the description."""
    finish_reason: str
    """Why the description ended: stop, length or deadline."""
    context_tokens: int
    """Tokens of stream context the description was asked over."""
    ingest_seconds: float
    describe_seconds: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Chapter:
    """Adjacent segments with similar descriptions; its text is theirs merged (`chapter_text`)."""

    start: float
    end: float
    segments: tuple[int, ...]
    """Indices of the segments merged into it."""
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "segments": list(self.segments), "text": self.text}


@dataclass
class Summary:
    """What `summarize` returns (and writes): per-segment descriptions, chapters and the final summary."""

    video: str
    segment_seconds: float
    segments: list[SegmentResult]
    chapters: list[Chapter]
    summary: str
    """The model's text pass over the chapters; empty when nothing was described."""
    stats: dict[str, Any] = field(default_factory=dict)
    """frames, seconds, resumed_segments (finished segments read back from a resume state), summary_seconds."""

    def to_json(self) -> dict[str, Any]:
        return {
            "video": self.video,
            "segment_seconds": self.segment_seconds,
            "summary": self.summary,
            "chapters": [c.to_json() for c in self.chapters],
            "segments": [s.to_json() for s in self.segments],
            "stats": dict(self.stats),
        }

    def render(self, fmt: str) -> str:
        """The summary as md (Markdown chapters), json or vtt (a WebVTT chapters track)."""
        from .formats import render

        return render(self, fmt)


def words(text: str) -> frozenset[str]:
    """The normalised words of a description: lower-case letters only, stop words left out."""
    return frozenset(_word_list(text))


def _word_list(text: str) -> list[str]:
    """`words` in the order they come, repeats kept."""
    return [w for w in re.findall(r"[a-z]+", text.lower()) if w not in _STOP and len(w) > 1]


def similarity(a: str, b: str) -> float:
    """Jaccard similarity of two descriptions' normalised words (1.0 for two with none)."""
    wa, wb = words(a), words(b)
    if not wa and not wb:
        return 1.0
    return len(wa & wb) / len(wa | wb)


def merge_chapters(segments: list[SegmentResult], threshold: float = 0.5) -> list[Chapter]:
    """Chapters from adjacent segments whose descriptions are at least `threshold` similar (0: one chapter,
    above 1: one chapter per segment)."""
    groups: list[list[SegmentResult]] = []
    for seg in segments:
        if groups and similarity(groups[-1][-1].text, seg.text) >= threshold:
            groups[-1].append(seg)
        else:
            groups.append([seg])
    return [
        Chapter(g[0].start, g[-1].end, tuple(s.index for s in g), chapter_text([s.text for s in g]))
        for g in groups
    ]


def chapter_text(texts: list[str]) -> str:
    """The chapter's descriptions as one text: the longest first, then, in order, every clause of the others that
    says something it does not yet, a word or a pair of neighbouring words new to it (so "the red square leaves"
    is kept beside "the red square appears, the blue circle leaves"; a repeat is not)."""
    if not texts:
        return ""
    longest = max(texts, key=len)
    out, seen = longest.strip(), _grams(longest)
    for text in texts:
        if text is longest:
            continue
        for clause in re.split(r"(?<=[.!?;,])\s+", text.strip()):
            new = _grams(clause) - seen
            if new:
                out = f"{out} {clause}" if not out or out[-1] in ".!?;," else f"{out}; {clause}"
                seen |= new
    return out.strip().rstrip(",")


def _grams(text: str) -> set[tuple[str, ...]]:
    """The normalised words of `text` and the pairs of neighbours among them (what a clause says, roughly)."""
    seq = _word_list(text)
    return {(w,) for w in seq} | set(itertools.pairwise(seq))
