# ruff: noqa: F811  (pytest fixtures imported from tests.test_proxy_support)
"""Issue 11, the proxy's part: slow clients, wrong JSON types, escaped or re-cased keys, the bind host,
the bearer token, the forwarded query and duplicated headers. Bounded in count and time."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest
from click.testing import CliRunner

from router.serve.proxy import ProxyConfig, ProxyServer, create_app
from tests.fake_ollama import Reply
from tests.test_proxy_support import (
    IMAGE_B64,
    MODEL,
    OCR_TEXT,
    capture_serve,
    fresh,  # noqa: F401  (fixture)
    no_image_bytes,
    registry,
    settings,
    stack,  # noqa: F401  (fixture)
    start_stack,
    stop_stack,
)


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=5)
    s.settimeout(5)
    return s


def _closed_by_server(s: socket.socket) -> bytes | None:
    """What the server wrote before closing, or None while the connection is still open."""
    s.settimeout(0.01)
    try:
        data = s.recv(65536)
    except (TimeoutError, BlockingIOError):
        return None
    except OSError:
        return b""
    if not data:
        return b""
    s.settimeout(1)
    rest = data
    while True:  # the server closes right after its answer
        try:
            more = s.recv(65536)
        except OSError:
            break
        if not more:
            break
        rest += more
    return rest


# --- slow clients ----------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_slow_headers_are_cut_off_and_real_clients_still_served():
    s = start_stack(config=ProxyConfig(header_timeout_s=1.0))
    socks: list[socket.socket] = []
    try:
        for i in range(60):  # slowloris: silent, a head that stops, or header lines that trickle and never end
            c = _connect(s.url)
            if i % 3:
                c.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\n")
            socks.append(c)
        t0 = time.monotonic()
        closed: dict[int, bytes] = {}
        while len(closed) < len(socks) and time.monotonic() - t0 < 5:
            for i, c in enumerate(socks):
                if i in closed:
                    continue
                got = _closed_by_server(c)
                if got is not None:
                    closed[i] = got
                    continue
                try:
                    if i % 3 == 2:
                        c.sendall(b"X-a: b\r\n")
                except OSError:
                    closed[i] = b""
            time.sleep(0.2)
        assert len(closed) == len(socks), f"{len(socks) - len(closed)} slow clients still connected"
        assert time.monotonic() - t0 < 4
        answered = [v for v in closed.values() if v]
        assert answered and all(v.startswith(b"HTTP/1.1 408") for v in answered)
        assert httpx.get(s.url + "/api/version", timeout=5).status_code == 200
    finally:
        for c in socks:
            c.close()
        stop_stack(s)


def test_oversized_headers_and_too_many_connections_are_refused():
    s = start_stack(config=ProxyConfig(max_connections=4, max_header_bytes=8 * 1024))
    socks: list[socket.socket] = []
    try:
        big = _connect(s.url)
        big.sendall(b"GET /api/tags HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 16 * 1024 + b"\r\n")
        big.settimeout(5)
        assert big.recv(65536).split(b"\r\n")[0] in (
            b"HTTP/1.1 431 Request Header Fields Too Large",
            b"HTTP/1.1 400 Bad Request",
        )
        big.close()
        for _ in range(6):
            socks.append(_connect(s.url))
        time.sleep(0.3)
        refused = [got for c in socks if (got := _closed_by_server(c)) is not None]
        assert len(refused) == 2 and all(r.startswith(b"HTTP/1.1 503") for r in refused)
    finally:
        for c in socks:
            c.close()
        stop_stack(s)


def test_slow_body_gets_408_in_ollamas_shape():
    s = start_stack(config=ProxyConfig(body_timeout_s=0.5))
    try:
        c = _connect(s.url)
        c.sendall(
            b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"model":'
        )
        t0 = time.monotonic()
        c.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            more = c.recv(65536)
            if not more:
                break
            data += more
        c.close()
        assert time.monotonic() - t0 < 3
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408")
        assert "not received within" in json.loads(body)["error"]
        assert s.fake.calls("/api/chat") == []
    finally:
        stop_stack(s)


def test_concurrent_requests_are_capped_with_ollamas_503():
    s = start_stack(config=ProxyConfig(max_concurrent=2))
    try:
        s.fake.responder = lambda path, body: Reply("slow answer", chunk_size=1, chunk_delay_s=0.05)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(timeout=10) as a, httpx.Client(timeout=10) as b:
            with (
                a.stream("POST", s.url + "/api/chat", json=body) as r1,
                b.stream("POST", s.url + "/api/chat", json=body) as r2,
            ):
                assert r1.status_code == r2.status_code == 200
                third = httpx.post(s.url + "/api/chat", json=body, timeout=10)
                assert third.status_code == 503 and "server busy" in third.json()["error"]
                r1.read()
                r2.read()
        assert httpx.post(s.url + "/api/chat", json=body, timeout=10).status_code == 200
    finally:
        stop_stack(s)


# --- wrong JSON types --------------------------------------------------------------------------------
NATIVE_BAD = {
    "generate images: 5": ("/api/generate", {"model": MODEL, "prompt": "read it", "images": 5}),
    "chat images: 5": ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "x", "images": 5}]}),
    "content as a list": (
        "/api/chat",
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}], "images": [IMAGE_B64]}],
        },
    ),
    "options: x": (
        "/api/chat",
        {"model": MODEL, "options": "x", "messages": [{"role": "user", "content": "x", "images": [IMAGE_B64]}]},
    ),
    "messages: x": ("/api/chat", {"model": MODEL, "messages": "images", "stream": False}),
    "tool_calls: x": (
        "/api/chat",
        {
            "model": MODEL,
            "messages": [
                {"role": "assistant", "content": "", "tool_calls": "x"},
                {"role": "user", "content": "x", "images": [IMAGE_B64]},
            ],
        },
    ),
    "stream: yes": (
        "/api/chat",
        {"model": MODEL, "stream": "yes", "messages": [{"role": "user", "content": "x", "images": [IMAGE_B64]}]},
    ),
}


@pytest.mark.parametrize("case", list(NATIVE_BAD))
def test_wrongly_typed_native_requests_are_400_not_500(fresh, case):
    path, body = NATIVE_BAD[case]
    r = httpx.post(fresh.url + path, json=body, timeout=10)
    assert r.status_code == 400, r.text
    err = r.json()
    assert set(err) == {"error"} and isinstance(err["error"], str)
    assert "Error" not in err["error"] and "Traceback" not in err["error"]  # no Python exception text
    assert fresh.fake.calls("/api/chat") == [] and fresh.fake.calls("/api/generate") == []


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_absurd_nesting_is_400(fresh, path):
    deep = (
        b'{"model": "m", "messages": [{"role": "user", "images": [], "content": [{"type": "image_url", '
        b'"image_url": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]}]}"
    )
    r = httpx.post(fresh.url + path, content=deep, timeout=10)
    assert r.status_code == 400
    err = r.json()["error"]
    message = err if isinstance(err, str) else err["message"]
    assert "nested too deeply" in message


def _oai_image_message() -> dict:
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": "read it"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{IMAGE_B64}"}},
        ],
    }


OPENAI_BAD = {
    "tool_calls: x": {"messages": [{"role": "assistant", "content": "", "tool_calls": "x"}, _oai_image_message()]},
    "tool_calls: [x]": {"messages": [{"role": "assistant", "content": "", "tool_calls": ["x"]}, _oai_image_message()]},
    "arguments: [1]": {
        "messages": [
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "[1]"}}],
            },
            _oai_image_message(),
        ]
    },
    "stop: 5": {"stop": 5, "messages": [_oai_image_message()]},
    "tools: 5": {"tools": 5, "messages": [_oai_image_message()]},
    "tools: [x]": {"tools": ["x"], "messages": [_oai_image_message()]},
    "stream_options: x": {"stream": True, "stream_options": "x", "messages": [_oai_image_message()]},
    "temperature: hot": {"temperature": "hot", "messages": [_oai_image_message()]},
}


@pytest.mark.parametrize("case", list(OPENAI_BAD))
def test_wrongly_typed_openai_requests_are_400_in_openais_shape(fresh, case):
    r = httpx.post(fresh.url + "/v1/chat/completions", json={"model": MODEL, **OPENAI_BAD[case]}, timeout=10)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and isinstance(err["message"], str)
    assert "Error" not in err["message"] and "Traceback" not in err["message"]
    assert fresh.fake.calls("/api/chat") == [] and fresh.fake.calls("/v1/chat/completions") == []


# --- images under keys spelled another way -------------------------------------------------------------
def _rekeyed(body: dict, key: str, old: str = "images") -> bytes:
    """``body`` as JSON with the key ``old`` written as ``key`` (raw JSON text, escapes included)."""
    return json.dumps(body).replace(f'"{old}"', f'"{key}"').encode()


@pytest.mark.parametrize("key", ["\\u0069mages", "IMAGES", "Images", "image\\u0073"])
def test_images_under_an_escaped_or_recased_key_never_reach_the_model(fresh, key):
    fresh.fake.script(f"It says {OCR_TEXT}.")
    raw = _rekeyed(
        {
            "model": MODEL,
            "stream": False,
            "messages": [{"role": "user", "content": "What is written here?", "images": [IMAGE_B64]}],
        },
        key,
    )
    r = httpx.post(fresh.url + "/api/chat", content=raw, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["message"]["content"] == f"It says {OCR_TEXT}."
    sent = fresh.fake.calls("/api/chat")
    assert len(sent) == 1 and OCR_TEXT in json.dumps(sent[0])  # the experts read it
    no_image_bytes(fresh.fake)
    assert IMAGE_B64[:40] not in json.dumps(fresh.fake.requests)


def test_escaped_key_on_generate_and_on_a_load_request(fresh):
    fresh.fake.script("SALE.")
    raw = _rekeyed({"model": MODEL, "stream": False, "prompt": "read it", "images": [IMAGE_B64]}, "\\u0069mages")
    assert httpx.post(fresh.url + "/api/generate", content=raw, timeout=30).json()["response"] == "SALE."
    load = _rekeyed({"model": MODEL, "images": [IMAGE_B64]}, "IMAGES")
    assert httpx.post(fresh.url + "/api/generate", content=load, timeout=30).json()["done_reason"] == "load"
    no_image_bytes(fresh.fake)
    assert IMAGE_B64[:40] not in json.dumps(fresh.fake.requests)


def test_two_keys_for_images_are_refused(fresh):
    raw = _rekeyed(
        {"model": MODEL, "messages": [{"role": "user", "content": "x", "images": [], "IMAGES_": [IMAGE_B64]}]},
        "IMAGES",
        old="IMAGES_",
    )
    r = httpx.post(fresh.url + "/api/chat", content=raw, timeout=10)
    assert r.status_code == 400 and "two keys" in r.json()["error"]
    assert fresh.fake.requests == []


# --- bind host -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["", "0.0.0.0", "::"])
def test_serve_refuses_every_non_loopback_host(monkeypatch, host):
    from router.commands.serve import serve_command

    served = capture_serve(monkeypatch)
    r = CliRunner().invoke(serve_command, ["--host", host, "--upstream", "127.0.0.1:9"], obj={"config": None})
    assert r.exit_code != 0 and "--allow-remote" in r.output
    assert "Traceback" not in r.output and served == {}


def test_serve_passes_its_connection_limits_to_uvicorn(monkeypatch):
    from router.commands.serve import serve_command

    served = capture_serve(monkeypatch)
    args = ["--host", "localhost", "--port", "0", "--upstream", "127.0.0.1:9"]
    r = CliRunner().invoke(serve_command, args, obj={"config": None})
    assert r.exit_code == 0, r.output
    config = served["config"]
    assert config.http.header_timeout_s > 0 and config.timeout_keep_alive > 0


# --- token -------------------------------------------------------------------------------------------------
def test_token_scheme_any_case_and_vision_routes_need_it():
    s = start_stack(config=ProxyConfig(token="s3cret"))
    try:
        for scheme in ("Bearer", "bearer", "BEARER"):
            r = httpx.get(s.url + "/api/tags", headers={"Authorization": f"{scheme} s3cret"})
            assert r.status_code == 200, scheme
        assert httpx.get(s.url + "/api/tags", headers={"Authorization": "Bearer s3cre"}).status_code == 401
        assert httpx.get(s.url + "/api/tags", headers={"Authorization": "Basic s3cret"}).status_code == 401
        metrics = httpx.get(s.url + "/_vision/metrics")
        assert metrics.status_code == 401 and "error" in metrics.json()
        probe = httpx.get(s.url + "/_vision/health")
        assert probe.status_code == 200 and probe.json() == {"status": "ok"}  # liveness only: no upstream, experts
        full = httpx.get(s.url + "/_vision/health", headers={"Authorization": "bearer s3cret"}).json()
        assert full["upstream"]["ok"] is True and "experts" in full
        assert httpx.get(s.url + "/_vision/metrics", headers={"Authorization": "bearer s3cret"}).status_code == 200
    finally:
        stop_stack(s)


# --- the forwarded request line and headers ----------------------------------------------------------------
class RawUpstream:
    """A bare HTTP/1.1 server that records each request line exactly as it arrived."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    more = conn.recv(65536)
                    if not more:
                        break
                    data += more
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    (int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")), 0
                )
                while len(body) < length:
                    body += conn.recv(65536)
                self.lines.append(head.split(b"\r\n")[0])
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n"
                    b"connection: close\r\n\r\n{}"
                )

    def close(self) -> None:
        self.sock.close()


def test_forwarded_request_line_has_a_query_only_when_the_client_sent_one():
    up = RawUpstream()
    try:
        with ProxyServer(create_app(settings(), registry(), up.url)) as proxy:
            httpx.get(proxy.url + "/api/ps")
            httpx.get(proxy.url + "/api/ps?verbose=1&x=%20")
            httpx.post(proxy.url + "/api/chat", json={"model": MODEL, "messages": []})
            httpx.post(proxy.url + "/api/show", json={"model": MODEL})
            httpx.get(proxy.url + "/api/tags")
        assert up.lines == [
            b"GET /api/ps HTTP/1.1",
            b"GET /api/ps?verbose=1&x=%20 HTTP/1.1",
            b"POST /api/chat HTTP/1.1",
            b"POST /api/show HTTP/1.1",
            b"GET /api/tags HTTP/1.1",
        ]
    finally:
        up.close()


@pytest.mark.parametrize(
    "method,path,body",
    [("GET", "/api/tags", None), ("POST", "/api/show", {"model": MODEL}), ("GET", "/api/version", None)],
)
def test_one_date_and_one_server_header(fresh, method, path, body):
    r = httpx.request(method, fresh.url + path, json=body)
    assert r.status_code == 200
    assert len(r.headers.get_list("date")) == 1
    assert len(r.headers.get_list("server")) == 1


# --- path smuggling (issue 19) -----------------------------------------------------------------------------
def _raw_request(url: str, method: str, target: str, body: bytes) -> tuple[int, bytes]:
    """One request with the request-target exactly as given (httpx would normalise dot segments itself)."""
    s = _connect(url)
    try:
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: {url.removeprefix('http://')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        s.sendall(head.encode("latin-1") + body)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


SMUGGLED = [
    "/api/../api/chat",
    "//x/api/chat",
    "/api/./chat",
    "/v1/../api/chat",
    "/api/%2e%2e/api/chat",
    "/api/%2E%2E/api/chat",
    "/api%2Fchat/..",
    "/x/..%2Fapi/chat",
    "/api\\chat",
    "/api/chat%3F",
    "/api/chat%23x",
    "/api/chat/.",
    "/api//chat",
]


@pytest.mark.parametrize("target", SMUGGLED)
def test_non_canonical_paths_never_carry_an_image_upstream(fresh, target):
    body = {"model": MODEL, "stream": False, "messages": [{"role": "user", "content": "read", "images": [IMAGE_B64]}]}
    status, raw = _raw_request(fresh.url, "POST", target, json.dumps(body).encode())
    assert status == 400, raw
    assert "path" in json.loads(raw)["error"]
    assert fresh.fake.requests == []  # nothing went upstream, image bytes least of all


def test_generate_behind_dot_segments_is_refused_too(fresh):
    body = {"model": MODEL, "stream": False, "prompt": "read", "images": [IMAGE_B64]}
    status, raw = _raw_request(fresh.url, "POST", "/v1/../api/generate", json.dumps(body).encode())
    assert status == 400 and fresh.fake.requests == []


def test_plain_paths_and_encoded_ordinary_characters_still_work(fresh):
    fresh.fake.script(f"It says {OCR_TEXT}.")
    body = {"model": MODEL, "stream": False, "messages": [{"role": "user", "content": "read", "images": [IMAGE_B64]}]}
    status, raw = _raw_request(fresh.url, "POST", "/api/chat", json.dumps(body).encode())
    assert status == 200 and json.loads(raw)["message"]["content"] == f"It says {OCR_TEXT}."
    no_image_bytes(fresh.fake)
    status, _ = _raw_request(fresh.url, "GET", "/api/tags?x=%20y", b"")
    assert status == 200
