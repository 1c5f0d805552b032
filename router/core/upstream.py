"""The one gateway to Ollama: a streamed chat turn, ``/api/show`` (cached), and every failure mapped to
one :class:`UpstreamError` a person can act on.

The run loop, ``eval``, ``doctor`` and ``demo`` talk to Ollama through :class:`Upstream`; the proxy and
the RAG embedder, which keep their own clients, map their failures with :func:`upstream_error` (or
:func:`error_reply` for a status and a line), so a missing model or a stopped server reads the same
wherever it shows up.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import ollama

from router.core.config import BASE_MODEL, DEFAULT_MODEL
from router.core.errors import ModelNotFound, OllamaUnreachable, UpstreamError
from router.core.ollama_host import resolve_host

SHOW_TTL_S = 60.0
STAT_FIELDS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)
# What talking to Ollama may raise (the ollama client turns a refused connection into ConnectionError).
UPSTREAM_ERRORS = (ollama.ResponseError, httpx.HTTPError, ConnectionError)
START_HINT = "start it with `ollama serve`, or set OLLAMA_HOST / --ollama-host"


def setup_steps(model: str, protocol_model: str = DEFAULT_MODEL) -> list[str]:
    """The commands that bring ``model`` into Ollama: the router's own model is made from the Modelfile; any
    other name is a library model to pull (``ollama create llava:7b -f Modelfile`` would be wrong advice)."""
    if _base(model) == _base(protocol_model):
        return [f"ollama pull {BASE_MODEL}", f"ollama create {model} -f {modelfile_path()}"]
    return [f"ollama pull {model}"]


def create_hint(model: str, protocol_model: str = DEFAULT_MODEL) -> str:
    """How to get a missing model, in one clause: :func:`setup_steps` joined."""
    verb = "create" if _base(model) == _base(protocol_model) else "pull"
    return f"{verb} it with `{' && '.join(setup_steps(model, protocol_model))}`"


def modelfile_path() -> str:
    """The Modelfile as a user can pass it to ``ollama create -f``: in a checkout its own (``Modelfile`` when
    the command runs from the checkout's root, else its full path); in any other install (a wheel, an index)
    there is no checkout, so the copy that ships inside the package (``router/data/Modelfile``)."""
    from experts.install import origin

    where = origin()
    if where.kind == "checkout" and (Path(where.where) / "Modelfile").is_file():
        path = Path(where.where) / "Modelfile"
        if path.parent == _cwd():
            return "Modelfile"
    else:
        path = Path(str(resources.files("router").joinpath("data/Modelfile")))
    return shlex.quote(str(path))


def _cwd() -> Path | None:
    try:
        return Path.cwd().resolve()
    except OSError:  # the folder it ran from was removed
        return None


def _base(model: str) -> str:
    name = model.strip().lower()
    return name[: -len(":latest")] if name.endswith(":latest") else name


def upstream_error(
    exc: BaseException,
    host: str,
    model: str | None = None,
    *,
    missing: str | None = None,
    unreachable: str | None = None,
    protocol_model: str = DEFAULT_MODEL,
) -> UpstreamError:
    """Any failure talking to Ollama as one :class:`UpstreamError`: ``status`` to pass on, one line for
    people, ``detail`` Ollama's own words. ``missing`` replaces the fix offered for a 404 on ``model``
    (default: create it from the Modelfile), ``unreachable`` the one for a server that is not there."""
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, ollama.ResponseError):
        status = exc.status_code if exc.status_code > 0 else 502  # a mid-stream error line has no status
        if status == 404 and model:
            fix = missing or create_hint(model, protocol_model)
            return ModelNotFound(f"model '{model}' not found at {host}: {fix}", detail=exc.error)
        return UpstreamError(f"Ollama at {host}: {exc.error}", status, detail=exc.error)
    if isinstance(exc, (httpx.ConnectError, ConnectionError)):
        return OllamaUnreachable(f"cannot reach Ollama at {host}: {unreachable or START_HINT}")
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamError(f"Ollama at {host} timed out", 504)
    return UpstreamError(f"Ollama at {host}: {type(exc).__name__}: {exc}", 502)


def error_reply(exc: BaseException, host: str, model: str | None = None) -> tuple[int, str]:
    """``(HTTP status, one-line message)`` for a failure talking to Ollama (for ``{"error": ...}`` bodies)."""
    err = upstream_error(exc, host, model)
    return err.status, str(err)


class Upstream:
    """One Ollama server: an async client per event loop, ``/api/show`` cached per model, streamed turns.

    ``show`` answers (and ``4xx`` refusals, e.g. a missing model) are kept ``show_ttl_s`` seconds, so a
    model re-created with ``ollama create`` is noticed; concurrent asks for one model share one call.
    """

    def __init__(
        self,
        host: str | None = None,
        *,
        client: ollama.AsyncClient | None = None,
        timeout: float | None = None,
        show_ttl_s: float = SHOW_TTL_S,
        protocol_model: str = DEFAULT_MODEL,
        unreachable: str | None = None,
    ) -> None:
        self.host = resolve_host(host)
        self.protocol_model = protocol_model
        # What to do when Ollama is not there, in the words of the command that runs this (`serve` says
        # --upstream, the others --ollama-host); None: START_HINT.
        self.unreachable = unreachable
        self.show_ttl_s = show_ttl_s
        self._client = client
        self._timeout = timeout
        self._clients: dict[int, ollama.AsyncClient] = {}
        self._shown: dict[str, tuple[float, Any]] = {}  # model -> (expires, ShowResponse or UpstreamError)
        self._asking: dict[tuple[int, str], asyncio.Future[Any]] = {}

    def client(self) -> ollama.AsyncClient:
        """The async Ollama client for the running event loop (a client belongs to the loop that made it)."""
        if self._client is not None:
            return self._client
        loop_id = id(asyncio.get_running_loop())
        c = self._clients.get(loop_id)
        if c is None:
            c = ollama.AsyncClient(host=self.host, timeout=self._timeout)
            self._clients = {loop_id: c}
        return c

    async def show(self, model: str) -> ollama.ShowResponse:
        """Ollama's ``/api/show`` for ``model`` (its SYSTEM, capabilities...), cached; raises
        :class:`UpstreamError` (:class:`ModelNotFound` for a missing model)."""
        hit = self._shown.get(model)
        if hit is not None and hit[0] > time.monotonic():
            if isinstance(hit[1], UpstreamError):
                raise hit[1].with_traceback(None)
            return hit[1]
        key = (id(asyncio.get_running_loop()), model)
        fut = self._asking.get(key)
        if fut is None:
            fut = asyncio.ensure_future(self._ask_show(model))
            self._asking[key] = fut
            fut.add_done_callback(lambda _f: self._asking.pop(key, None))
        # One caller leaving (a client hung up) must not cancel the others' shared call.
        return await asyncio.shield(fut)

    def forget(self, model: str | None = None) -> None:
        """Drop the cached ``show`` of ``model`` (of every model when None)."""
        if model is None:
            self._shown.clear()
        else:
            self._shown.pop(model, None)

    async def _ask_show(self, model: str) -> ollama.ShowResponse:
        try:
            shown = await self.client().show(model)
        except UPSTREAM_ERRORS as exc:
            err = upstream_error(exc, self.host, model, **self._wording())
            if err.status < 500 and isinstance(exc, ollama.ResponseError):  # 5xx may be transient: ask again
                self._shown[model] = (time.monotonic() + self.show_ttl_s, err)
            raise err from None
        self._shown[model] = (time.monotonic() + self.show_ttl_s, shown)
        return shown

    async def chat(
        self, model: str, messages: Sequence[ollama.Message], **kwargs: Any
    ) -> AsyncIterator[ollama.ChatResponse]:
        """Stream one chat turn; ``kwargs`` are the client's (tools, options, format, keep_alive, think)."""
        try:
            stream = await self.client().chat(model=model, messages=messages, stream=True, **kwargs)
            async for chunk in stream:
                yield chunk
        except UPSTREAM_ERRORS as exc:
            raise upstream_error(exc, self.host, model, **self._wording()) from None

    async def version(self) -> str:
        """Ollama's version string (doubles as the "is it up?" check)."""
        try:
            async with httpx.AsyncClient(base_url=self.host, timeout=self._timeout) as http:
                r = await http.get("/api/version")
                r.raise_for_status()
                return str(r.json().get("version", "?"))
        except httpx.HTTPStatusError as exc:
            raise UpstreamError(f"Ollama at {self.host}: HTTP {exc.response.status_code}", 502) from None
        except (httpx.HTTPError, ValueError) as exc:
            raise upstream_error(exc, self.host, unreachable=self.unreachable) from None

    def _wording(self) -> dict[str, Any]:
        return {"protocol_model": self.protocol_model, "unreachable": self.unreachable}


def turn_stats(last: Any) -> dict[str, int]:
    """The token and time counts of a turn's final chunk (zeros when it had none)."""
    return {f: int(getattr(last, f, 0) or 0) for f in STAT_FIELDS}
