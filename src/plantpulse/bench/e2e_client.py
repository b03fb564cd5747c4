"""The WebSocket side of `plantpulse bench e2e`, run as its own process so its CPU time is not
the server's: connects, subscribes (to all machines, or to the probe machine only), and for
every probe reading records now - sent_at (the probe's `sent_at` metric is the wall-clock time
it was published). Also measures ping -> pong round trips on the same socket as a same-run
reference. Prints "ready" once subscribed, then one JSON object at the end.

    python -m plantpulse.bench.e2e_client WS_URL TOKEN PROBE_MACHINE_ID SECONDS all|probe
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from websockets.asyncio.client import connect


async def run(url: str, token: str, probe: str, seconds: float, scope: str) -> dict[str, Any]:
    latencies: list[float] = []
    rtts: list[float] = []
    events = 0
    pings: dict[int, float] = {}
    async with connect(f"{url}?token={token}", max_queue=None) as ws:
        await ws.recv()
        if scope == "all":
            await ws.send(json.dumps({"action": "subscribe_all"}))
        else:
            await ws.send(json.dumps({"action": "subscribe", "machine_ids": [probe]}))
        await ws.recv()
        print("ready", flush=True)

        async def pinger() -> None:
            n = 0
            while True:
                await asyncio.sleep(0.1)
                n += 1
                pings[n] = time.perf_counter()
                await ws.send(json.dumps({"action": "ping", "ref": n}))

        task = asyncio.create_task(pinger())
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                try:
                    async with asyncio.timeout(max(0.01, deadline - time.monotonic())):
                        raw = await ws.recv()
                except TimeoutError:
                    break
                received = time.time()
                message = json.loads(raw)
                kind = message["type"]
                if kind == "reading":
                    events += 1
                    if message["machine_id"] == probe:
                        latencies.append((received - message["metrics"]["sent_at"]) * 1000)
                elif kind == "pong":
                    rtts.append((time.perf_counter() - pings.pop(message["ref"])) * 1000)
                elif kind == "error":
                    print(json.dumps(message), file=sys.stderr)
        finally:
            task.cancel()
    return {"latencies_ms": latencies, "ping_rtt_ms": rtts, "events": events}


def main() -> None:
    url, token, probe, seconds, scope = sys.argv[1:6]
    result = asyncio.run(run(url, token, probe, float(seconds), scope))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
