"""A tiny real HTTP server on 127.0.0.1 that answers from a script (e.g. 503, 503, 200) and
records every request: for clients' retry and error-mapping behaviour."""

from __future__ import annotations

import json
import threading
from collections import defaultdict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class ScriptedServer:
    """Answers each ``(method, path)`` from a queue of ``(status, json_body)``; records requests.

    When a route's queue is empty, its last answer repeats. Unknown routes answer 404.
    """

    url: str
    routes: dict[tuple[str, str], deque] = field(default_factory=lambda: defaultdict(deque))
    last: dict[tuple[str, str], tuple[int, Any]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)

    def script(self, method: str, path: str, *answers: tuple[int, Any]) -> None:
        self.routes[(method, path)].extend(answers)

    def answer(self, method: str, path: str) -> tuple[int, Any]:
        key = (method, path)
        if self.routes[key]:
            self.last[key] = self.routes[key].popleft()
        return self.last.get(key, (404, {"error": "not found", "code": 5, "message": f"no route {path}"}))

    def count(self, method: str, path: str) -> int:
        return sum(1 for r in self.requests if r.method == method and r.path.split("?", 1)[0] == path)


@contextmanager
def scripted_server() -> Iterator[ScriptedServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    server = ScriptedServer(url=f"http://127.0.0.1:{httpd.server_address[1]}")

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path = self.path.split("?", 1)[0]
            server.requests.append(Recorded(self.command, self.path, dict(self.headers), body))
            status, payload = server.answer(self.command, path)
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PATCH = _handle

        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

    httpd.RequestHandlerClass = Handler
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
