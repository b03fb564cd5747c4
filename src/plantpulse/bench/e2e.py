"""`plantpulse bench e2e`: ingest -> WebSocket latency under background load (P5).

Runs the real app (create_app + lifespan + uvicorn) in this process and a WebSocket client
(`e2e_client`) in another. Background load: `--rate` reading-sets a second (3 metrics each)
over 100 machines; probes: one reading a `1/--probe-hz` s whose value is the wall-clock time it
was handed to ingest. Both go through a 50 ms batcher into `resources.writer` (the batching the
MQTT ingest does by default), so latency = batching wait + COPY/commit + hub + socket + client.

Until MQTT ingest is merged the load enters at the writer, not through the broker: the MQTT hop
is not in these figures. Also measured: the writer's time per batch with and without the
realtime/alerts listeners (9 fleet-wide rules loaded), and the evaluator's own throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from plantpulse.telemetry.payloads import Row

FLUSH_SECONDS = 0.05
LOAD_MACHINES = 100
METRICS = ("temp", "rpm", "pressure")
START, END = "<!-- bench:e2e:start -->", "<!-- bench:e2e:end -->"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "e2e", help="ingest -> WebSocket latency under background load (P5)"
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="per repetition")
    parser.add_argument("--rate", type=int, default=5000, help="background reading-sets/s")
    parser.add_argument("--probe-hz", type=float, default=50.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--output", default="docs/benchmarks.md")
    parser.set_defaults(func=cmd_e2e)


def cmd_e2e(args: argparse.Namespace) -> int:
    return asyncio.run(_main(args))


def _quantiles(values: list[float]) -> dict[str, float]:
    if len(values) < 2:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "max": float("nan")}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": q[49], "p95": q[94], "p99": q[98], "max": max(values)}


@asynccontextmanager
async def _serve() -> AsyncIterator[tuple[Any, str]]:
    import uvicorn
    from asgi_lifespan import LifespanManager

    from plantpulse.app import create_app
    from plantpulse.config import Settings

    app = create_app(Settings())
    async with LifespanManager(app, startup_timeout=30) as manager:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        config = uvicorn.Config(
            manager.app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for this
            await asyncio.sleep(0.01)
        try:
            yield manager._state["resources"], f"ws://127.0.0.1:{port}/api/v1/ws"
        finally:
            server.should_exit = True
            await task


async def _setup(resources: Any) -> tuple[Any, uuid.UUID, list[uuid.UUID], list[uuid.UUID]]:
    from plantpulse.alerts import service as alerts
    from plantpulse.alerts.schemas import AlertRuleCreate
    from plantpulse.auth import service as auth
    from plantpulse.auth.permissions import Role
    from plantpulse.auth.schemas import UserCreate

    tag = uuid.uuid4().hex[:8]
    async with resources.sessionmaker() as session, session.begin():
        user = await auth.create_user(
            session,
            data=UserCreate(
                username=f"bench-{tag}", email=f"bench-{tag}@example.com", password=uuid.uuid4().hex
            ),
            role=Role.management,
        )
        rules = []
        for metric in METRICS:
            for severity in ("info", "warning", "critical"):
                data = AlertRuleCreate(
                    name=f"bench-{tag}",
                    scope="fleet",
                    metric=metric,
                    condition=">",
                    threshold=1e12,
                    severity=severity,
                )
                rules.append((await alerts.create_rule(session, data=data, user_id=None)).id)
    probe = uuid.uuid4()
    machines = [uuid.uuid4() for _ in range(LOAD_MACHINES)]
    await resources.pg.executemany(
        "INSERT INTO machines (id, name) VALUES ($1, $2)",
        [(m, f"bench-{tag}-{i}") for i, m in enumerate([probe, *machines])],
    )
    await resources.catalog.known([probe, *machines])
    return user, probe, machines, rules


async def _cleanup(
    resources: Any, user: Any, machines: list[uuid.UUID], rules: list[uuid.UUID]
) -> None:
    await resources.pg.execute("DELETE FROM alert_rules WHERE id = ANY($1::uuid[])", rules)
    await resources.pg.execute("DELETE FROM readings WHERE machine_id = ANY($1::uuid[])", machines)
    await resources.pg.execute("DELETE FROM machines WHERE id = ANY($1::uuid[])", machines)
    await resources.pg.execute("DELETE FROM users WHERE id = $1", user.id)


def _load_rows(machines: list[uuid.UUID], count: int, base: datetime) -> list[Row]:
    rows: list[Row] = []
    for k in range(count):
        t = base + timedelta(microseconds=k)
        machine = machines[k % len(machines)]
        rows.extend((t, machine, metric, 20.0 + (k % 7)) for metric in METRICS)
    return rows


async def _writer_overhead(resources: Any, machines: list[uuid.UUID]) -> dict[str, Any]:
    from plantpulse.alerts.evaluator import evaluator_of
    from plantpulse.telemetry.writer import CommittedBatch

    writer, evaluator = resources.writer, evaluator_of(resources)
    listeners = list(writer.listeners)
    per_batch: dict[str, list[float]] = {"without": [], "with": []}
    batches, sets = 30, 334  # ~1000 rows a batch
    try:
        for _ in range(5):
            for mode in ("without", "with"):
                writer.listeners[:] = listeners if mode == "with" else []
                started = time.perf_counter()
                for _ in range(batches):
                    await writer.write(
                        _load_rows(machines, sets, datetime.now(UTC)), source="bench"
                    )
                per_batch[mode].append((time.perf_counter() - started) / batches * 1000)
                await evaluator.drained()
    finally:
        writer.listeners[:] = listeners
    rows = [(t, m, k, v, True) for t, m, k, v in _load_rows(machines, 3334, datetime.now(UTC))]
    started = time.perf_counter()
    for _ in range(10):
        await evaluator.process(CommittedBatch(rows=rows, source="bench"))
    evaluated = len(rows) * 10 / (time.perf_counter() - started)
    without, with_ = statistics.median(per_batch["without"]), statistics.median(per_batch["with"])
    return {
        "without_ms": without,
        "with_ms": with_,
        "without_range": (min(per_batch["without"]), max(per_batch["without"])),
        "with_range": (min(per_batch["with"]), max(per_batch["with"])),
        "overhead_pct": (with_ - without) / without * 100,
        "evaluator_rows_per_s": evaluated,
    }


async def _one_run(
    resources: Any,
    ws_url: str,
    token: str,
    probe: uuid.UUID,
    machines: list[uuid.UUID],
    args: argparse.Namespace,
) -> dict[str, Any]:
    client = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "plantpulse.bench.e2e_client",
        ws_url,
        token,
        str(probe),
        str(args.seconds + 1.0),
        stdout=asyncio.subprocess.PIPE,
    )
    if client.stdout is None:
        raise RuntimeError("the benchmark client has no stdout")
    await client.stdout.readline()  # "ready"
    buffer: list[Row] = []
    stop = asyncio.Event()
    sent = {"probes": 0, "rows": 0}

    async def probes() -> None:
        every = 1.0 / args.probe_hz
        while not stop.is_set():
            buffer.append((datetime.now(UTC), probe, "sent_at", time.time()))
            sent["probes"] += 1
            await asyncio.sleep(every)

    async def load() -> None:
        owed = 0.0
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            owed += (now - last) * args.rate
            last = now
            count = int(owed)
            owed -= count
            buffer.extend(_load_rows(machines, count, datetime.now(UTC)))

    async def flush() -> None:
        while not stop.is_set() or buffer:
            await asyncio.sleep(FLUSH_SECONDS)
            batch = buffer[:]
            buffer.clear()
            if batch:
                await resources.writer.write(batch, source="bench")
                sent["rows"] += len(batch)

    tasks = [asyncio.create_task(f()) for f in (probes, load, flush)]
    await asyncio.sleep(args.seconds)
    stop.set()
    await asyncio.gather(*tasks)
    out, _ = await client.communicate()
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    result.update(sent)
    return result


async def _machine_info(resources: Any) -> str:
    pg = await resources.pg.fetchval("SHOW server_version")
    redis = "none"
    if resources.redis is not None:
        redis = (await resources.redis.info("server"))["redis_version"]
    ts = resources.timescale
    return (
        f"{os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}, "
        f"PostgreSQL {pg}, TimescaleDB {ts.version or 'none'} ({ts.edition}), Redis {redis}"
    )


async def _main(args: argparse.Namespace) -> int:
    from plantpulse.auth import service as auth
    from plantpulse.realtime.hub import hub_of

    async with _serve() as (resources, ws_url):
        user, probe, machines, rules = await _setup(resources)
        try:
            await _wait_rules(resources)
            info = await _machine_info(resources)
            print(f"==> {info}")
            overhead = await _writer_overhead(resources, machines)
            print(
                "==> writer per ~1000-row batch: {without_ms:.2f} ms without listeners, "
                "{with_ms:.2f} ms with hub + evaluator ({overhead_pct:+.1f}%); evaluator "
                "{evaluator_rows_per_s:,.0f} rows/s".format(**overhead)
            )
            token = auth.issue_tokens(resources.settings.auth, user=user).access_token
            runs = []
            for n in range(args.repeat):
                run = await _one_run(resources, ws_url, token, probe, [*machines], args)
                q = _quantiles(run["latencies_ms"])
                ping = _quantiles(run["ping_rtt_ms"])
                stored = await resources.pg.fetchval(
                    "SELECT count(*) FROM readings WHERE machine_id = $1", probe
                )
                run.update(q=q, ping=ping, stored_probes=stored)
                runs.append(run)
                print(
                    f"    run {n + 1}: p50 {q['p50']:.1f} ms, p95 {q['p95']:.1f} ms, "
                    f"p99 {q['p99']:.1f} ms, max {q['max']:.1f} ms over "
                    f"{len(run['latencies_ms'])}/{run['probes']} probes; "
                    f"{run['rows'] / args.seconds:,.0f} rows/s written, {run['events']:,} events "
                    f"received; ping RTT p50 {ping['p50']:.1f} / p99 {ping['p99']:.1f} ms"
                )
            dropped = hub_of(resources).dropped_batches
        finally:
            await _cleanup(resources, user, [probe, *machines], rules)
    _report(args, info, overhead, runs, dropped)
    return 0


async def _wait_rules(resources: Any) -> None:
    from plantpulse.alerts.evaluator import evaluator_of

    await evaluator_of(resources).reload()


def _report(
    args: argparse.Namespace,
    info: str,
    overhead: dict[str, Any],
    runs: list[dict[str, Any]],
    dropped: int,
) -> None:
    def med(key: str) -> str:
        values = [r["q"][key] for r in runs]
        return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"

    def ping(key: str) -> str:
        return f"{statistics.median([r['ping'][key] for r in runs]):.1f}"

    received = sum(len(r["latencies_ms"]) for r in runs)
    probes = sum(r["probes"] for r in runs)
    rate = statistics.median([r["rows"] / args.seconds for r in runs])
    command = (
        f"plantpulse bench e2e --seconds {args.seconds:g} --rate {args.rate} "
        f"--probe-hz {args.probe_hz:g} --repeat {args.repeat}"
    )
    section = f"""{START}
## P5: ingest -> WebSocket latency (`plantpulse bench e2e`)

Command: `{command}` ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)
Machine: {info}

Background load {args.rate:,} reading-sets/s (3 metrics each; {rate:,.0f} rows/s written) over
{LOAD_MACHINES} machines, probes at {args.probe_hz:g} Hz; the client (own process) subscribes to
all machines. Load and probes enter **at the writer** through a 50 ms batcher (MQTT ingest's
default batching), not through the broker: MQTT ingest is not merged yet, so the broker hop is
not included. 9 fleet-wide alert rules are loaded, so every row is also evaluated.

| | p50 | p95 | p99 |
|---|---|---|---|
| ingest -> WebSocket, median of {len(runs)} runs (min-max) | {med("p50")} ms \
| {med("p95")} ms | {med("p99")} ms |
| reference: ping -> pong RTT on the same socket, same runs | {ping("p50")} ms \
| {ping("p95")} ms | {ping("p99")} ms |

Target P5: p50 <= 20 ms, p99 <= 100 ms. Probes received {received}/{probes}; live batches
dropped by the hub: {dropped}. The 50 ms batcher alone accounts for ~25 ms of the median.

Writer cost of the realtime + alert listeners (median of 5 x 30 batches of ~1000 rows):
{overhead["without_ms"]:.2f} ms/batch without listeners
({overhead["without_range"][0]:.2f}-{overhead["without_range"][1]:.2f}), {overhead["with_ms"]:.2f}
ms/batch with them ({overhead["with_range"][0]:.2f}-{overhead["with_range"][1]:.2f}):
{overhead["overhead_pct"]:+.1f}% (the listeners only enqueue; the difference is noise plus the
CPU the hub and evaluator tasks take on the same event loop). Evaluator alone:
{overhead["evaluator_rows_per_s"]:,.0f} rows/s with 9 rules.
{END}"""
    path = Path(args.output)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if START in text and END in text:
        before, rest = text.split(START, 1)
        text = before + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"==> wrote {path}")
    with contextlib.suppress(Exception):
        sys.stdout.flush()
