"""One request through the run loop, as a small state machine::

    prepare  -> typed messages, images numbered and replaced by notes
    first    -> experts decided already (presets, keywords, the semantic router, a forced format)? they
                look now, and the model is told to answer from the findings: ONE turn, tags in it ignored.
                The semantic router says no expert is needed: the model answers, taught how to ask.
                Nobody decided: the fallback experts look at once and the model answers from them, taught
                how to ask for more (a second round only if it does).
    turn     -> stream one LLM turn: text out as it comes, each closed tag dispatched at once
    next     -> hand back the client's calls | fall back to tags | a tool round | a tag round |
                one recovery turn | done
    finish   -> the Final event (an answer, or a clear "no answer" with the experts' findings)

An expert that cannot run here (no weights, a service down: the registry knows from start-up) is
skipped at once wherever it is asked for, with one line in the next context. Tags that name one,
repeat what already ran, or come without an image are dropped.

Events go through an :class:`asyncio.Queue`: the loop runs as one task that puts them, the caller's
generator takes them, and closing that generator (the client left) cancels the task, which closes
the upstream stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from experts.images import DecodedImage
from router.core import protocol as tag_text
from router.core.answer_text import AnswerFilter, FoundText
from router.core.context import no_answer
from router.core.dispatch import ExpertCall
from router.core.events import Event, Final, Progress, TextDelta, ThinkingDelta, ToolCalls
from router.core.expert_work import ExpertWork, Pending
from router.core.messages import (
    Conversation,
    Message,
    ToolCall,
    assistant,
    call_json,
    call_name,
    split_images,
    user,
    with_image_notes,
)
from router.core.protocols import (
    TAGS,
    TOOLS,
    CallRules,
    Protocol,
    SortedCalls,
    bad_call_notes,
    protocol_needed,
    taught,
    tool_error,
    tool_name_of,
)
from router.core.semantic import Decision
from router.core.tags import Tag, TagParser
from router.core.trace import LLMCall, Trace
from router.core.upstream import STAT_FIELDS

if TYPE_CHECKING:
    from router.core.orchestrator import Orchestrator

_END = object()
MAX_FILTERED_CHARS = 300  # of each piece the answer filter took out, kept in the trace
log = logging.getLogger(__name__)


@dataclass
class Request:
    """What the caller asked for, besides the messages."""

    model: str
    options: Any = None
    format: Any = None
    keep_alive: Any = None
    think: Any = None
    forced: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # experts run first (presets)
    extra_context: str | None = None
    client_tools: list[dict[str, Any]] = field(default_factory=list)
    protocol: str = "tags"  # tags, tools or auto
    progress: bool = False  # say which experts are looking (Progress events) while they run


@dataclass(frozen=True)
class Step:
    """The state between turns."""

    rounds: int = 0  # expert rounds done
    recovery: bool = False  # the one extra turn after a last round that only asked for experts
    answer_only: bool = False  # the router decided the experts (or there is no image): one turn, tags ignored


@dataclass
class Reply:
    """What one turn brought."""

    final: bool
    text: str = ""  # raw, tags included
    tag_calls: list[Pending] = field(default_factory=list)
    tags_seen: bool = False  # tags that started expert work (dropped ones do not count)
    asked_again: bool = False  # asked for experts when none could run
    calls: SortedCalls = field(default_factory=SortedCalls)


def first_turn(messages: Sequence[Message], prompt: str | None) -> list[Message]:
    """Turn-1 messages as the run loop sends them: the (image-noted) messages, with ``prompt`` joined to
    the client's system message or sent as one. ``eval`` builds its turns with this too."""
    conv = Conversation(list(messages))
    if prompt:
        conv.add_system(prompt)
    return conv.messages


class Run:
    """One request. Iterate :meth:`events`."""

    def __init__(self, orch: Orchestrator, req: Request) -> None:
        self.o = orch
        self.req = req
        self.max_rounds = orch.settings.max_rounds
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.trace = Trace(model=req.model)
        self.work = ExpertWork(
            orch.registry,
            orch.dispatcher,
            self.trace,
            max_runs=orch.settings.max_expert_runs,
            max_per_reply=orch.settings.max_tags_per_reply,
        )
        self.stats = dict.fromkeys(STAT_FIELDS, 0)
        self.done_reason = "stop"
        self.answer: list[str] = []
        self.thinking: list[str] = []
        self.client_calls: list[dict[str, Any]] = []
        self.protocol: Protocol = TAGS
        self.taught: str | None = None  # the system prompt this run sent, if any
        self.conv = Conversation([])
        self.user_text = ""
        self.step = Step()
        self.turns = 0
        self.joint = ""  # the white space the last turn's words ended with: it joins the next turn's

    async def events(self, messages: Sequence[Any], decoded: list[DecodedImage] | None) -> AsyncIterator[Event]:
        """The request's events, ending with one :class:`Final`; errors are raised here."""
        driver = asyncio.ensure_future(self._drive(messages, decoded))
        try:
            while (ev := await self.queue.get()) is not _END:
                yield ev
            await driver  # its error, if it failed
        finally:
            if not driver.done():
                driver.cancel()

    async def _drive(self, messages: Sequence[Any], decoded: list[DecodedImage] | None) -> None:
        try:
            t0 = time.perf_counter()
            await self._prepare(messages, decoded)
            step: Step | None = await self._first()
            while step is not None:
                self.step = step
                reply = await self._turn(step)
                step = await self._next(step, reply)
            self._finish(t0)
        finally:
            self.queue.put_nowait(_END)

    # --- prepare ----------------------------------------------------------------------------------
    async def _prepare(self, messages: Sequence[Any], decoded: list[DecodedImage] | None) -> None:
        if decoded is None and any(_images_of(m) for m in messages):
            # Decoding is CPU work (ms per megapixel): keep it off the event loop the proxy serves from.
            self.conv = await asyncio.to_thread(self._typed, messages, decoded)
        else:
            self.conv = self._typed(messages, decoded)
        if self.req.extra_context:
            self.conv.before_question(self.req.extra_context)

    def _typed(self, messages: Sequence[Any], decoded: list[DecodedImage] | None) -> Conversation:
        """Typed messages without image bytes: images numbered across the conversation, a note where each was."""
        pre = list(decoded) if decoded is not None else None
        out: list[Message] = []
        for i, raw in enumerate(messages, 1):
            msg, images = split_images(raw, i)
            if msg.role == "user":
                self.user_text = msg.content or ""
            if images:
                idxs = [
                    self.work.attach(pre.pop(0) if pre else self.o.decode(r, len(self.work.images) + 1)) for r in images
                ]
                if msg.role == "user":
                    self.work.latest = idxs
                notes = [
                    tag_text.image_note(x, self.work.img(x).width, self.work.img(x).height, self.work.img(x).format)
                    for x in idxs
                ]
                msg = msg.model_copy(update={"content": with_image_notes(msg.content, notes)})
            out.append(msg)
        if self.work.images and not self.work.latest:
            self.work.latest = [len(self.work.images)]
        self.trace.images = [dict(img.describe(), index=i + 1) for i, img in enumerate(self.work.images)]
        return Conversation(out)

    async def _choose_protocol(self) -> Protocol:
        """``tools``, or ``auto`` when the model reports the ``tools`` capability: experts as native tools."""
        if self.req.protocol == "tools":
            return TOOLS
        if self.req.protocol == "auto" and self.o.registry.names():
            shown = await self.o.show(self.req.model)
            return TOOLS if "tools" in (shown.capabilities or []) else TAGS
        return TAGS

    async def _teach(self, prompt: str) -> None:
        """Send ``prompt`` as (or joined to) the system message, or put it in place of the one this run
        sent before; unless the model's own SYSTEM already is this prompt (``inject_protocol``)."""
        if self.taught is not None:
            self.conv.replace_in_system(self.taught, prompt)
            self.taught = prompt
            self.trace.sent_system(prompt)
            return
        mode = self.o.settings.inject_protocol
        # The Python client keeps `modelfile` (which holds SYSTEM), not the `system` field.
        modelfile = (await self.o.show(self.req.model)).modelfile if mode == "auto" else None
        if protocol_needed(mode, modelfile, self.conv.has_system(), prompt):
            self.trace.sent_system(prompt)
            self.conv.add_system(prompt)
            self.taught = prompt

    # --- first: experts before the model speaks --------------------------------------------------
    async def _first(self) -> Step:
        if not self.work.images:
            return Step(answer_only=True)  # nothing to look at: tags in the reply are dropped
        if self.max_rounds <= 0:
            await self._teach(tag_text.NO_EXPERTS_PROMPT)
            return Step(answer_only=True)
        pending = [p for name, args in self.req.forced for p in self.work.on_latest(name, args, "preset")]
        pending += self._keyword_calls()
        decision = None if pending else await self._semantic_decision()
        if decision is not None and decision.decided:
            pending = [p for name, args in decision.calls for p in self.work.on_latest(name, args, "semantic")]
            if not pending and not self.req.format:  # no expert needed: the model answers (it may still ask)
                return await self._model_decides()
        # A forced output format leaves no room for a tag turn: the fallback experts decide instead.
        if not pending and self.req.format:
            pending = self._fallback()
        if pending:  # decided: the model answers from the findings, in one turn
            await self._teach(tag_text.ANSWER_PROMPT)
            await self._context_first(pending)
            return Step(rounds=1, answer_only=True)
        # Nobody decided: the fallback experts look at once and the model answers from them in its first
        # turn, free to ask for more (a second round only then). No turn is spent finding out that it
        # would not ask, and no answer waits for a turn and the experts one after the other.
        pending = self._fallback()
        step = await self._model_decides()
        if pending:
            await self._context_first(pending)
            return Step(rounds=1)
        return step

    async def _model_decides(self) -> Step:
        """The model is taught how to ask for the experts that can run here; its turn streams as it comes."""
        self.protocol = await self._choose_protocol()
        await self._teach(self.protocol.prompt_for(taught(self.o.registry)))
        if self.work.has_notes():  # asked for, but cannot run: the model hears it now, not never
            self.conv.before_question(await self.work.collect([]))
        return Step()

    def _fallback(self) -> list[Pending]:
        pending = self.work.fallback(self.o.settings.fallback)
        self.trace.fallback = bool(pending)
        return pending

    async def _semantic_decision(self) -> Decision | None:
        """The semantic router's decision on the user's words (``None``: off, cannot load here, or no words).
        Waiting for a load still in progress and encoding are off the event loop the proxy serves from."""
        if not self.o.settings.semantic or not self.user_text.strip():
            return None
        text, runnable = self.user_text, self.o.registry.can_run

        def decide() -> Decision | None:
            router = self.o.semantic_router()
            return None if router is None else router.route(text, runnable)

        decision = await asyncio.to_thread(decide)
        if decision is not None:
            self.trace.semantic = decision.as_trace()
        return decision

    def _keyword_calls(self) -> list[Pending]:
        pending: list[Pending] = []
        for m in self.o.keywords.route(self.user_text):
            if self.o.registry.resolve(m.expert) is None:
                continue  # the table names an expert that is not installed: let the model decide
            self.trace.keywords.append({"expert": m.expert, "keyword": m.keyword, "args": m.args})
            pending += self.work.on_latest(m.expert, dict(m.args), "keyword")
        return pending

    async def _collect(self, pending: list[Pending]) -> str:
        """Wait for expert calls (saying which look, when the caller asked for progress); their context."""
        if self.req.progress and pending:
            self._put(Progress(self.work.progress_line(pending)))
        return await self.work.collect(pending)

    async def _context_first(self, pending: list[Pending]) -> None:
        """Results the router fetched itself go in front of the question, with what was looked at."""
        context = await self._collect(pending)
        done = self.work.looked_at(pending)
        note = f"\n{tag_text.looked_at(done)}" if done else ""
        self.conv.before_question(context + note)

    # --- turn -------------------------------------------------------------------------------------
    async def _turn(self, step: Step) -> Reply:
        final = step.recovery or step.answer_only or step.rounds >= self.max_rounds
        self.turns += 1
        reader = _TurnReader(self, final)
        t0 = time.perf_counter()
        async with aclosing(
            self.o.upstream.chat(self.req.model, self.conv.messages, **self._turn_args(final, step))
        ) as chunks:
            async for chunk in chunks:
                reader.feed(chunk)
                if reader.clean.dropping:
                    break  # it started the next turn or loops: nothing more of this turn would reach the user
        reader.close()
        reply = reader.reply
        reply.text = "".join(reader.raw)
        rules = CallRules(
            self.o.registry,
            {tool_name_of(t) for t in self.req.client_tools},
            len(self.work.images),
            self.work.latest,
            max(0, self.work.max_per_reply - len(reader.keys)),
        )
        reply.calls = self.protocol.sort_calls(reader.tool_calls, reply.text, rules, final)
        reply.asked_again = reply.asked_again or bool(reply.calls.ignored)
        self.trace.ignored_tags.extend(reply.calls.ignored)
        self.trace.malformed_tags.extend([m.raw for m in reader.parser.malformed] + bad_call_notes(reply.calls))
        self.trace.skipped.extend(f"tool call {call_name(c)} ({why})" for c, why in reply.calls.skipped)
        self.client_calls.extend(call_json(c) for c in reply.calls.client)
        self._account(reader, t0)
        return reply

    def _turn_args(self, final: bool, step: Step) -> dict[str, Any]:
        req = self.req
        args = {
            k: v
            for k, v in (("options", req.options), ("keep_alive", req.keep_alive), ("think", req.think))
            if v is not None
        }
        if req.format is not None:
            args["format"] = req.format
        tools = self.protocol.tools_for_turn(self.o.registry, req.client_tools, final)
        if tools:
            args["tools"] = tools
        return args

    def _account(self, reader: _TurnReader, t0: float) -> None:
        last = reader.last
        for f in STAT_FIELDS:
            self.stats[f] += int(getattr(last, f, 0) or 0)
        if last is not None:
            self.done_reason = last.done_reason or "stop"
        first = reader.first
        self.trace.llm_calls.append(
            LLMCall(
                turn=self.turns,
                prompt_eval_count=int(getattr(last, "prompt_eval_count", 0) or 0),
                eval_count=int(getattr(last, "eval_count", 0) or 0),
                total_ms=round((time.perf_counter() - t0) * 1000, 2),
                first_token_ms=round((first - t0) * 1000, 2) if first else None,
                tags=reader.tag_names,
                tool_calls=[call_name(c) for c in reader.tool_calls],
            )
        )

    # --- next: what the reply leads to ------------------------------------------------------------
    async def _next(self, step: Step, r: Reply) -> Step | None:
        calls = r.calls
        if self.client_calls:  # the client's own tools: hand the calls back and stop here
            self._put(ToolCalls(list(self.client_calls)))
            return None
        if calls.bad and self.req.protocol == "auto" and self.protocol.offers_tools:
            self._fall_back_to_tags()  # a malformed native call: teach tags instead and ask again
            return step
        after = Step(rounds=step.rounds + 1)
        if not r.final and (calls.ours or calls.bad or calls.skipped):
            await self._tool_round(r, after)
            return after
        if not r.final and r.tags_seen and (r.tag_calls or self.work.has_notes()):
            context = await self._collect(r.tag_calls)
            self.conv.extend(self.protocol.follow_up(r.text, SortedCalls(), [], context, self._last(after)))
            return after
        # One turn told plainly to answer, when the reply was only tags: not on the decided path (one call
        # there), but without an image the user should hear that one is needed.
        if r.asked_again and not step.recovery and self._blank() and not (step.answer_only and self.work.images):
            await self._recover(r)
            return Step(rounds=step.rounds, recovery=True)
        return None

    def _last(self, step: Step) -> bool:
        return step.rounds >= self.max_rounds

    async def _tool_round(self, r: Reply, after: Step) -> None:
        """Run our tool calls; the reply's calls and one ``tool`` message each follow it."""
        calls = r.calls
        started = [
            self.work.start_all(
                ExpertCall(self.work.img(i), i, oc.expert, dict(oc.args), source="tool") for i in oc.images
            )
            for oc in calls.ours
        ]
        answers = [await self._collect(p) for p in started]
        answers += [tool_error(problem, self.o.registry) for _, problem in calls.bad]
        answers += [f"error: {why}, at most {self.work.max_per_reply} per reply" for _, why in calls.skipped]
        context = await self._collect(r.tag_calls) if r.tag_calls else None
        self.conv.extend(self.protocol.follow_up(r.text, calls, answers, context, self._last(after)))

    def _fall_back_to_tags(self) -> None:
        # The words of the malformed turn are already out: nothing to undo.
        if self.taught is not None:
            prompt = TAGS.prompt_for(taught(self.o.registry))
            self.conv.replace_in_system(self.taught, prompt)
            self.taught = prompt
            self.trace.sent_system(prompt)
        self.protocol = TAGS

    async def _recover(self, r: Reply) -> None:
        """The reply only asked for experts that will not run: one more turn, told plainly to answer (and why
        what it asked for did not run)."""
        if r.text.strip():
            self.conv.extend([assistant(r.text)])
        told = tag_text.NO_MORE_EXPERTS if self.work.images else tag_text.NO_IMAGES
        if self.work.has_notes():
            told = f"{await self.work.collect([])}\n{told}"
        self.conv.extend([user(told)])

    # --- events -----------------------------------------------------------------------------------
    def _put(self, ev: Event) -> None:
        self.queue.put_nowait(ev)

    def emit(self, text: str) -> None:
        self.answer.append(text)
        self._put(TextDelta(text))

    def think(self, text: str) -> None:
        self.thinking.append(text)
        self._put(ThinkingDelta(text))

    def _blank(self) -> bool:
        return not "".join(self.answer).strip()

    def _finish(self, t0: float) -> None:
        answered = bool(self.client_calls) or not self._blank()
        if not answered:
            asked_again = bool(self.trace.ignored_tags) or self.step.recovery
            self.emit(no_answer(self.work.analyses(), asked_again))
        self.trace.rounds = self.step.rounds
        self.trace.cache = self.o.dispatcher.cache.stats.as_dict()
        self.trace.total_ms = round((time.perf_counter() - t0) * 1000, 2)
        self._put(
            Final(
                answer="".join(self.answer),
                model=self.req.model,
                done_reason=self.done_reason,
                stats=dict(self.stats),
                trace=self.trace,
                analyses=self.work.analyses(),
                thinking="".join(self.thinking),
                tool_calls=list(self.client_calls),
                answered=answered,
            )
        )


class _TurnReader:
    """Reads one streamed turn: visible text out (or held back), tags dispatched the moment they close
    (at most ``max_per_reply`` distinct ones), native tool calls and thinking collected."""

    def __init__(self, run: Run, final: bool) -> None:
        self.run = run
        self.final = final
        self.parser = TagParser()
        self.reply = Reply(final=final)
        self.raw: list[str] = []
        self.keys: set[tuple] = set()
        self.tag_names: list[str] = []
        self.tool_calls: list[ToolCall] = []
        self.after_tag = False
        # What the user reads: echoed scaffolding out, loops cut (a JSON answer keeps its repeated lines);
        # whatever the experts found is the image's text, never scaffolding.
        self.clean = AnswerFilter(
            (run.taught or run.protocol.prompt,),
            repetition=run.req.format is None,
            found=FoundText(run.work.found_texts()),
            enabled=run.o.settings.serve.answer_filter,
        )
        self.first: float | None = None
        self.last: Any = None

    def feed(self, chunk: Any) -> None:
        self.last = chunk
        msg = chunk.message
        if msg.thinking:
            self.run.think(msg.thinking)
        if msg.tool_calls:
            self.tool_calls.extend(msg.tool_calls)
        if msg.content:
            if self.first is None:
                self.first = time.perf_counter()
            self.raw.append(msg.content)
            self._items(self.parser.feed_items(msg.content))

    def close(self) -> None:
        self._items(self.parser.close_items())
        self._out(self.clean.close())
        if self.clean.released:
            self.run.joint = self.clean.trailing
        for why, text in self.clean.removed:
            log.debug("answer filter, turn %d: took out %s: %r", self.run.turns, why, text[:200])
            self.run.trace.filtered.append({"turn": self.run.turns, "why": why, "text": text[:MAX_FILTERED_CHARS]})

    def _items(self, items: list[str | Tag]) -> None:
        for item in items:
            if isinstance(item, str):
                self._visible(item)
            else:
                self._tag(item)

    def _visible(self, text: str) -> None:
        if not text or (self.after_tag and not self.final):
            return  # words after a tag are the model guessing at results it has not seen
        self._out(self.clean.feed(text))

    def _out(self, text: str) -> None:
        if not text:
            return
        if not self.clean.released and self.run.answer:
            text = self.run.joint + text  # words of an earlier turn are out: join as the model wrote them
        self.clean.released = True
        self.run.emit(text)

    def _tag(self, tag: Tag) -> None:
        trace = self.run.trace
        self.tag_names.append(tag.raw)
        if self.final:
            trace.ignored_tags.append(tag.raw)
            self.reply.asked_again = True
            return
        self.after_tag = True
        key = tag.key()
        if key in self.keys:
            trace.tags.append(tag.raw)
            return
        if self.run.work.dropped(tag):  # cannot run here, or repeats what already ran: no round for it
            self.reply.asked_again = True
            return
        self.reply.tags_seen = True
        trace.tags.append(tag.raw)
        if len(self.keys) >= self.run.work.max_per_reply:
            self.run.work.skip_request(tag.raw)
            return
        self.keys.add(key)
        self.reply.tag_calls.extend(self.run.work.tag_calls(tag))


def _images_of(m: Any) -> Any:
    if isinstance(m, Message):
        return m.images
    return m.get("images") if isinstance(m, dict) else None
