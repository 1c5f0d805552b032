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

This module is the public face (:class:`Orchestrator`, the events); the loop itself is
:mod:`router.core.run`, the two ways of asking :mod:`router.core.protocols`, the expert side
:mod:`router.core.expert_work`, and Ollama :mod:`router.core.upstream`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ollama

from experts.errors import ImageError
from experts.images import DecodedImage, decode_base64_image, decode_image, load_image_file
from experts.registry import Registry, default_registry
from router.core.cache import ResultCache
from router.core.config import Settings
from router.core.dispatch import Dispatcher, run_coroutine
from router.core.events import Event, Final, Progress, TextDelta, ThinkingDelta, ToolCalls
from router.core.keywords import KeywordRouter
from router.core.run import Request, Run
from router.core.semantic import SemanticRouter
from router.core.upstream import SHOW_TTL_S, STAT_FIELDS, Upstream

__all__ = [
    "SHOW_TTL_S",
    "STAT_FIELDS",
    "Event",
    "Final",
    "ImageInput",
    "Orchestrator",
    "Progress",
    "TextDelta",
    "ThinkingDelta",
    "ToolCalls",
]

log = logging.getLogger(__name__)

ImageInput = DecodedImage | bytes | str | Path
Messages = Sequence[Mapping[str, Any] | ollama.Message]  # Ollama's JSON, or the client's typed messages


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
        semantic: SemanticRouter | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.upstream = Upstream(self.settings.ollama_host, client=client, protocol_model=self.settings.model)
        self.host = self.upstream.host
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
        self._semantic = _SemanticLoader(self.settings, semantic)

    def preload(self) -> None:
        """Start loading the semantic router in the background now (servers call this at start, so the
        first request does not pay for it; the CLI while it decodes images)."""
        self._semantic.start()

    def semantic_router(self) -> SemanticRouter | None:
        """The semantic router, loaded on first use (waits for a load in progress); ``None`` when it is
        off (``semantic = false``) or cannot load here (said once in the log)."""
        return self._semantic.get()

    # --- public API -------------------------------------------------------------------------
    async def show(self, model: str) -> ollama.ShowResponse:
        """Ollama's ``/api/show`` for ``model`` (its SYSTEM and capabilities): the one cache of it
        (:data:`SHOW_TTL_S`, so a model re-created with ``ollama create`` is noticed). Raises
        :class:`~router.core.errors.UpstreamError` (``status``, ``detail``), e.g. ``ModelNotFound``."""
        return await self.upstream.show(model)

    def client(self) -> ollama.AsyncClient:
        """The async Ollama client for the running event loop."""
        return self.upstream.client()

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

    def chat(self, messages: Messages, *, on_text: Callable[[str], None] | None = None, **kwargs: Any) -> Final:
        """Sync: a whole conversation (Ollama message dicts, images on any user message)."""
        return run_coroutine(self.achat(messages, on_text=on_text, **kwargs))

    async def achat(self, messages: Messages, *, on_text: Callable[[str], None] | None = None, **kwargs: Any) -> Final:
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
        messages: Messages,
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
        progress: bool = False,
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
        ``progress``: also yield :class:`Progress` events while experts look (for a streaming client).
        """
        req = Request(
            model=model or self.settings.model,
            options=options,
            format=format,
            keep_alive=keep_alive,
            think=think,
            forced=[(e, {}) if isinstance(e, str) else (e[0], dict(e[1])) for e in experts or ()],
            extra_context=extra_context,
            client_tools=[t for t in tools or () if isinstance(t, dict)],
            protocol=protocol or self.settings.protocol,
            progress=progress,
        )
        async for ev in Run(self, req).events(messages, decoded):
            yield ev


class _SemanticLoader:
    """Loads the semantic router once per process, in a thread; every caller waits for the same load."""

    def __init__(self, settings: Settings, given: SemanticRouter | None) -> None:
        self.settings = settings
        self.router = given
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        if given is not None or not settings.semantic:
            self.done.set()

    def start(self) -> None:
        with self.lock:
            if self.done.is_set() or self.thread is not None:
                return
            self.thread = threading.Thread(target=self._load, name="semantic-router-load", daemon=True)
            self.thread.start()

    def get(self) -> SemanticRouter | None:
        self.start()
        self.done.wait()
        return self.router

    def _load(self) -> None:
        try:
            self.router = SemanticRouter.load(
                self.settings.exemplars_file,
                min_confidence=self.settings.semantic_min_confidence,
                cache_dir=self.settings.resolved_cache_dir(),
            )
        except Exception as exc:  # noqa: BLE001 - any failure leaves routing to keywords and the model
            log.warning("semantic router off: %s", exc)
        finally:
            self.done.set()


def _is_file(value: str) -> bool:
    try:
        return len(value) < 4096 and Path(value).expanduser().is_file()
    except (OSError, ValueError):
        return False
