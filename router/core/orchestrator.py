"""The two-turn loop: images and words in, a grounded answer streamed out.

::

    request (messages + images)
      -> decode each image once; image_id = sha256
      -> keyword router on the user's words -> experts start at once
      -> keywords decided?  yes: ONE LLM turn with [IMAGE CONTEXT]
                            no:  turn 1 streamed; each closed [VISION: ...] tag dispatches at once
      -> expert results (cached) -> [IMAGE CONTEXT] -> next turn ... (rounds bounded)

Images never reach the text model: each is replaced by a one-line note saying it is attached.
Only the model's own reply is parsed for tags.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import ollama

from experts.errors import ImageError
from experts.images import DecodedImage, decode_base64_image, decode_image, load_image_file
from experts.registry import Registry, default_registry
from experts.schema import ExpertResult, ImageAnalysis
from router.core import protocol, toolspec
from router.core.cache import ResultCache
from router.core.config import BASE_MODEL, Settings
from router.core.context import render_context
from router.core.dispatch import Dispatcher, ExpertCall, _run_coroutine
from router.core.errors import ModelNotFound, OllamaUnreachable, UpstreamError, VisionRouterError
from router.core.keywords import KeywordRouter
from router.core.ollama_host import resolve_host
from router.core.tags import Tag, TagParser
from router.core.trace import LLMCall, Trace, TraceExpert

SHOW_TTL_S = 60.0
STAT_FIELDS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


# --- events -------------------------------------------------------------------------------------
@dataclass
class TextDelta:
    """A piece of the visible answer (tags already removed)."""

    text: str


@dataclass
class ThinkingDelta:
    text: str


@dataclass
class Final:
    """The end of a request: the whole visible answer, summed stats and the trace."""

    answer: str
    model: str
    done_reason: str
    stats: dict[str, int]
    trace: Trace
    analyses: list[ImageAnalysis] = field(default_factory=list)
    thinking: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # the client's own tools, unexecuted


@dataclass
class ToolCalls:
    """Tool calls for the client's own tools: returned unexecuted, exactly as Ollama would."""

    calls: list[dict[str, Any]]


Event = TextDelta | ThinkingDelta | ToolCalls | Final
ImageInput = DecodedImage | bytes | str | Path


# --- the orchestrator ---------------------------------------------------------------------------
class Orchestrator:
    """Runs the keyword/tag loop against Ollama through the official ``ollama`` client.

    Async: :meth:`stream` (events) and :meth:`achat`. Sync: :meth:`ask` and :meth:`chat`.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        client: ollama.AsyncClient | None = None,
        registry: Registry | None = None,
        dispatcher: Dispatcher | None = None,
        keywords: KeywordRouter | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.host = resolve_host(self.settings.ollama_host)
        self._client = client
        self._clients: dict[int, ollama.AsyncClient] = {}
        self.registry = self.settings.configure(registry or default_registry())
        if dispatcher is None:
            cache = ResultCache(self.settings.cache_items, self.settings.resolved_cache_dir())
            dispatcher = Dispatcher(
                self.registry,
                cache,
                timeout_s=self.settings.expert_timeout,
                timeouts=self.settings.expert_timeouts(),
            )
        self.dispatcher = dispatcher
        self.keywords = keywords or KeywordRouter.from_toml(self.settings.keywords_file)
        self._shown: dict[str, tuple[float, Any]] = {}  # model -> (expires, /api/show answer)

    # --- public API -------------------------------------------------------------------------
    async def show(self, model: str) -> Any:
        """Ollama's ``/api/show`` for ``model`` (its SYSTEM and capabilities), cached for
        :data:`SHOW_TTL_S` so a model re-created with ``ollama create`` is noticed."""
        now = time.monotonic()
        hit = self._shown.get(model)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            shown = await self.client().show(model)
        except Exception as exc:
            raise _upstream_error(exc, model, self.host) from None
        self._shown[model] = (now + SHOW_TTL_S, shown)
        return shown

    def client(self) -> ollama.AsyncClient:
        """The async Ollama client for the running event loop."""
        if self._client is not None:
            return self._client
        loop_id = id(asyncio.get_running_loop())
        c = self._clients.get(loop_id)
        if c is None:
            c = ollama.AsyncClient(host=self.host)
            self._clients = {loop_id: c}
        return c

    def decode(self, item: ImageInput, index: int | None = None) -> DecodedImage:
        """Accept an attached image in any of the forms clients send."""
        limits = self.settings.image_limits()
        if isinstance(item, DecodedImage):
            return item
        if isinstance(item, (bytes, bytearray, memoryview)):
            return decode_image(bytes(item), source=f"image {index}" if index else None, **limits)
        if isinstance(item, Path):
            return load_image_file(item, **limits)
        if isinstance(item, str):
            return decode_base64_image(item, index=index, **limits)
        # ollama.Image (value: str | bytes | Path)
        value = getattr(item, "value", None)
        if value is not None:
            if isinstance(value, Path):
                return load_image_file(value, **limits)
            if isinstance(value, (bytes, bytearray)):
                return decode_image(bytes(value), **limits)
            return decode_base64_image(str(value), index=index, **limits)
        raise ImageError(f"image {index}: unsupported image value of type {type(item).__name__}")

    def ask(
        self,
        question: str,
        images: Sequence[ImageInput] = (),
        *,
        on_text: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> Final:
        """Sync: one question about some images (paths, bytes, base64 or decoded images) from a
        script. ``on_text`` receives the answer as it streams.

        Only here is a string taken as a file path: this is the caller's own attachment. Strings in
        :meth:`stream`'s messages (what the proxy passes on from clients) are always image data.
        """
        attached = [Path(i) if isinstance(i, str) and _is_file(i) else i for i in images]
        messages = [{"role": "user", "content": question, "images": attached}]
        return self.chat(messages, on_text=on_text, **kwargs)

    def chat(
        self, messages: list[dict[str, Any]], *, on_text: Callable[[str], None] | None = None, **kwargs: Any
    ) -> Final:
        """Sync: a whole conversation (Ollama message dicts, images on any user message)."""
        return _run_coroutine(self.achat(messages, on_text=on_text, **kwargs))

    async def achat(
        self, messages: list[dict[str, Any]], *, on_text: Callable[[str], None] | None = None, **kwargs: Any
    ) -> Final:
        final: Final | None = None
        async for ev in self.stream(messages, **kwargs):
            if isinstance(ev, TextDelta) and on_text is not None:
                on_text(ev.text)
            elif isinstance(ev, Final):
                final = ev
        assert final is not None
        return final

    async def stream(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str | None = None,
        options: dict[str, Any] | None = None,
        format: Any = None,
        keep_alive: Any = None,
        think: Any = None,
        decoded: list[DecodedImage] | None = None,
        experts: Sequence[str | tuple[str, dict[str, Any]]] | None = None,
        extra_context: str | None = None,
        tools: Sequence[dict[str, Any]] | None = None,
        protocol: str | None = None,
    ) -> AsyncIterator[Event]:
        """Run one request and yield :class:`TextDelta` events, then exactly one :class:`Final`.

        ``decoded``: images already decoded by the caller (the proxy), in conversation order; the
        messages' ``images`` fields are then ignored.
        ``experts``: experts to run on the newest images before the first turn, as if keywords had
        chosen them (presets, scripts): names or (name, args).
        ``extra_context``: text (e.g. retrieved RAG context) placed before the last user message.
        ``tools``: the client's own tool definitions, sent along with ours; calls to them end the
        request with a :class:`ToolCalls` event (the client runs them).
        ``protocol``: ``tags``, ``tools`` or ``auto`` for this request (default: the settings').
        """
        run = _Run(self, model or self.settings.model, options, format, keep_alive, think)
        run.forced = [(e, {}) if isinstance(e, str) else (e[0], dict(e[1])) for e in experts or ()]
        run.extra_context = extra_context
        run.client_tools = [t for t in tools or () if isinstance(t, dict)]
        run.protocol = protocol or self.settings.protocol
        async for ev in run.execute(messages, decoded):
            yield ev


# --- one request ------------------------------------------------------------------------------
class _Run:
    def __init__(self, orch: Orchestrator, model: str, options: Any, fmt: Any, keep_alive: Any, think: Any):
        self.o = orch
        self.model = model
        self.options = options
        self.format = fmt
        self.keep_alive = keep_alive
        self.think = think
        self.trace = Trace(model=model)
        self.stats = dict.fromkeys(STAT_FIELDS, 0)
        self.done_reason = "stop"
        self.images: list[DecodedImage] = []
        self.latest: list[int] = []  # 1-based indexes of the newest user message's images
        self.results: list[tuple[int, ExpertResult]] = []
        self.answer: list[str] = []
        self.thinking: list[str] = []
        self.notes: list[str] = []
        self.forced: list[tuple[str, dict[str, Any]]] = []
        self.user_texts: list[str] = []
        self.extra_context: str | None = None
        # Tools protocol (see _tools_wanted / _sort_tool_calls / _tool_round).
        self.client_tools: list[dict[str, Any]] = []
        self.protocol: str = orch.settings.protocol
        self.use_tools = False
        self.client_calls: list[dict[str, Any]] = []
        self._our_calls: list[tuple[dict[str, Any], str, dict[str, Any], list[int]]] = []
        self._bad_calls: list[tuple[dict[str, Any], str]] = []

    async def execute(self, messages: list[dict[str, Any]], decoded: list[DecodedImage] | None):
        t_start = time.perf_counter()
        if decoded is None and any(m.get("images") for m in messages):
            # Decoding is CPU work (ms per megapixel): keep it off the event loop the proxy serves from.
            msgs = await asyncio.to_thread(self._prepare, messages, decoded)
        else:
            msgs = self._prepare(messages, decoded)
        s = self.o.settings
        if self.images:
            self.use_tools = await self._tools_wanted()
            await self._ensure_protocol(msgs)
        last_user = _last_user_index(msgs)
        user_text = self.user_texts[-1] if self.user_texts else ""

        if self.extra_context and last_user is not None:
            msgs[last_user] = dict(msgs[last_user], content=f"{self.extra_context}\n\n{msgs[last_user]['content']}")

        # 1. Keyword pre-dispatch: experts start before the model says anything.
        pending: list[tuple[ExpertCall, asyncio.Future[ExpertResult]]] = []
        if self.images and s.max_rounds > 0:
            for name, args in self.forced:
                for idx in self.latest:
                    pending.append(self._start(ExpertCall(self._img(idx), idx, name, args, source="preset")))
            for m in self.o.keywords.route(user_text):
                if self.o.registry.resolve(m.expert) is None:
                    continue  # the table names an expert that is not installed: let the model decide
                self.trace.keywords.append({"expert": m.expert, "keyword": m.keyword, "args": m.args})
                for idx in self.latest:
                    call = ExpertCall(self._img(idx), idx, m.expert, dict(m.args), source="keyword")
                    pending.append(self._start(call))
        # A forced output format leaves no room for a tag turn: the fallback experts decide instead.
        if self.images and not pending and self.format and s.max_rounds > 0:
            pending = self._fallback_calls()

        rounds = 0
        if pending:
            context = await self._collect(pending)
            rounds = 1
            msgs[last_user] = dict(msgs[last_user], content=f"{context}\n\n{msgs[last_user]['content']}")

        buffer_turn = bool(self.images) and not pending and bool(s.fallback) and s.max_rounds > 0
        turn_no = 0
        while True:
            turn_no += 1
            final_round = rounds >= s.max_rounds
            turn = asyncio.ensure_future(self._turn(turn_no, msgs, final_round, buffer_turn))
            async for ev in self._live_events(turn):  # the answer streams as the model writes it
                yield ev
            reply, tag_calls, tags_seen, buffered = turn.result()
            if self.client_calls:  # the client's own tools: hand the calls back and stop here
                if buffered:
                    self._emit(buffered)
                    async for ev in self._drain_events():
                        yield ev
                yield ToolCalls(list(self.client_calls))
                break
            if self._bad_calls and self.protocol == "auto" and self.use_tools:
                # A malformed native tool call: fall back to the tag protocol and ask again.
                self._fall_back_to_tags(msgs)
                continue
            if (self._our_calls or self._bad_calls) and not final_round:
                if buffered:
                    self._emit(buffered)
                    async for ev in self._drain_events():
                        yield ev
                await self._tool_round(msgs, reply, tag_calls)
                rounds += 1
                buffer_turn = False
                continue
            if (tag_calls or self.notes) and tags_seen and not final_round:
                if buffered:  # the words before the tag belong to the answer, as when streamed
                    self._emit(buffered)
                    async for ev in self._drain_events():
                        yield ev
                context = await self._collect(tag_calls)
                rounds += 1
                follow = protocol.LAST_ROUND if rounds >= s.max_rounds else protocol.FOLLOW_UP
                msgs.append({"role": "assistant", "content": reply})
                msgs.append({"role": "user", "content": f"{context}\n\n{follow}"})
                buffer_turn = False
                continue
            if buffer_turn and not tags_seen:
                # Images attached, nobody asked for an expert: run the fallback set and ask again,
                # dropping the unseen-image guess of turn 1.
                calls = self._fallback_calls()
                if calls:
                    self.trace.fallback = True
                    context = await self._collect(calls)
                    rounds += 1
                    msgs[last_user] = dict(msgs[last_user], content=f"{context}\n\n{msgs[last_user]['content']}")
                    buffer_turn = False
                    continue
            if buffered:
                self._emit(buffered)
                async for ev in self._drain_events():
                    yield ev
            break

        self.trace.rounds = rounds
        self.trace.cache = self.o.dispatcher.cache.stats.as_dict()
        self.trace.total_ms = round((time.perf_counter() - t_start) * 1000, 2)
        yield Final(
            answer="".join(self.answer),
            model=self.model,
            done_reason=self.done_reason,
            stats=dict(self.stats),
            trace=self.trace,
            analyses=self._analyses(),
            thinking="".join(self.thinking),
            tool_calls=list(self.client_calls),
        )

    # --- preparation ----------------------------------------------------------------------
    def _prepare(self, messages: list[dict[str, Any]], decoded: list[DecodedImage] | None) -> list[dict[str, Any]]:
        """Copy the messages without image bytes, numbering images across the conversation and
        leaving a note where each was attached."""
        by_id: dict[str, int] = {}
        pre = list(decoded) if decoded is not None else None
        out: list[dict[str, Any]] = []
        for m in messages:
            m = dict(m)
            if m.get("role") == "user":
                self.user_texts.append(str(m.get("content") or ""))
            raw_images = m.pop("images", None) or []
            if raw_images:
                notes = []
                idxs = []
                for raw in raw_images:
                    img = pre.pop(0) if pre else self.o.decode(raw, len(self.images) + 1)
                    idx = by_id.get(img.image_id)
                    if idx is None:
                        self.images.append(img)
                        idx = len(self.images)
                        by_id[img.image_id] = idx
                    idxs.append(idx)
                    notes.append(protocol.image_note(idx, img.width, img.height, img.format))
                if m.get("role", "user") == "user":
                    self.latest = idxs
                m["content"] = "\n".join(notes) + ("\n" + m["content"] if m.get("content") else "")
            out.append(m)
        if self.images and not self.latest:
            self.latest = [len(self.images)]
        self.trace.images = [dict(img.describe(), index=i + 1) for i, img in enumerate(self.images)]
        return out

    async def _ensure_protocol(self, msgs: list[dict[str, Any]]) -> None:
        mode = self.o.settings.inject_protocol
        if mode == "never":
            return
        if mode == "auto":
            shown = await self.o.show(self.model)
            # The Python client keeps `modelfile` (which holds SYSTEM), not the `system` field.
            has = protocol.PROTOCOL_MARKER in (shown.modelfile or "")
            if has and not (msgs and msgs[0].get("role") == "system"):
                return  # the Modelfile's SYSTEM already teaches the protocol
        self.trace.protocol_injected = True
        if msgs and msgs[0].get("role") == "system":
            # A client's system message replaces the model's SYSTEM: keep both.
            msgs[0] = dict(msgs[0], content=f"{msgs[0].get('content', '')}\n\n{self._protocol_prompt()}")
        else:
            msgs.insert(0, {"role": "system", "content": self._protocol_prompt()})

    # --- experts --------------------------------------------------------------------------
    def _img(self, idx: int) -> DecodedImage:
        return self.images[idx - 1]

    def _start(self, call: ExpertCall) -> tuple[ExpertCall, asyncio.Future[ExpertResult]]:
        return call, self.o.dispatcher.start(call)

    def _fallback_calls(self) -> list[tuple[ExpertCall, asyncio.Future[ExpertResult]]]:
        calls = []
        for name in self.o.settings.fallback:
            if self.o.registry.resolve(name) is None:
                continue
            for idx in self.latest:
                calls.append(self._start(ExpertCall(self._img(idx), idx, name, source="fallback")))
        return calls

    def _tag_calls(self, tag: Tag) -> list[tuple[ExpertCall, asyncio.Future[ExpertResult]]]:
        if not self.images:
            self.notes.append(protocol.NO_IMAGES)
            return []
        if tag.image is not None:
            if not 1 <= tag.image <= len(self.images):
                self.notes.append(
                    f"{tag.raw}: there is no image {tag.image}; {len(self.images)} image(s) are attached."
                )
                return []
            targets = [tag.image]
        else:
            targets = self.latest
        return [
            self._start(ExpertCall(self._img(i), i, tag.name, dict(tag.args), query=tag.query, source="tag"))
            for i in targets
        ]

    async def _collect(self, pending: list[tuple[ExpertCall, asyncio.Future[ExpertResult]]]) -> str:
        results = await asyncio.gather(*(f for _, f in pending))
        round_results: dict[int, list[ExpertResult]] = {}
        seen: set[int] = set()
        for (call, _), res in zip(pending, results, strict=True):
            if id(res) in seen:  # a deduplicated call shares its result object
                continue
            seen.add(id(res))
            self.results.append((call.image_index, res))
            round_results.setdefault(call.image_index, []).append(res)
            self.trace.experts.append(
                TraceExpert(
                    expert=res.expert, image=call.image_index, args=res.args, source=call.source,
                    timing_ms=round(res.timing_ms, 2), cached=res.cached, error=res.error,
                )
            )
        analyses = [
            ImageAnalysis.merge(self._img(i).image_id, i, rs, self._img(i).width, self._img(i).height)
            for i, rs in sorted(round_results.items())
        ]
        notes, self.notes = self.notes, []
        return render_context(analyses, notes)

    def _analyses(self) -> list[ImageAnalysis]:
        per: dict[int, list[ExpertResult]] = {}
        for i, r in self.results:
            per.setdefault(i, []).append(r)
        return [
            ImageAnalysis.merge(self._img(i).image_id, i, rs, self._img(i).width, self._img(i).height)
            for i, rs in sorted(per.items())
        ]

    # --- LLM turns ------------------------------------------------------------------------
    async def _turn(self, turn_no: int, msgs: list[dict[str, Any]], final_round: bool, buffer: bool):
        """Stream one LLM turn. Returns (raw reply, started tag calls, tags seen, buffered text)."""
        self._events: list[Any] = getattr(self, "_events", [])
        parser = TagParser()
        raw: list[str] = []
        buffered: list[str] = []
        calls: list[tuple[ExpertCall, asyncio.Future[ExpertResult]]] = []
        seen_keys: set[tuple] = set()
        tag_names: list[str] = []
        after_tag = False
        t0 = time.perf_counter()
        first: float | None = None
        kwargs: dict[str, Any] = {"model": self.model, "messages": msgs, "stream": True}
        for k, v in (("options", self.options), ("keep_alive", self.keep_alive), ("think", self.think)):
            if v is not None:
                kwargs[k] = v
        if self.format is not None and (final_round or not self.images or not buffer):
            kwargs["format"] = self.format
        tools = self._tools_for_turn(final_round)
        if tools:
            kwargs["tools"] = tools
        tool_calls: list[dict[str, Any]] = []

        def visible(text: str) -> None:
            if not text or (after_tag and not final_round):
                return
            if buffer:
                buffered.append(text)
            else:
                self._emit(text)

        def on_tags(tags: list[Tag]) -> None:
            nonlocal after_tag
            for tag in tags:
                tag_names.append(tag.raw)
                if final_round:
                    self.trace.ignored_tags.append(tag.raw)
                    continue
                self.trace.tags.append(tag.raw)
                after_tag = True
                if tag.key() in seen_keys:
                    continue
                seen_keys.add(tag.key())
                calls.extend(self._tag_calls(tag))

        last = None
        try:
            stream = await self.o.client().chat(**kwargs)
            async for chunk in stream:
                last = chunk
                msg = chunk.message
                if msg.thinking:
                    self._events.append(ThinkingDelta(msg.thinking))
                    self.thinking.append(msg.thinking)
                    self._notify()
                if msg.tool_calls:
                    tool_calls.extend(_tool_call_dict(tc) for tc in msg.tool_calls)
                if msg.content:
                    if first is None:
                        first = time.perf_counter()
                    raw.append(msg.content)
                    for item in parser.feed_items(msg.content):
                        if isinstance(item, str):
                            visible(item)
                        else:
                            on_tags([item])
        except (ollama.ResponseError, httpx.HTTPError, ConnectionError) as exc:
            raise _upstream_error(exc, self.model, self.o.host) from None
        for item in parser.close_items():
            if isinstance(item, str):
                visible(item)
            else:
                on_tags([item])
        self.trace.malformed_tags.extend(m.raw for m in parser.malformed)
        if last is not None:
            for f in STAT_FIELDS:
                self.stats[f] += int(getattr(last, f, 0) or 0)
            self.done_reason = last.done_reason or "stop"
        self.trace.llm_calls.append(
            LLMCall(
                turn=turn_no,
                prompt_eval_count=int(getattr(last, "prompt_eval_count", 0) or 0),
                eval_count=int(getattr(last, "eval_count", 0) or 0),
                total_ms=round((time.perf_counter() - t0) * 1000, 2),
                first_token_ms=round((first - t0) * 1000, 2) if first else None,
                tags=tag_names,
            )
        )
        self._sort_tool_calls(tool_calls, "".join(raw), final_round)
        return "".join(raw), calls, bool(tag_names), "".join(buffered)

    # --- tools protocol -------------------------------------------------------------------------
    async def _tools_wanted(self) -> bool:
        """Whether this request offers the experts as native tools (``tools``, or ``auto`` when the
        model reports the ``tools`` capability)."""
        if self.protocol == "tools":
            return True
        if self.protocol != "auto" or not self.o.registry.names():
            return False
        shown = await self.o.show(self.model)
        return "tools" in (shown.capabilities or [])

    def _protocol_prompt(self) -> str:
        return toolspec.TOOLS_PROMPT if self.use_tools else protocol.PROTOCOL_PROMPT

    def _tools_for_turn(self, final_round: bool) -> list[dict[str, Any]]:
        """Ours (unless this is the last round) merged with the client's; ours win a name clash."""
        ours = toolspec.ollama_tools(self.o.registry) if self.use_tools and not final_round else []
        names = {t["function"]["name"] for t in ours}
        client = [t for t in self.client_tools if (t.get("function") or {}).get("name") not in names]
        return ours + client

    def _sort_tool_calls(self, calls: list[dict[str, Any]], reply: str, final_round: bool) -> None:
        """Split one turn's tool calls: ours (run by the router), the client's (handed back) and
        malformed ones (answered with an error, or in ``auto`` a fall back to tags)."""
        self._our_calls, self._bad_calls = [], []
        client_names = {(t.get("function") or {}).get("name") for t in self.client_tools}
        offered = self.use_tools and not final_round
        for call in calls:
            fn = call.get("function") or {}
            name = str(fn.get("name") or "")
            expert = toolspec.expert_for_tool(name, self.o.registry)
            if expert is not None and (offered or name not in client_names):
                if not offered:
                    self.trace.ignored_tags.append(f"tool call {name} (vision tools not offered)")
                    continue
                problem, targets, expert_args = self._check_tool_args(expert, fn.get("arguments"))
                if problem:
                    self._bad_calls.append((call, problem))
                else:
                    self._our_calls.append((call, expert, expert_args, targets))
            elif self.client_tools:
                # Not ours: back to the client unexecuted, as Ollama would return it (also a name the
                # client did not define: the client decides what to do with it).
                self.client_calls.append(call)
            elif offered:
                self._bad_calls.append((call, f"unknown tool {name!r}"))
            else:
                self.trace.ignored_tags.append(f"tool call {name} (no tools offered)")
        if offered and not calls and "<tool_call>" in reply:
            self._bad_calls.append(({"function": {"name": "?", "arguments": {}}}, "tool call written as text"))
        for call, problem in self._bad_calls:
            self.trace.malformed_tags.append(f"tool call {(call.get('function') or {}).get('name')}: {problem}")

    def _check_tool_args(self, expert: str, args: Any) -> tuple[str | None, list[int], dict[str, Any]]:
        if isinstance(args, str):  # some models send the arguments as a JSON string
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                return f"arguments are not JSON: {args[:80]!r}", [], {}
        if args is None:
            args = {}
        if not isinstance(args, dict):
            return "arguments are not an object", [], {}
        args = {k: v for k, v in args.items() if v is not None}
        image = args.pop(toolspec.IMAGE_ARG, None)
        targets = list(self.latest)
        if image is not None:
            try:
                idx = int(image)
            except (TypeError, ValueError):
                return f"image must be a number, got {image!r}", [], {}
            if not 1 <= idx <= len(self.images):
                return f"there is no image {idx}; {len(self.images)} image(s) are attached", [], {}
            targets = [idx]
        try:
            self.o.registry.get(expert).parse_args(args)
        except VisionRouterError as exc:
            return str(exc), [], {}
        return None, targets, args

    async def _tool_round(self, msgs: list[dict[str, Any]], reply: str, tag_calls: list) -> None:
        """Run our tool calls, then append the assistant's calls and one ``tool`` message each."""
        started = [
            (call, expert, [self._start(ExpertCall(self._img(i), i, expert, dict(args), source="tool"))
                            for i in targets])
            for call, expert, args, targets in self._our_calls
        ]
        answered = [c for c, _, _ in started] + [c for c, _ in self._bad_calls]
        msgs.append({"role": "assistant", "content": reply, "tool_calls": [_echo_call(c) for c in answered]})
        for call, _expert, pending in started:
            msgs.append({"role": "tool", "tool_name": call["function"]["name"],
                         "content": await self._collect(pending)})
        for call, problem in self._bad_calls:
            name = (call.get("function") or {}).get("name") or "?"
            msgs.append({"role": "tool", "tool_name": name,
                         "content": f"error: {problem}. Available tools: "
                                    + ", ".join(toolspec.tool_name(n) for n in self.o.registry.names())})
        if tag_calls:  # tags written alongside the calls still get their answer
            context = await self._collect(tag_calls)
            msgs.append({"role": "user", "content": f"{context}\n\n{protocol.FOLLOW_UP}"})
        self._our_calls, self._bad_calls = [], []

    def _fall_back_to_tags(self, msgs: list[dict[str, Any]]) -> None:
        """Switch this request to the tag protocol: drop our tools, teach tags instead."""
        self.use_tools = False
        self._our_calls, self._bad_calls = [], []
        # The words of the malformed turn were buffered (turn 1) or are already out: nothing to undo.
        for i, m in enumerate(msgs):
            if m.get("role") == "system" and toolspec.TOOLS_PROMPT in (m.get("content") or ""):
                msgs[i] = dict(m, content=m["content"].replace(toolspec.TOOLS_PROMPT, protocol.PROTOCOL_PROMPT))
                break

    def _emit(self, text: str) -> None:
        self._events = getattr(self, "_events", [])
        self.answer.append(text)
        self._events.append(TextDelta(text))
        self._notify()

    def _notify(self) -> None:
        wake = getattr(self, "_wake", None)
        if wake is not None:
            wake.set()

    async def _live_events(self, turn: asyncio.Future[Any]):
        """Yield the events of a running turn as they arrive, then the rest once it ends. Closing
        this generator (the client left) cancels the turn, which closes the upstream stream."""
        try:
            while not turn.done():
                if not getattr(self, "_events", None):
                    self._wake = asyncio.Event()
                    waiter = asyncio.ensure_future(self._wake.wait())
                    try:
                        await asyncio.wait({turn, waiter}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waiter.cancel()
                        self._wake = None
                async for ev in self._drain_events():
                    yield ev
            async for ev in self._drain_events():
                yield ev
        finally:
            if not turn.done():
                turn.cancel()

    async def _drain_events(self):
        events, self._events = getattr(self, "_events", []), []
        for ev in events:
            yield ev


def _tool_call_dict(tc: Any) -> dict[str, Any]:
    """A tool call from the client library as Ollama's JSON (``{"function": {name, arguments}}``)."""
    if isinstance(tc, dict):
        return tc
    return tc.model_dump(exclude_none=True) if hasattr(tc, "model_dump") else dict(tc)


def _echo_call(call: dict[str, Any]) -> dict[str, Any]:
    """A tool call as it goes back into the history (arguments must be an object there)."""
    fn = call.get("function") or {}
    args = fn.get("arguments")
    return {"function": {"name": str(fn.get("name") or "?"), "arguments": args if isinstance(args, dict) else {}}}


def _is_file(value: str) -> bool:
    try:
        return len(value) < 4096 and Path(value).expanduser().is_file()
    except (OSError, ValueError):
        return False


def _last_user_index(msgs: list[dict[str, Any]]) -> int | None:
    for i in range(len(msgs) - 1, -1, -1):
        if msgs[i].get("role") == "user":
            return i
    return None


def _upstream_error(exc: BaseException, model: str, host: str) -> Exception:
    if isinstance(exc, ollama.ResponseError):
        if exc.status_code == 404:
            return ModelNotFound(
                f"model '{model}' not found at {host}: create it with "
                f"`ollama pull {BASE_MODEL} && ollama create {model} -f Modelfile`"
            )
        return UpstreamError(f"Ollama at {host}: {exc.error}", exc.status_code if exc.status_code > 0 else 502)
    if isinstance(exc, (httpx.ConnectError, ConnectionError)):
        return OllamaUnreachable(
            f"cannot reach Ollama at {host}: start it with `ollama serve`, or set OLLAMA_HOST / --ollama-host"
        )
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamError(f"Ollama at {host} timed out", 504)
    return UpstreamError(f"Ollama at {host}: {type(exc).__name__}: {exc}", 502)
