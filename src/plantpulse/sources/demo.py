"""`plantpulse simulate --serve-source`: an endpoint like the historians PlantPulse pulls from,
to try sources in two minutes (README, "Pulling from HTTP sources").

Points are a function of their second, so polling again returns the same points for the same
seconds (stored once) plus the new ones:

- `GET /points`: the last `window` seconds, one point per second,
  `{"time": <epoch s>, "value": [4 bytes of a float32, little-endian], "tags": [...]}`;
  every 10th second is tagged `["maintenance"]` (stored with valid=false).
- `GET /points?order=big`: the same values, big-endian bytes.
- `GET /json`: `{"data": [{"ts": "<ISO 8601>", "temperature": ..., "pressure": ...}]}`.
"""

from __future__ import annotations

import json
import math
import struct
import sys
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


def level(second: int) -> float:
    return round(50 + 10 * math.sin(second / 60) + 2 * math.sin(second / 7), 3)


def float32_bytes(value: float, order: str) -> list[int]:
    return list(struct.pack("<f" if order == "little" else ">f", value))


def points(now: int, *, window: int, order: str) -> list[dict[str, Any]]:
    return [
        {
            "time": second,
            "value": float32_bytes(level(second), order),
            "tags": ["maintenance"] if second % 10 == 0 else [],
        }
        for second in range(now - window + 1, now + 1)
    ]


def rows(now: int, *, window: int) -> dict[str, Any]:
    return {
        "data": [
            {
                "ts": datetime.fromtimestamp(second, UTC).isoformat().replace("+00:00", "Z"),
                "temperature": level(second),
                "pressure": round(3 + math.sin(second / 30) / 10, 4),
            }
            for second in range(now - window + 1, now + 1)
        ]
    }


def make_server(host: str, port: int, *, window: int = 60) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            print(f"  {self.address_string()} {format % args}", file=sys.stderr)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            now = int(time.time())
            if url.path == "/points":
                order = "big" if parse_qs(url.query).get("order") == ["big"] else "little"
                body: Any = points(now, window=window, order=order)
            elif url.path == "/json":
                body = rows(now, window=window)
            else:
                self._send(404, {"error": "try /points, /points?order=big or /json"})
                return
            self._send(200, body)

        def _send(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return ThreadingHTTPServer((host, port), Handler)


def serve(address: str) -> int:
    host, _, raw = address.rpartition(":")
    server = make_server(host or "127.0.0.1", int(raw))
    bound_host, bound_port = server.server_address[:2]
    print(
        f"==> serving source points on http://{bound_host!s}:{bound_port}/points "
        "(also /points?order=big and /json); Ctrl-C stops",
        file=sys.stderr,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
