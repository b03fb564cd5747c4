"""`plantpulse simulate --serve-source` serves what the README walk-through pulls."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer

import httpx
import pytest

from plantpulse.sources import demo
from plantpulse.sources.decoders import decode
from plantpulse.sources.schemas import Float32Decoder, JsonDecoder
from plantpulse.telemetry.payloads import Clock


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadingHTTPServer]:
    server = demo.make_server("127.0.0.1", 0, window=30)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def url(server: ThreadingHTTPServer, path: str) -> str:
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}{path}"


CLOCK = Clock(datetime.now(UTC), timedelta(minutes=5))


async def test_points_decode_in_both_byte_orders(server: ThreadingHTTPServer) -> None:
    async with httpx.AsyncClient() as client:
        little = (await client.get(url(server, "/points"))).json()
        big = (await client.get(url(server, "/points?order=big"))).json()
    machine = uuid.uuid4()
    out = decode(
        little,
        Float32Decoder(kind="bytes-float32").spec(),
        machine_id=machine,
        metric="level",
        bad_tags=None,
        clock=CLOCK,
    )
    assert len(out.parsed.rows) == 30
    assert out.invalid == 3  # every 10th second is tagged "maintenance"
    by_time = {int(r[0].timestamp()): r[3] for r in out.parsed.rows}
    assert all(v == pytest.approx(demo.level(t), abs=1e-3) for t, v in by_time.items())
    spec = Float32Decoder(kind="bytes-float32", byte_order="big").spec()
    same = decode(big, spec, machine_id=machine, metric="level", bad_tags=None, clock=CLOCK)
    # The two requests may straddle a second: compare the seconds both answers hold.
    big_by_time = {int(r[0].timestamp()): r[3] for r in same.parsed.rows}
    common = by_time.keys() & big_by_time.keys()
    assert len(common) >= 29
    assert all(big_by_time[t] == by_time[t] for t in common)


async def test_json_rows(server: ThreadingHTTPServer) -> None:
    async with httpx.AsyncClient() as client:
        body = (await client.get(url(server, "/json"))).json()
    spec = JsonDecoder(
        kind="json", points="data", time="ts", values={"temperature": "temperature"}
    ).spec()
    out = decode(body, spec, machine_id=uuid.uuid4(), metric="x", bad_tags=None, clock=CLOCK)
    assert len(out.parsed.rows) == 30
    assert out.parsed.rejected == []
