"""Microbenchmark of the realtime hub's batch -> events -> fan-out path (no sockets, no Redis I/O).

Usage: .venv/bin/python scripts/bench_hub.py [--machines 100] [--timestamps 50] [--metrics 1]
Prints the median CPU time the hub spends on one committed batch, with a Redis broadcast
configured (its outbox is drained between runs, nothing is sent) and no connected client: the
case profiled under `plantpulse bench ingest` P2 load; and the time another process spends
receiving that batch from Redis (`Broadcast._dispatch`), also without clients.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from plantpulse.config import RealtimeSettings
from plantpulse.realtime.broadcast import Broadcast
from plantpulse.realtime.hub import Hub
from plantpulse.telemetry.writer import CommittedBatch, StoredRow


def rows(machines: int, timestamps: int, metrics: int) -> list[StoredRow]:
    ids = [uuid.uuid4() for _ in range(machines)]
    start = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    return [
        (start + timedelta(milliseconds=250 * i), m, f"metric_{k}", 20.0 + i * 0.1 + k, True)
        for m in ids
        for i in range(timestamps)
        for k in range(metrics)
    ]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--machines", type=int, default=100)
    parser.add_argument("--timestamps", type=int, default=50)
    parser.add_argument("--metrics", type=int, default=1)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument(
        "--subscribe-all", action="store_true", help="one connected client of everything"
    )
    args = parser.parse_args()
    batch = CommittedBatch(rows(args.machines, args.timestamps, args.metrics), "bench")
    redis = Redis()  # never connected: the broadcast's send task is not started
    hub = Hub(RealtimeSettings(), redis=redis, prefix="bench:")
    broadcast = Broadcast(redis, "bench:events", on_message=lambda _: None)
    hub._broadcast = broadcast
    # A second process receiving what the first one sends, also without connected clients.
    receiver = Hub(RealtimeSettings(), redis=redis, prefix="bench:")
    inbox = Broadcast(redis, "bench:events", on_message=receiver._remote)
    client = None
    if args.subscribe_all:
        client = hub.subscriber(include_invalid=True, include_alerts=False)
        client.queue = asyncio.Queue()
        client.subscribe_all()
    handle = getattr(hub, "publish_readings", None)
    samples, received = [], []
    for _ in range(args.runs + 10):
        t0 = time.process_time()
        if handle is not None:
            handle(batch.rows)
        else:
            from plantpulse.realtime.events import reading_events

            hub.publish(reading_events(batch.rows))
        samples.append(time.process_time() - t0)
        message = {"type": "message", "data": broadcast._outbox.get_nowait().encode()}
        while client is not None and not client.queue.empty():
            client.queue.get_nowait()
        while not broadcast._outbox.empty():
            broadcast._outbox.get_nowait()
        t0 = time.process_time()
        inbox._dispatch(message)
        received.append(time.process_time() - t0)
    samples, received = samples[10:], received[10:]
    print(
        f"{len(batch.rows)} rows ({args.machines} machines x {args.timestamps} timestamps x "
        f"{args.metrics} metrics), {args.runs} runs: median {statistics.median(samples) * 1e3:.2f}"
        f" ms, p10 {statistics.quantiles(samples, n=10)[0] * 1e3:.2f} ms; receiving process:"
        f" median {statistics.median(received) * 1e3:.2f} ms"
    )
    await redis.aclose()


asyncio.run(main())
