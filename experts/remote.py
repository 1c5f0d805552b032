"""An expert that runs elsewhere: :class:`RemoteExpert` calls an expert service
(:mod:`experts.service`) by URL and behaves like the local expert.

Configure it with a ``url`` setting on any expert (``registry.configure("caption",
url="http://gpu-box:8790")``), or register a service whose expert is not installed locally with
``registry.add_remote("caption", "http://gpu-box:8790")``.

A service started with ``--token`` needs the same ``token`` setting here (sent as
``Authorization: Bearer <token>``).

Timeouts are bounded (``connect_timeout``, default 3 s; ``timeout`` for the answer, default 120 s).
Only failures to connect are retried (``retries``, default 2, with a short backoff): a request the
service may have started is never sent twice. Every failure becomes an
:class:`~experts.errors.ExpertError` with one line, the same line a local failure would give.

A run the router gives up on (its timeout, or the request that wanted it went away) closes its connection
at once (:func:`experts.cancel.on_cancel`); the service sees its client leave and stops the analysis at its
next step. Each analysis has a connection of its own for that (a closed connection ends one run, never
another's), which costs a TCP connect per image, nothing next to an analysis.
"""

from __future__ import annotations

import base64
import socket
import threading
import time
from typing import Any, ClassVar

import httpx
from pydantic import ConfigDict

from experts.base import Expert, ExpertArgs
from experts.cancel import check_cancelled, on_cancel
from experts.errors import EngineMissing, ExpertError, ImageError, VisionRouterError
from experts.images import DecodedImage
from experts.schema import ExpertResult

DEFAULT_CONNECT_TIMEOUT = 3.0
DEFAULT_TIMEOUT = 120.0
DEFAULT_RETRIES = 2
_ERROR_TYPES: dict[str, type[VisionRouterError]] = {
    "EngineMissing": EngineMissing,
    "ImageError": ImageError,
    "ExpertError": ExpertError,
}


class AnyArgs(ExpertArgs):
    """Arguments of a remote expert whose schema is not known locally: the service validates them."""

    model_config = ConfigDict(extra="allow")


class RemoteExpert(Expert):
    """A client for one expert service.

    ``RemoteExpert(name, url, local_class=Cls)`` takes its aliases, positional argument and
    argument schema from the local class (arguments are then validated before any request);
    without one they come from the service's ``GET /v1/info``, fetched on first need.
    """

    Args = AnyArgs
    # max_side stays None: the original bytes go to the service, which downscales on its side and
    # answers in original pixels.
    # Set on the classes :func:`remote_expert_class` makes for remote-only experts.
    service_url: ClassVar[str | None] = None
    service_info: ClassVar[dict[str, Any] | None] = None
    service_token: ClassVar[str | None] = None

    def __init__(
        self,
        name: str | None = None,
        url: str | None = None,
        *,
        local_class: type[Expert] | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        token: str | None = None,
        **config: Any,
    ) -> None:
        super().__init__(**config)
        self.token = token or type(self).service_token
        self.name = name or type(self).name  # type: ignore[misc]
        base_url = url or type(self).service_url
        if not self.name or not base_url:
            raise ExpertError("remote expert needs a name and a url")
        self.url = base_url.rstrip("/")
        self.local_class = local_class
        self.connect_timeout = float(connect_timeout)
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self._client: httpx.Client | None = None
        self._analysis: httpx.Client | None = None
        self._client_lock = threading.Lock()
        self._info: dict[str, Any] | None = type(self).service_info
        if local_class is not None:
            self.aliases = local_class.aliases  # type: ignore[misc]
            self.description = local_class.description  # type: ignore[misc]
            self.positional = local_class.positional  # type: ignore[misc]
            self.extra = local_class.extra  # type: ignore[misc]
            self.Args = local_class.Args  # type: ignore[misc]
        elif self._info is not None:
            self._apply_info(self._info)
        else:
            # The dispatcher reads `positional` before anything else: learn it now, quietly.
            try:
                self._apply_info(self.fetch_info())
            except ExpertError:
                pass

    # --- schema and info ------------------------------------------------------------------------
    def _apply_info(self, info: dict[str, Any]) -> None:
        self._info = info
        self.aliases = tuple(info.get("aliases") or ())  # type: ignore[misc]
        self.description = info.get("description") or ""  # type: ignore[misc]
        self.positional = info.get("positional")  # type: ignore[misc]

    def fetch_info(self) -> dict[str, Any]:
        """``GET /v1/info`` from the service (cached after the first success)."""
        if self._info is not None:
            return self._info
        info = self._request("GET", "/v1/info").json()
        if not isinstance(info, dict):
            raise ExpertError(f"{self.name}: expert service at {self.url} sent a malformed /v1/info")
        self._info = info
        if type(self).service_url is not None:  # a remote-only class: share with the class
            type(self).service_info = info
        return info

    def args_schema(self) -> dict[str, Any]:  # type: ignore[override]
        """The local class's schema when known, else the service's."""
        if self.local_class is not None:
            return self.local_class.args_schema()
        return dict(self.fetch_info().get("args_schema") or {"type": "object", "properties": {}})

    def parse_args(self, args: dict[str, Any] | None) -> ExpertArgs:
        """With a local class, its validation and its one-line errors, before any request; otherwise
        the service validates."""
        if self.local_class is not None:
            return super().parse_args(args)
        return AnyArgs.model_validate(args or {})

    def info(self) -> dict[str, Any]:
        if self.local_class is not None:
            out = {
                "name": self.name,
                "aliases": list(self.aliases),
                "description": self.description,
                "args_schema": self.args_schema(),
                "positional": self.positional,
            }
        else:
            out = {k: v for k, v in self.fetch_info().items() if k != "status"}
        out["url"] = self.url
        return out

    def status(self) -> dict[str, Any]:
        """Whether the service answers, and what it serves."""
        try:
            self._request("GET", "/healthz", retries=0)
            info = self._info or self.fetch_info()
        except ExpertError as exc:
            return {"ok": False, "engine": "remote", "url": self.url, "error": str(exc)}
        return {
            "ok": True,
            "engine": f"remote {info.get('engine') or ''}".strip(),
            "url": self.url,
            "model": info.get("model"),
            "device": info.get("device"),
        }

    # --- work -----------------------------------------------------------------------------------
    def _analyze(self, image: DecodedImage, args: ExpertArgs) -> ExpertResult:
        payload = {
            "image": base64.b64encode(image.data).decode("ascii"),
            "args": args.model_dump(mode="json", exclude_none=True),
        }
        line = _Line()
        try:
            with on_cancel(line.close):
                client, trace = self._analysis_client(), {"trace": line.trace}
                resp = self._request("POST", "/v1/analyze", json=payload, extensions=trace, client=client)
        except ExpertError:
            check_cancelled()  # given up on: that, not the closed connection, is what happened
            raise
        try:
            return ExpertResult.model_validate(resp.json())
        except Exception:
            raise ExpertError(f"{self.name}: expert service at {self.url} sent a malformed result") from None

    def client(self) -> httpx.Client:
        with self._client_lock:
            if self._client is None:
                self._client = httpx.Client(
                    base_url=self.url,
                    timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout),
                    headers={"Authorization": f"Bearer {self.token}"} if self.token else None,
                    trust_env=False,  # a service URL is explicit: no proxies from the environment
                )
            return self._client

    def _analysis_client(self) -> httpx.Client:
        """The client analyses go through: one connection per request, kept by no pool, so closing it when
        a run is given up on ends that run only."""
        with self._client_lock:
            if self._analysis is None:
                self._analysis = httpx.Client(
                    base_url=self.url,
                    timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout),
                    headers={"Authorization": f"Bearer {self.token}"} if self.token else None,
                    limits=httpx.Limits(max_keepalive_connections=0),
                    trust_env=False,
                )
            return self._analysis

    def close(self) -> None:
        with self._client_lock:
            for client in (self._client, self._analysis):
                if client is not None:
                    client.close()
            self._client = self._analysis = None

    def _request(
        self,
        method: str,
        path: str,
        *,
        retries: int | None = None,
        client: httpx.Client | None = None,
        **kw: Any,
    ) -> httpx.Response:
        where = f"{self.name}: expert service at {self.url}"
        attempts = 1 + (self.retries if retries is None else retries)
        for attempt in range(attempts):
            check_cancelled()
            try:
                resp = (client or self.client()).request(method, path, **kw)
                break
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # Nothing reached the service: safe to try again, briefly.
                if attempt + 1 < attempts:
                    time.sleep(min(0.25 * 2**attempt, 2.0))
                    continue
                raise ExpertError(f"{where} is unreachable ({_reason(exc)})") from None
            except httpx.TimeoutException:
                raise ExpertError(f"{where} did not answer within {self.timeout:g} s") from None
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
                raise ExpertError(f"{where} closed the connection mid-request") from None
            except httpx.HTTPError as exc:
                raise ExpertError(f"{where} failed: {_reason(exc)}") from None
        if resp.status_code < 400:
            return resp
        if resp.status_code == 401:
            raise ExpertError(
                f"{where} refused the request: "
                + ("wrong token" if self.token else "it needs a token (set token= for this expert)")
            )
        try:
            body = resp.json()
            message, kind = str(body["error"]), str(body.get("type") or "ExpertError")
        except Exception:
            raise ExpertError(f"{where} answered HTTP {resp.status_code}") from None
        raise _ERROR_TYPES.get(kind, ExpertError)(message)


class _Line:
    """The connection of one analysis request, so that a run given up on can close it from another thread.

    httpcore reports the socket it opened through the request's ``trace`` extension; shutting it down ends
    the blocked read at once (closing the file would not wake it) and tells the service its client left."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._closed = False

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event != "connection.connect_tcp.complete":
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        with self._lock:
            self._sock = sock
            closed = self._closed
        if closed:  # given up on while connecting
            _shut(sock)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sock = self._sock
        _shut(sock)


def _shut(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed by either side
        pass


def _reason(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def remote_expert_class(
    name: str,
    url: str,
    *,
    aliases: tuple[str, ...] = (),
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    token: str | None = None,
) -> type[RemoteExpert]:
    """A :class:`RemoteExpert` subclass for an expert known only as a service, so it can be
    registered like any expert class. Its info is fetched now if the service answers, else on
    first use."""
    probe = RemoteExpert(name, url, connect_timeout=connect_timeout, retries=0, token=token)
    probe.close()
    info = probe._info
    found = tuple(info.get("aliases") or ()) if info else ()
    ns: dict[str, Any] = {
        "name": name,
        "aliases": tuple(dict.fromkeys((*aliases, *found))),
        "description": (info or {}).get("description") or f"remote expert at {url}",
        "positional": (info or {}).get("positional"),
        "service_url": url,
        "service_info": info,
        "service_token": token,
    }
    cls = type(f"Remote{name.title().replace('-', '')}Expert", (RemoteExpert,), ns)

    def args_schema(klass: type[RemoteExpert]) -> dict[str, Any]:
        if klass.service_info is None:
            try:
                klass.service_info = RemoteExpert(
                    name, url, connect_timeout=connect_timeout, retries=0, token=token
                )._info
            except ExpertError:
                pass
        schema = (klass.service_info or {}).get("args_schema")
        return dict(schema) if schema else {"type": "object", "properties": {}}

    cls.args_schema = classmethod(args_schema)  # type: ignore[method-assign,assignment]
    return cls
