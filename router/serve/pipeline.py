"""The one request pipeline of the proxy, the same for ``/api/chat``, ``/api/generate`` and
``/v1/chat/completions`` (each route brings its codec)::

    body -> may it hold images? no: forward the bytes unchanged
         -> parse (codec: typed request) -> no image, or a model that is not routed: forward unchanged
         -> a load request: forward without its images
         -> decode every image in place, in its message -> run the orchestrator
         -> stream the events, or answer one object (codec: chunks, final, errors)

The upstream text model never receives image bytes: the orchestrator replaces each image with a note.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from experts.errors import ImageError, VisionRouterError
from experts.images import DecodedImage, decode_base64_image
from router.core.errors import UpstreamError
from router.core.orchestrator import Final, TextDelta
from router.serve.codecs import ChatMessage, Codec, Routed, Writer
from router.serve.errors import as_router_error, status_of
from router.serve.wire import BadRequest, load_json

if TYPE_CHECKING:
    from router.serve.proxy import VisionProxy


class ClientGone(Exception):
    """The client hung up; the request's work was cancelled."""


class Pipeline:
    """Runs requests through the proxy's forwarder, routing table and orchestrator."""

    def __init__(self, proxy: VisionProxy) -> None:
        self.proxy = proxy
        self.metrics = proxy.metrics

    async def handle(self, request: Request, codec: Codec) -> Response:
        body = await self.proxy.read_body(request)
        if not codec.may_route.search(body):  # no image anywhere: pure pass-through, nothing parsed
            return await self._pass(request, codec, body)
        try:
            req = codec.parse(load_json(body))
        except BadRequest as exc:
            return codec.error(400, str(exc), exc.param)
        if not req.image_count():
            return await self._pass(request, codec, body)
        try:
            routed = await self.proxy.routes.is_routed(req.model)
        except UpstreamError as exc:
            return codec.error(exc.status, str(exc))
        if not routed:
            return await self._pass(request, codec, body)
        if req.load is not None:
            return await self._pass(request, codec, json.dumps(req.load).encode())
        self.metrics.count(f"{codec.kind}_routed")
        try:
            await asyncio.to_thread(self._decode, req.messages)  # CPU work: off the event loop
        except ImageError as exc:
            return codec.error(400, str(exc))
        return await self._answer(request, codec, req)

    async def _pass(self, request: Request, codec: Codec, body: bytes) -> Response:
        self.metrics.count(f"{codec.kind}_passthrough")
        return await self.proxy.forward(request, body)

    def _decode(self, messages: list[ChatMessage]) -> None:
        """Decode every image once, where it is: images stay with their messages."""
        limits = self.proxy.settings.image_limits()
        n = 0
        for m in messages:
            decoded = []
            for raw in m.images:
                n += 1
                if not isinstance(raw, str):
                    raise ImageError(f"image {n}: expected a base64 string, got {type(raw).__name__}")
                decoded.append(decode_base64_image(raw, index=n, **limits))
            m.images = decoded

    async def _answer(self, request: Request, codec: Codec, req: Routed) -> Response:
        run = self._start(request, codec.kind, req)
        writer = codec.writer(req)
        try:
            first = await run.first()
        except VisionRouterError as exc:
            return codec.error(status_of(exc, 400), str(exc), getattr(exc, "param", None))
        if not req.stream:
            try:
                events = [shown for ev in [first, *await run.rest()] for shown in self._shown(ev)]
            except VisionRouterError as exc:
                return codec.error(status_of(exc, 500), str(exc))
            body = json.dumps(writer.whole(events), ensure_ascii=False, separators=(",", ":")).encode()
            return Response(body, media_type=getattr(writer, "content_type", "application/json"))
        return StreamingResponse(
            self._stream(run, first, writer), media_type=codec.media_type, background=_Background(run.cancel)
        )

    def _start(self, request: Request, kind: str, req: Routed) -> RunTask:
        agen = self.proxy.orch.stream(
            [m.to_ollama() for m in req.messages],
            model=req.model,
            options=req.options,
            format=req.format,
            keep_alive=req.keep_alive,
            think=req.think,
            tools=req.tools or None,
            # Progress goes out as `thinking`: only when the operator turned it on, only while the client
            # streams, and never to a client that said think: false.
            progress=self.proxy.cfg.progress and req.stream and req.think is not False,
        )
        images = [im for m in req.messages for im in m.decoded]
        return RunTask(agen, request, lambda final: self.metrics.final(kind, final), self.proxy.cfg.upstream, images)

    async def _stream(self, run: RunTask, first: Any, writer: Writer) -> AsyncIterator[bytes]:
        try:
            ev = first
            while ev is not None:
                for shown in self._shown(ev):
                    piece = writer.chunk(shown)
                    if piece is not None:
                        yield piece
                if isinstance(ev, Final):
                    break
                ev = await run.next()
        except VisionRouterError as exc:
            self.metrics.stream_errors += 1
            yield writer.stream_error(str(exc), status_of(exc, 500))
        finally:
            run.cancel()

    def _shown(self, ev: Any) -> list[Any]:
        """The event as the client gets it: with ``findings`` on, an answer ends with the experts' findings
        line (its own text piece, so it streams). The orchestrator's Final (metrics, traces) keeps the
        model's answer alone; a "no answer" already lists the findings, and tool calls are not an answer."""
        if not (self.proxy.cfg.findings and isinstance(ev, Final) and ev.answered and not ev.tool_calls):
            return [ev]
        line = ev.findings
        if not line:
            return [ev]
        tail = f"\n\n{line}" if ev.answer else line
        return [TextDelta(tail), replace(ev, answer=ev.answer + tail)]


# --- one orchestrated request, as a task ---------------------------------------------------------------
class RunTask:
    """Runs the orchestrator's generator in its own task, feeding a small queue.

    The response reads the queue; a client that hangs up cancels the task, which closes the upstream
    stream (the model stops generating for nobody)."""

    _END = object()

    def __init__(
        self,
        agen: Any,
        request: Request,
        on_final: Callable[[Final], None],
        host: str,
        images: Sequence[DecodedImage] = (),
    ) -> None:
        # Freed as soon as the answer is complete: the pixel budget bounds decoding, this bounds the holding.
        # Not on a cancelled run: an expert still running may share the image with a concurrent request.
        self.images = images
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=64)
        self.request = request
        self.on_final = on_final
        self.host = host
        self.task = asyncio.ensure_future(self._pump(agen))

    async def _pump(self, agen: Any) -> None:
        try:
            async for ev in agen:
                if isinstance(ev, Final):
                    self.on_final(ev)
                    for image in self.images:
                        image.close()
                await self.queue.put(ev)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # delivered to the reader
            await self.queue.put(_Failure(exc))
        finally:
            await agen.aclose()
        await self.queue.put(self._END)

    async def next(self) -> Any:
        item = await self.queue.get()
        if item is self._END:
            return None
        if isinstance(item, _Failure):
            raise as_router_error(item.exc, self.host)
        return item

    async def first(self) -> Any:
        """The first event, or :class:`ClientGone` when the client leaves before it (nothing is
        written until then, so an early error can still get its proper status)."""
        return await _unless_disconnected(self.request, self.next(), self.cancel)

    async def rest(self) -> list[Any]:
        async def collect() -> list[Any]:
            out = []
            while True:
                ev = await self.next()
                if ev is None:
                    return out
                out.append(ev)
                if isinstance(ev, Final):
                    return out

        return await _unless_disconnected(self.request, collect(), self.cancel)

    def cancel(self) -> None:
        if not self.task.done():
            self.task.cancel()


@dataclass
class _Failure:
    exc: BaseException


class _Background:
    """A Starlette background callable that runs a sync function."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn

    async def __call__(self) -> None:
        self.fn()


async def _unless_disconnected(request: Request, aw: Awaitable[Any], on_gone: Callable[[], None]) -> Any:
    task = asyncio.ensure_future(aw)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watcher.cancel()
        on_gone()
        raise
    if task in done:
        watcher.cancel()
        return task.result()
    task.cancel()
    on_gone()
    raise ClientGone()


__all__ = ["ClientGone", "Pipeline", "RunTask"]
