"""What a request yields as it runs: answer text, thinking, the client's tool calls, then one :class:`Final`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from experts.schema import ImageAnalysis
from router.core.findings import findings_line
from router.core.trace import Trace


@dataclass
class TextDelta:
    """A piece of the visible answer (tags already removed)."""

    text: str


@dataclass
class ThinkingDelta:
    text: str


@dataclass
class Progress:
    """What the router is doing while no answer text can come yet (``looking at image 1: ocr…``). Only
    when the request asked for it; the proxy shows it in Ollama's ``thinking`` field. Not part of the
    answer, the thinking or the Final."""

    text: str


@dataclass
class ToolCalls:
    """Tool calls for the client's own tools: returned unexecuted, exactly as Ollama would."""

    calls: list[dict[str, Any]]


@dataclass
class Final:
    """The end of a request: the whole visible answer, summed stats and the trace.

    ``answered`` is False only when the model gave no answer: ``answer`` then says so and lists what
    the experts found (it was streamed as text too, so every client shows it).
    """

    answer: str
    model: str
    done_reason: str
    stats: dict[str, int]
    trace: Trace
    analyses: list[ImageAnalysis] = field(default_factory=list)
    thinking: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # the client's own tools, unexecuted
    answered: bool = True

    @property
    def findings(self) -> str:
        """One short line of what the experts found (``looked at: ocr 7 lines; detect 24 objects``), built
        from ``analyses``; never part of ``answer``, which is the model's text alone."""
        return findings_line(self.analyses)


Event = TextDelta | ThinkingDelta | Progress | ToolCalls | Final
