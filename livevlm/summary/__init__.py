"""Long-video summarization: `summarize(video)` describes each segment in one bounded-memory pass, merges
similar neighbours into chapters and writes a summary (Markdown, JSON or WebVTT); resumable after Ctrl-C.

    from livevlm import SummarizeOptions, summarize
    result = summarize("lecture.mp4", options=SummarizeOptions(segment=60), out="lecture.md")
    print(result.summary); [print(c.start, c.text) for c in result.chapters]
"""

from .formats import FORMATS, format_for, render
from .records import Chapter, SegmentResult, Summary, merge_chapters, similarity
from .run import DESCRIBE_PROMPT, SUMMARY_PROMPT, SummarizeOptions, summarize
from .state import ResumeState

__all__ = [
    "DESCRIBE_PROMPT",
    "FORMATS",
    "SUMMARY_PROMPT",
    "Chapter",
    "ResumeState",
    "SegmentResult",
    "SummarizeOptions",
    "Summary",
    "format_for",
    "merge_chapters",
    "render",
    "similarity",
    "summarize",
]
