"""`plantpulse bench ingest`: MQTT ingest throughput (P1, P2) and memory (P6), next to same-run
references, counted in the database at the end. Method: docs/benchmarks.md.

Everything runs on this machine: a private tuned Mosquitto (or --broker), a fresh database on
the configured PostgreSQL server (dropped at the end), `plantpulse serve` as a child process,
and `mosquitto_pub -l -q 1` processes as the load generator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from plantpulse.bench.broker import BenchBroker, free_port
from plantpulse.bench.harness import admin_token, dsn, machine_info
from plantpulse.config import AuthSettings, DatabaseSettings, database_settings

METRICS = ("temperature", "pressure", "speed")
MARK_START = "<!-- bench:ingest -->"
MARK_END = "<!-- /bench:ingest -->"

# The same-run reference: a bare paho-mqtt subscriber, QoS 1, JSON-parsing each message.
PAHO_REFERENCE = r"""
import json, sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
host, port, topic, total = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
count = 0
def on_message(client, userdata, message):
    global count
    json.loads(message.payload)
    count += 1
    if count == total:
        print(time.time(), flush=True)
        client.disconnect()
def on_connect(client, userdata, flags, reason, properties):
    client.subscribe(topic, qos=1)
def on_subscribe(*args):
    print("ready", flush=True)
client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-paho", clean_session=True)
client.on_message = on_message
client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.connect(host, port)
client.loop_forever()
"""


@dataclass
class Result:
    name: str
    unit: str
    values: list[float] = field(default_factory=list)

    def row(self) -> str:
        med = statistics.median(self.values)
        return (
            f"| {self.name} | {med:,.0f} {self.unit} | {min(self.values):,.0f} | "
            f"{max(self.values):,.0f} | {len(self.values)} |"
        )


async def _run(command: Sequence[str], stdin: bytes | None = None) -> None:
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.PIPE if stdin is not None else None,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate(stdin)
    if process.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {err.decode()[:500]}")


async def publish(broker: tuple[str, int], jobs: Sequence[tuple[str, list[str]]]) -> None:
    """One `mosquitto_pub -l -q 1` per (topic, lines), all in parallel."""
    host, port = broker
    await asyncio.gather(
        *(
            _run(
                ["mosquitto_pub", "-h", host, "-p", str(port), "-q", "1", "-t", topic, "-l"],
                ("\n".join(lines) + "\n").encode(),
            )
            for topic, lines in jobs
        )
    )


def _p1_jobs(
    prefix: str, machines: Sequence[uuid.UUID], per: int, base: int, *, timestamps: bool = True
) -> list[Any]:
    """Without `timestamps` the readings take the time they are received: a redelivery can
    then only be recognised by its packet id (docs/ingest.md), which this measures."""
    jobs = []
    for machine in machines:
        lines = [
            json.dumps(
                {
                    **({"timestamp": base + j} if timestamps else {}),
                    "temperature": 60 + (j % 100) / 10,
                    "pressure": 3 + (j % 7) / 100,
                    "speed": 1500 + j % 50,
                }
            )
            for j in range(per)
        ]
        jobs.append((f"{prefix}/machines/{machine}/telemetry", lines))
    return jobs


def _p2_jobs(prefix: str, machines: Sequence[uuid.UUID], messages: int, base: int) -> list[Any]:
    lines = [
        json.dumps(
            {
                "gateway_id": "bench",
                "timestamp": base + j,
                "batch": [
                    {"machine_id": str(m), "readings": [{"temperature": 60 + (j + k) % 30}]}
                    for k, m in enumerate(machines)
                ],
            }
        )
        for j in range(messages)
    ]
    half = len(lines) // 2
    return [
        (f"{prefix}/gateways/bench-a/batch", lines[:half]),
        (f"{prefix}/gateways/bench-b/batch", lines[half:]),
    ]


async def _count(pool: asyncpg.Pool) -> int:
    value: int = await pool.fetchval("SELECT count(*) FROM readings")
    return value


async def _wait_rows(service: Service, token: str, target: int, limit: float) -> float:
    """Wall time when the service has committed `target` new readings in total. Polls its
    counters (cheap) rather than count(*) on a growing table, which would load the database;
    the table is counted once at the end."""
    deadline = time.monotonic() + limit
    # A generous timeout: a service saturated by the burst may answer slowly, and a
    # ReadTimeout here used to abort the whole benchmark.
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}", timeout=60) as client:
        headers = {"Authorization": f"Bearer {token}"}
        while True:
            stats = (await client.get("/api/v1/ingest/stats", headers=headers)).json()
            if stats["readings_stored"] >= target:
                return time.time()
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {stats['readings_stored']} of {target} stored in time")
            await asyncio.sleep(0.02)


async def _wait_new_rows(pool: asyncpg.Pool, since_ms: int, target: int, limit: float) -> float:
    """`_wait_rows` for several workers (whose counters are each their own): counts the rows
    stamped at or after `since_ms` (this round's), a range of the time index."""
    deadline = time.monotonic() + limit
    since = datetime.fromtimestamp(since_ms / 1000, UTC)
    while True:
        stored = await pool.fetchval("SELECT count(*) FROM readings WHERE time >= $1", since)
        if stored >= target:
            return time.time()
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {stored} of {target} stored in time")
        await asyncio.sleep(0.05)


async def paho_reference(broker: tuple[str, int], messages: int, publishers: int) -> float:
    """Messages/s a bare paho subscriber receives at QoS 1, publishers included."""
    host, port = broker
    topic = f"bench/paho/{uuid.uuid4().hex[:8]}"
    sub = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PAHO_REFERENCE, host, str(port), f"{topic}/#",
        str(messages * publishers), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    if sub.stdout is None:
        raise RuntimeError("no pipe to the reference subscriber")
    await sub.stdout.readline()  # ready
    jobs = _p1_jobs(topic, [uuid.uuid4() for _ in range(publishers)], messages, 1_700_000_000)
    started = time.time()
    await publish(broker, jobs)
    finished = float((await sub.stdout.readline()).decode())
    await sub.wait()
    return messages * publishers / (finished - started)


async def copy_reference(pool: asyncpg.Pool, rows: int) -> float:
    """Raw asyncpg COPY into the readings hypertable, 1 connection, 10k-row batches."""
    machine = uuid.uuid4()
    base = datetime.now(UTC).timestamp()
    records = [
        (datetime.fromtimestamp(base - i * 0.001, UTC), machine, "temperature", float(i), True)
        for i in range(rows)
    ]
    async with pool.acquire() as conn:
        started = time.perf_counter()
        for i in range(0, rows, 10_000):
            await conn.copy_records_to_table(
                "readings",
                records=records[i : i + 10_000],
                columns=("time", "machine_id", "metric", "value", "valid"),
            )
        elapsed = time.perf_counter() - started
        await conn.execute("DELETE FROM readings WHERE machine_id = $1", machine)
    return rows / elapsed


class Service:
    def __init__(
        self,
        url: str,
        broker: tuple[str, int],
        secret: str,
        log: Path,
        extra_env: dict[str, str] | None = None,
        workers: int = 1,
    ) -> None:
        self.workers = workers
        self.port = free_port()
        self.prefix = f"bench/{uuid.uuid4().hex[:8]}"
        self.log = log
        self.env = {
            **os.environ,
            "PLANTPULSE_ENV": "production",
            "PLANTPULSE_LOG_LEVEL": "WARNING",
            "PLANTPULSE_AUTH__JWT_SECRET": secret,
            "PLANTPULSE_DATABASE__URL": url,
            "PLANTPULSE_MQTT__ENABLED": "true",
            "PLANTPULSE_MQTT__HOST": broker[0],
            "PLANTPULSE_MQTT__PORT": str(broker[1]),
            "PLANTPULSE_MQTT__CLIENT_ID": f"bench-{uuid.uuid4().hex[:8]}",
            "PLANTPULSE_MQTT__TOPIC_PREFIX": self.prefix,
            **(extra_env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603, ASYNC220 - our entry point, at once
                [
                    sys.executable,
                    "-m",
                    "plantpulse.cli",
                    "serve",
                    "--port",
                    str(self.port),
                    "--workers",
                    str(self.workers),
                ],
                env=self.env,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 120
        ready = 0
        while time.monotonic() < deadline:
            # A new connection each time: with several workers, each must say so.
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}") as client:
                try:
                    up = (await client.get("/ready")).json()["mqtt"]["status"] == "up"
                except (httpx.TransportError, ValueError, KeyError):
                    up = False
            ready = ready + 1 if up else 0
            if ready >= 5 * self.workers:
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"the service did not become ready; see {self.log}")

    def rss_mib(self) -> float:
        if self.process is None:
            return 0.0
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    async def stats(self, token: str) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}") as client:
            response = await client.get(
                "/api/v1/ingest/stats", headers={"Authorization": f"Bearer {token}"}
            )
            data: dict[str, Any] = response.json()
            return data

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)


async def _main(args: argparse.Namespace) -> int:
    if args.workers > 1 and not args.timestamps:
        # Several workers are counted by the rows' device times (`_wait_new_rows`).
        print("--no-timestamps needs --workers 1", file=sys.stderr)
        return 2
    database = database_settings()
    broker_process: BenchBroker | None = None
    if args.broker:
        host, _, port = args.broker.partition(":")
        broker = (host, int(port or 1883))
    else:
        broker_process = BenchBroker()
        broker_process.start()
        broker = (broker_process.host, broker_process.port)
    name = f"plantpulse_bench_{uuid.uuid4().hex[:8]}"
    configured = make_url(database.url)
    # The server's maintenance database: the configured one may not exist yet.
    admin = await asyncpg.connect(dsn(configured.set(database="postgres").render_as_string(False)))
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = configured.set(database=name).render_as_string(hide_password=False)
    secret = secrets.token_urlsafe(32)
    service = Service(url, broker, secret, Path(args.log), workers=args.workers)
    pool: asyncpg.Pool | None = None
    try:
        from alembic import command

        from plantpulse.cli import _alembic_config

        await asyncio.to_thread(command.upgrade, _alembic_config(url), "head")  # type: ignore[arg-type]
        pool = await asyncpg.create_pool(dsn(url), min_size=1, max_size=2)
        pg_version = await pool.fetchval("SELECT version()")
        ts_version = await pool.fetchval(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
        )
        p1_machines = [uuid.uuid4() for _ in range(args.publishers)]
        p2_machines = [uuid.uuid4() for _ in range(100)]
        await pool.executemany(
            "INSERT INTO machines (id, name) VALUES ($1, $2)",
            [(m, f"bench-{m.hex[:12]}") for m in [*p1_machines, *p2_machines]],
        )
        token = await admin_token(
            DatabaseSettings(url=url), AuthSettings(jwt_secret=SecretStr(secret))
        )
        await service.start()
        print(f"==> service on :{service.port}, broker {broker[0]}:{broker[1]}, db {name}")

        per = args.messages // args.publishers
        paho = Result("bare paho subscriber, QoS 1 (reference)", "msg/s")
        ours = Result("PlantPulse MQTT ingest, QoS 1, committed", "msg/s")
        ratio1 = Result("ratio", "")
        base = 1_700_000_000_000
        for run in range(args.runs):
            reference = await paho_reference(broker, per, args.publishers)
            before = 0 if args.workers > 1 else (await service.stats(token))["readings_stored"]
            started = time.time()
            jobs = _p1_jobs(service.prefix, p1_machines, per, base, timestamps=args.timestamps)
            await publish(broker, jobs)
            finished = await (
                _wait_new_rows(pool, base, per * args.publishers * 3, 600)
                if args.workers > 1
                else _wait_rows(service, token, before + per * args.publishers * 3, 600)
            )
            base += per
            rate = per * args.publishers / (finished - started)
            paho.values.append(reference)
            ours.values.append(rate)
            ratio1.values.append(rate / reference)
            print(f"    P1 run {run + 1}: paho {reference:,.0f} msg/s, ours {rate:,.0f} msg/s")

        copy = Result("raw asyncpg COPY, 1 connection, 10k rows (reference)", "rows/s")
        gateway = Result("PlantPulse MQTT gateway batches (100 readings), committed", "rows/s")
        ratio2 = Result("ratio", "")
        for run in range(args.runs):
            reference = await copy_reference(pool, args.batch_messages * 100)
            before = 0 if args.workers > 1 else (await service.stats(token))["readings_stored"]
            started = time.time()
            await publish(broker, _p2_jobs(service.prefix, p2_machines, args.batch_messages, base))
            finished = await (
                _wait_new_rows(pool, base, args.batch_messages * 100, 600)
                if args.workers > 1
                else _wait_rows(service, token, before + args.batch_messages * 100, 600)
            )
            base += args.batch_messages
            rate = args.batch_messages * 100 / (finished - started)
            copy.values.append(reference)
            gateway.values.append(rate)
            ratio2.values.append(rate / reference)
            print(f"    P2 run {run + 1}: COPY {reference:,.0f} rows/s, ours {rate:,.0f} rows/s")

        rss: list[tuple[float, float]] = []
        sustained_messages = 0
        if args.sustain > 0 and args.workers == 1:
            # Paced at 80 % of our measured P1 rate: a steady state, not a growing backlog.
            sustain_rate = int(statistics.median(ours.values) * 0.8)
            per_second = max(1, sustain_rate // args.publishers)
            print(f"    P6: {args.sustain} s at {sustain_rate:,} msg/s, sampling RSS")
            started = time.monotonic()
            before = (await service.stats(token))["readings_stored"]
            tick = started
            while time.monotonic() - started < args.sustain:
                jobs = _p1_jobs(
                    service.prefix, p1_machines, per_second, base, timestamps=args.timestamps
                )
                await publish(broker, jobs)
                base += per_second
                sustained_messages += per_second * args.publishers
                rss.append((time.monotonic() - started, service.rss_mib()))
                tick += 1
                await asyncio.sleep(max(0.0, tick - time.monotonic()))
            await _wait_rows(service, token, before + sustained_messages * 3, 600)
            rss.append((time.monotonic() - started, service.rss_mib()))
        stats = await service.stats(token)
        stored = await _count(pool)
        expected = (
            args.runs * (per * args.publishers * 3 + args.batch_messages * 100)
            + sustained_messages * 3
        )
        duplicates = await pool.fetchval(
            "SELECT count(*) - count(DISTINCT (machine_id, metric, time)) FROM readings"
        )
        dead = await pool.fetchval("SELECT count(*) FROM dead_letters")
        report = _report(
            args,
            machine_info(pg_version, ts_version),
            [paho, ours, ratio1],
            [copy, gateway, ratio2],
            rss,
            stats,
            stored=stored,
            expected=expected,
            duplicates=duplicates,
            dead=dead,
        )
        print(report)
        if args.output:
            _write(Path(args.output), report)
            print(f"==> written to {args.output}")
        return 0 if stored == expected and duplicates == 0 else 1
    finally:
        service.stop()
        if pool is not None:
            await pool.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        if broker_process is not None:
            broker_process.stop()


def _ratio_row(result: Result) -> str:
    return (
        f"| **ratio (ours / reference)** | **{statistics.median(result.values):.2f}** | "
        f"{min(result.values):.2f} | {max(result.values):.2f} | {len(result.values)} |"
    )


def _report(
    args: argparse.Namespace,
    machine: list[str],
    p1: list[Result],
    p2: list[Result],
    rss: list[tuple[float, float]],
    stats: dict[str, Any],
    *,
    stored: int,
    expected: int,
    duplicates: int,
    dead: int,
) -> str:
    header = "| measurement | median | min | max | runs |\n|---|---|---|---|---|"
    lines = [
        MARK_START,
        "## MQTT ingest (P1, P2, P6)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with:",
        "",
        "```",
        " ".join(["plantpulse bench ingest", *sys.argv[3:]]),
        "```",
        "",
        *machine,
        "",
        f"### P1: one reading set (3 metrics) per message, QoS 1 — {args.messages:,} messages "
        f"per run from {args.publishers} parallel `mosquitto_pub -l -q 1`"
        + ("" if args.timestamps else ", no device timestamps (readings take the receive time)"),
        "",
        "Rates are messages over the time from the start of publishing to the last message "
        "received (reference) or the last reading committed (ours), so publishing is inside "
        "both figures.",
        "",
        header,
        p1[0].row(),
        p1[1].row(),
        _ratio_row(p1[2]),
        "",
        f"Target: ratio ≥ 0.80. {'Met.' if statistics.median(p1[2].values) >= 0.8 else 'NOT met.'}",
        "",
        f"### P2: gateway batches of 100 readings — {args.batch_messages:,} messages per run",
        "",
        header,
        p2[0].row(),
        p2[1].row(),
        _ratio_row(p2[2]),
        "",
        f"Target: ratio ≥ 0.80. {'Met.' if statistics.median(p2[2].values) >= 0.8 else 'NOT met.'}",
        "",
    ]
    if rss:
        values = [v for _, v in rss]
        quarter = max(1, len(values) // 4)
        early = statistics.median(values[quarter : 2 * quarter] or values)
        late = statistics.median(values[-quarter:])
        lines += [
            f"### P6: service RSS under P1 load paced at 80 % of the P1 median, {args.sustain} s",
            "",
            f"(shorter than the 10 minutes of the target) — {len(values)} samples: "
            f"start {values[0]:.0f} MiB, median {statistics.median(values):.0f} MiB, "
            f"max {max(values):.0f} MiB, end {values[-1]:.0f} MiB; median of the second "
            f"quarter {early:.0f} MiB vs last quarter {late:.0f} MiB "
            f"({late - early:+.0f} MiB). Target < 300 MiB and flat: "
            f"{'met' if max(values) < 300 and late - early < 20 else 'NOT met'}.",
            "",
        ]
    flush = stats.get("flush_latency") or {}
    lag = stats.get("commit_lag") or {}
    lines += [
        "### Counted at the end",
        "",
        f"- readings stored: {stored:,} of {expected:,} published "
        f"({'all' if stored == expected else 'MISSING ' + str(expected - stored)}); "
        f"duplicates in the table: {duplicates}; dead letters: {dead}",
        f"- service counters: received {stats.get('received', 0):,}, accepted "
        f"{stats.get('accepted', 0):,}, duplicates {stats.get('duplicates', 0):,}, "
        f"batches {stats.get('batches', 0):,}, queue high-water "
        f"{stats.get('queue_high_water', 0):,}",
        f"- batch write (flush) latency p50/p95/p99: {flush.get('p50_ms')} / "
        f"{flush.get('p95_ms')} / {flush.get('p99_ms')} ms; arrival-to-commit of each batch's "
        f"oldest message p50/p95/p99: {lag.get('p50_ms')} / {lag.get('p95_ms')} / "
        f"{lag.get('p99_ms')} ms (last 2048 batches)",
        MARK_END,
    ]
    return "\n".join(lines)


def _write(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# PlantPulse benchmarks\n\n"
    if MARK_START in text and MARK_END in text:
        head, rest = text.split(MARK_START, 1)
        text = head + section + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_main(args))


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "ingest", help="MQTT ingest: P1/P2 throughput vs same-run references, P6 memory"
    )
    parser.add_argument("--messages", type=int, default=60_000, help="P1 messages per run")
    parser.add_argument("--publishers", type=int, default=4, help="parallel mosquitto_pub")
    parser.add_argument("--batch-messages", type=int, default=3_000, help="P2 messages per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--workers", type=int, default=1, help="`plantpulse serve --workers` (P6 needs 1)"
    )
    parser.add_argument("--sustain", type=int, default=120, help="P6 seconds (0: skip)")
    parser.add_argument(
        "--no-timestamps",
        dest="timestamps",
        action="store_false",
        help="P1/P6 messages without a device timestamp (readings take the receive time)",
    )
    parser.add_argument("--broker", help="host:port (default: a private tuned broker)")
    parser.add_argument("--output", default="docs/benchmarks.md")
    parser.add_argument(
        "--log",
        default=str(Path(tempfile.gettempdir()) / "plantpulse-bench-ingest.log"),
        help="where the measured service's output goes",
    )
    parser.set_defaults(func=run)
