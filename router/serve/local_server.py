"""An ASGI app served by uvicorn on a loopback socket in a background thread.

Used to run the proxy inside a test, a benchmark or a notebook, and by the test suite's fake Ollama.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any


class LocalServer:
    """``with LocalServer(app) as s: httpx.get(s.url)``. Port 0 picks a free port."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, **uvicorn_options: Any) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.url = ""
        self.options = {"log_level": "error", "timeout_graceful_shutdown": 1, **uvicorn_options}
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    def start(self) -> LocalServer:
        import uvicorn

        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on such sockets, and without it Nagle
        # plus delayed ACKs add ~40 ms to every keep-alive response (Go's net/http, like Ollama, sets it).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self._sock = sock
        self.port = sock.getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(self.app, **self.options))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"{type(self).__name__} did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
