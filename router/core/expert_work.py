"""The expert side of one request: the attached images, the runs started for them (bounded), and
their results as the ``[IMAGE CONTEXT]`` the model reads next.

Work is bounded per request: at most ``max_runs`` distinct expert runs (an identical call asked again
costs nothing and is not counted); the rest are skipped, said so in the next context and the trace.
An expert that cannot run here (the registry's availability, known from start-up) is never started:
one line in the next context says so, once per expert.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable

from experts.images import DecodedImage
from experts.registry import Registry
from experts.schema import ExpertResult, ImageAnalysis
from router.core import protocol
from router.core.answer_text import found_strings
from router.core.context import render_context
from router.core.dispatch import Dispatcher, ExpertCall
from router.core.tags import Tag
from router.core.trace import Trace, TraceExpert

Pending = tuple[ExpertCall, "asyncio.Future[ExpertResult]"]


class ExpertWork:
    """Starts expert calls on the request's images, within the caps, and turns results into context."""

    def __init__(
        self, registry: Registry, dispatcher: Dispatcher, trace: Trace, *, max_runs: int, max_per_reply: int
    ) -> None:
        self.registry = registry
        self.dispatcher = dispatcher
        self.trace = trace
        self.max_runs = max_runs
        self.max_per_reply = max_per_reply
        self.images: list[DecodedImage] = []
        self.latest: list[int] = []  # 1-based indexes of the newest user message's images
        self.results: list[tuple[int, ExpertResult]] = []
        self.notes: list[str] = []  # for the model, with the next results
        self._by_id: dict[str, int] = {}
        self._runs: set[tuple] = set()
        self._over_runs = 0  # skipped since the last context
        self._over_reply = 0
        self._refused: set[str] = set()  # experts the model was already told cannot run

    # --- images -----------------------------------------------------------------------------------
    def attach(self, img: DecodedImage) -> int:
        """Number an image (an image attached twice keeps its first number)."""
        idx = self._by_id.get(img.image_id)
        if idx is None:
            self.images.append(img)
            idx = len(self.images)
            self._by_id[img.image_id] = idx
        return idx

    def img(self, idx: int) -> DecodedImage:
        return self.images[idx - 1]

    # --- starting runs ----------------------------------------------------------------------------
    def _key(self, call: ExpertCall) -> tuple:
        name = self.registry.resolve(call.expert) or call.expert.lower()
        return (call.image_index, name, json.dumps(call.args, sort_keys=True, default=str), call.query)

    def start(self, call: ExpertCall) -> Pending | None:
        """Start one call now, or skip it when the request has used up its runs."""
        key = self._key(call)
        if key not in self._runs:
            if len(self._runs) >= self.max_runs:
                self._over_runs += 1
                self.trace.skipped.append(
                    f"{call.expert} on image {call.image_index} ({call.source}): over {self.max_runs} expert runs"
                )
                return None
            self._runs.add(key)
        return call, self.dispatcher.start(call)

    def start_all(self, calls: Iterable[ExpertCall]) -> list[Pending]:
        return [p for p in map(self.start, calls) if p is not None]

    def runnable(self, name: str, source: str) -> bool:
        """Whether ``name`` can run here. If not: skipped at once, with one note for the model (once per
        expert and request) and a trace line; nothing waits on it, nothing is downloaded."""
        why = self.registry.unavailable(name)
        if why is None:
            return True
        canonical = self.registry.resolve(name) or name
        if canonical not in self._refused:
            self._refused.add(canonical)
            self.notes.append(protocol.cannot_run(canonical, why))
        self.trace.skipped.append(f"{name} ({source}): cannot run here")
        return False

    def on_latest(self, expert: str, args: dict, source: str) -> list[Pending]:
        """One expert on each of the newest images (none when it cannot run here)."""
        if not self.runnable(expert, source):
            return []
        return self.start_all(ExpertCall(self.img(i), i, expert, dict(args), source=source) for i in self.latest)

    def fallback(self, names: Iterable[str]) -> list[Pending]:
        """The fallback experts that can run here, on the newest images."""
        out: list[Pending] = []
        for name in names:
            if self.registry.can_run(name):
                out += self.on_latest(name, {}, "fallback")
        return out

    def dropped(self, tag: Tag) -> bool:
        """Whether the model's tag is dropped rather than answered with a round: it names an expert that
        cannot run here, comes without an image, or asks for exactly what already ran (a weak model
        repeating itself must not cost another LLM call). Said in the trace (and, for the first two, in
        the next context)."""
        if not self.images:
            self.trace.skipped.append(f"{tag.raw} (no image attached)")
            return True
        if not self.runnable(tag.name, "tag"):
            return True
        targets = [tag.image] if tag.image is not None else self.latest
        if tag.image is not None and not 1 <= tag.image <= len(self.images):
            return False  # answered with a note naming the images there are
        if all(
            self._key(ExpertCall(self.img(i), i, tag.name, dict(tag.args), query=tag.query)) in self._runs
            for i in targets
        ):
            self.trace.skipped.append(f"{tag.raw} (already looked at)")
            return True
        return False

    def tag_calls(self, tag: Tag) -> list[Pending]:
        """The calls a tag asks for (its image, or the newest ones); a note when it cannot run."""
        if not self.images:
            self.notes.append(protocol.NO_IMAGES)
            return []
        if tag.image is not None and not 1 <= tag.image <= len(self.images):
            self.notes.append(f"{tag.raw}: there is no image {tag.image}; {len(self.images)} image(s) are attached.")
            return []
        targets = [tag.image] if tag.image is not None else self.latest
        return self.start_all(
            ExpertCall(self.img(i), i, tag.name, dict(tag.args), query=tag.query, source="tag") for i in targets
        )

    def skip_request(self, raw: str) -> None:
        """A request over the per-reply cap: not run, said so."""
        self._over_reply += 1
        self.trace.skipped.append(f"{raw} (over {self.max_per_reply} requests in one reply)")

    # --- results ----------------------------------------------------------------------------------
    async def collect(self, pending: list[Pending]) -> str:
        """Wait for the calls and render their results (and pending notes) as one context block."""
        futures = [f for _, f in pending]
        if futures:
            # asyncio.wait, unlike gather, never cancels the runs if this request is cancelled: an
            # identical call of another request may share them.
            await asyncio.wait(set(futures))
        per_image: dict[int, list[ExpertResult]] = {}
        seen: set[int] = set()
        for call, fut in pending:
            res = fut.result()
            if id(res) in seen:  # a deduplicated call shares its result object
                continue
            seen.add(id(res))
            self.results.append((call.image_index, res))
            per_image.setdefault(call.image_index, []).append(res)
            self.trace.experts.append(
                TraceExpert(
                    expert=res.expert,
                    image=call.image_index,
                    args=res.args,
                    source=call.source,
                    timing_ms=round(res.timing_ms, 2),
                    cached=res.cached,
                    error=res.error,
                )
            )
        return render_context(self._merge(per_image), self._take_notes())

    def _take_notes(self) -> list[str]:
        notes, self.notes = self.notes, []
        if self._over_reply:
            notes.append(
                f"{self._over_reply} more expert request(s) in your reply were skipped: "
                f"at most {self.max_per_reply} per reply."
            )
        if self._over_runs:
            notes.append(f"{self._over_runs} expert run(s) were skipped: at most {self.max_runs} per message.")
        self._over_reply = self._over_runs = 0
        return notes

    def found_texts(self) -> list[str]:
        """Every string the experts found so far (text lines, captions, labels, decoded codes), in order."""
        keep = {"image_id", "args", "timing_ms", "cached", "expert"}
        return [t for _, r in self.results for t in found_strings(r.model_dump(exclude=keep))]

    def analyses(self) -> list[ImageAnalysis]:
        """Everything found in this request, merged per image."""
        per_image: dict[int, list[ExpertResult]] = {}
        for i, r in self.results:
            per_image.setdefault(i, []).append(r)
        return self._merge(per_image)

    def _merge(self, per_image: dict[int, list[ExpertResult]]) -> list[ImageAnalysis]:
        return [
            ImageAnalysis.merge(self.img(i).image_id, i, rs, self.img(i).width, self.img(i).height)
            for i, rs in sorted(per_image.items())
        ]

    @staticmethod
    def looked_at(pending: list[Pending]) -> str:
        """``ocr (image 1), detect (images 1, 2)``: what these calls looked at."""
        per_expert: dict[str, list[int]] = {}
        for call, _ in pending:
            idxs = per_expert.setdefault(call.expert, [])
            if call.image_index not in idxs:
                idxs.append(call.image_index)
        return ", ".join(
            f"{e} (image{'s' if len(ix) > 1 else ''} {', '.join(map(str, ix))})" for e, ix in per_expert.items()
        )

    @staticmethod
    def progress_line(pending: list[Pending]) -> str:
        """``looking at image 1: ocr, detect…``: what a streaming client is shown while these calls run."""
        per_image: dict[int, list[str]] = {}
        for call, _ in pending:
            names = per_image.setdefault(call.image_index, [])
            if call.expert not in names:
                names.append(call.expert)
        parts = [f"image {i}: {', '.join(names)}" for i, names in sorted(per_image.items())]
        return f"looking at {'; '.join(parts)}…\n"

    def has_notes(self) -> bool:
        return bool(self.notes) or bool(self._over_reply or self._over_runs)
