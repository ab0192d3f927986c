"""A scripted HTTP server on loopback: a test decides every answer; requests are kept."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Answer:
    status: int = 200
    body: bytes | str | dict[str, Any] = field(default_factory=lambda: {"success": True})
    headers: dict[str, str] = field(default_factory=dict)
    content_length: int | None = None  # lie about the length to truncate the body
    delay: float = 0.0


@dataclass
class Request:
    method: str
    path: str
    body: Any


class _Listener(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # concurrent clients must not wait for a SYN retry


class Server:
    """A scripted HTTP server: `answer(method, path)` decides each reply; requests are kept."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.answer: Callable[[str, str], Answer] = lambda method, path: Answer()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def handle_one(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                server.requests.append(Request(self.command, self.path, _decoded(raw)))
                answer = server.answer(self.command, self.path)
                time.sleep(answer.delay)
                body = answer.body
                if isinstance(body, dict):
                    body = json.dumps(body)
                data = body.encode() if isinstance(body, str) else body
                length = answer.content_length if answer.content_length is not None else len(data)
                try:
                    self.send_response(answer.status)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", str(length))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    return  # the client gave up waiting, as the timeout test wants
                if answer.content_length is not None:
                    self.close_connection = True

            do_GET = do_POST = do_DELETE = handle_one

        self._httpd = _Listener(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def _decoded(raw: bytes) -> Any:
    """A JSON body as its value; anything else (capnweb's newline-delimited batches) as text."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")
