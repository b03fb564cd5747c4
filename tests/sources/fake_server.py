"""A real HTTP server on 127.0.0.1 (stdlib, in a thread) standing in for a historian or a
vendor cloud: tests set what each path answers and read what was asked."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    # Seconds to wait before answering.
    delay: float = 0.0
    # Send the body in this many bytes per write, sleeping `drip_seconds` between writes.
    drip_bytes: int = 0
    drip_seconds: float = 0.0
    # Leave out Content-Length (the client must stop reading at its own limit).
    chunked: bool = False

    @classmethod
    def json(cls, value: Any, **kwargs: Any) -> Answer:
        return cls(body=json.dumps(value).encode(), **kwargs)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class FakeSource:
    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {}
        self.seen: list[Seen] = []
        self.in_flight: dict[str, int] = {}
        self.max_in_flight: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def url(self, path: str) -> str:
        return self.base + path

    def requests_to(self, path: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.path == path]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                path = self.path
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                with fake._lock:
                    fake.seen.append(Seen(self.command, path, dict(self.headers.items())))
                    fake.in_flight[path] = fake.in_flight.get(path, 0) + 1
                    fake.max_in_flight[path] = max(
                        fake.max_in_flight.get(path, 0), fake.in_flight[path]
                    )
                try:
                    answer = fake.answers.get(path, Answer(status=404, body=b'{"error": 1}'))
                    if answer.delay:
                        time.sleep(answer.delay)
                    self.send_response(answer.status)
                    self.send_header("Content-Type", answer.content_type)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    if answer.chunked:
                        self.send_header("Connection", "close")
                    else:
                        self.send_header("Content-Length", str(len(answer.body)))
                    self.end_headers()
                    if answer.drip_bytes:
                        for i in range(0, len(answer.body), answer.drip_bytes):
                            self.wfile.write(answer.body[i : i + answer.drip_bytes])
                            self.wfile.flush()
                            time.sleep(answer.drip_seconds)
                    else:
                        self.wfile.write(answer.body)
                    if answer.chunked:
                        self.close_connection = True
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                finally:
                    with fake._lock:
                        fake.in_flight[path] -= 1

            do_GET = _answer
            do_POST = _answer

        return Handler
