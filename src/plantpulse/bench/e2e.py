"""`plantpulse bench e2e`: MQTT publish -> WebSocket receive latency under background load (P5).

Everything is a separate process on this machine, as in production:

- a private tuned Mosquitto (`bench/broker.py`) and a fresh database (dropped at the end);
- the service (`plantpulse serve`, MQTT ingest on, Redis fan-out as configured, 9 fleet-wide
  alert rules loaded so every row is also evaluated);
- the background load: `--rate` messages/s of one reading set each (3 metrics) over
  `--machines` machines, from one `mosquitto_pub -l -q 1` per machine, paced by this process;
- the probes (`e2e_probe`): one QoS 1 message every `1/--probe-hz` s whose `sent_at` metric is
  the wall-clock time of publishing; the same process receives them with a bare paho
  subscriber on the same broker (reference: the MQTT hop alone);
- the WebSocket client (`e2e_client`): subscribes to all machines (or `--scope probe`) and
  records receive time - sent_at for every probe, and ping -> pong round trips (reference).

Ends by counting what was stored (readings = published, no duplicates).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from plantpulse.bench.broker import BenchBroker
from plantpulse.bench.harness import admin_token, dsn, machine_info
from plantpulse.bench.ingest import Service
from plantpulse.config import AuthSettings, DatabaseSettings, database_settings

METRICS = ("temp", "rpm", "pressure")
START, END = "<!-- bench:e2e:start -->", "<!-- bench:e2e:end -->"
TICK_SECONDS = 0.02
WARM_UP_SECONDS = 2.0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "e2e", help="MQTT publish -> WebSocket latency under background load (P5)"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="probing time per run")
    parser.add_argument("--rate", type=int, default=5000, help="background messages/s")
    parser.add_argument("--machines", type=int, default=20, help="load machines (publishers)")
    parser.add_argument("--probe-hz", type=float, default=50.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--scope", choices=("all", "probe"), default="all", help="what the client subscribes to"
    )
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra PLANTPULSE_* setting for the service (repeatable)",
    )
    parser.add_argument(
        "--profile",
        help="py-spy profile of the service during the first run: flame graph (.svg) or "
        "collapsed stacks (.txt)",
    )
    parser.add_argument("--label", default="", help="name of this configuration in the report")
    parser.add_argument("--log", default="/tmp/plantpulse-bench-e2e.log")  # noqa: S108
    parser.add_argument("--output", default="docs/benchmarks.md", help="'' to not write")
    parser.set_defaults(func=cmd_e2e)


def cmd_e2e(args: argparse.Namespace) -> int:
    return asyncio.run(_main(args))


def _quantiles(values: list[float]) -> dict[str, float]:
    if len(values) < 2:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "max": float("nan")}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": q[49], "p95": q[94], "p99": q[98], "max": max(values)}


@dataclass
class Load:
    """`rate` messages/s, spread over one `mosquitto_pub -l -q 1` per machine."""

    broker: tuple[str, int]
    topics: list[str]
    rate: int
    sent: int = 0
    seconds: float = 0.0
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)

    async def start(self) -> None:
        host, port = self.broker
        for topic in self.topics:
            self.processes.append(
                await asyncio.create_subprocess_exec(
                    "mosquitto_pub", "-h", host, "-p", str(port), "-q", "1", "-t", topic, "-l",
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
            )  # fmt: skip

    async def run(self, stop: asyncio.Event) -> None:
        owed = 0.0
        last = time.monotonic()
        turn = 0
        count = len(self.processes)
        started = last
        while not stop.is_set():
            await asyncio.sleep(TICK_SECONDS)
            now = time.monotonic()
            owed += (now - last) * self.rate
            last = now
            due = int(owed)
            owed -= due
            stamp = time.time()
            lines: list[list[str]] = [[] for _ in range(count)]
            for k in range(due):
                # Distinct timestamps per machine (10 us apart), so nothing is a duplicate.
                lines[(turn + k) % count].append(
                    f'{{"timestamp":{stamp + k * 1e-5:.6f},"temp":{20 + k % 7},'
                    f'"rpm":{1400 + k % 50},"pressure":{3 + k % 2}}}\n'
                )
            turn = (turn + due) % count
            for process, chunk in zip(self.processes, lines, strict=True):
                if chunk and process.stdin is not None:
                    process.stdin.write("".join(chunk).encode())
            for process in self.processes:
                if process.stdin is not None:
                    await process.stdin.drain()
            self.sent += due
        self.seconds = time.monotonic() - started

    async def close(self) -> None:
        for process in self.processes:
            if process.stdin is not None:
                process.stdin.close()
        for process in self.processes:
            await process.wait()
        self.processes.clear()


async def _setup(pool: asyncpg.Pool, url: str, count: int) -> tuple[uuid.UUID, list[uuid.UUID]]:
    from plantpulse.alerts import service as alerts
    from plantpulse.alerts.schemas import AlertRuleCreate
    from plantpulse.db import make_engine, make_sessionmaker

    probe = uuid.uuid4()
    machines = [uuid.uuid4() for _ in range(count)]
    await pool.executemany(
        "INSERT INTO machines (id, name) VALUES ($1, $2)",
        [(m, f"bench-{m.hex[:12]}") for m in [probe, *machines]],
    )
    engine = make_engine(DatabaseSettings(url=url))
    try:
        async with make_sessionmaker(engine)() as session, session.begin():
            for metric in METRICS:
                for severity in ("info", "warning", "critical"):
                    data = AlertRuleCreate(
                        name=f"bench-{metric}-{severity}",
                        scope="fleet",
                        metric=metric,
                        condition=">",
                        threshold=1e12,
                        severity=severity,
                    )
                    await alerts.create_rule(session, data=data, user_id=None)
    finally:
        await engine.dispose()
    return probe, machines


async def _lines_of(process: asyncio.subprocess.Process) -> str:
    if process.stdout is None:
        raise RuntimeError("no pipe to a benchmark helper")
    return (await process.stdout.readline()).decode().strip()


async def _one_run(
    service: Service,
    broker: tuple[str, int],
    token: str,
    probe: uuid.UUID,
    machines: list[uuid.UUID],
    args: argparse.Namespace,
    profile: str | None,
) -> dict[str, Any]:
    prefix = service.prefix
    ws_url = f"ws://127.0.0.1:{service.port}/api/v1/ws"
    probe_topic = f"{prefix}/machines/{probe}/telemetry"
    total = WARM_UP_SECONDS + args.seconds
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "plantpulse.bench.e2e_client",
        ws_url, token, str(probe), str(total + 3.0), args.scope,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    if await _lines_of(client) != "ready":
        raise RuntimeError("the WebSocket client did not start")
    load = Load(broker, [f"{prefix}/machines/{m}/telemetry" for m in machines], args.rate)
    await load.start()
    stop = asyncio.Event()
    load_task = asyncio.create_task(load.run(stop))
    await asyncio.sleep(WARM_UP_SECONDS)
    prober = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "plantpulse.bench.e2e_probe",
        broker[0], str(broker[1]), probe_topic, str(args.probe_hz), str(args.seconds),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    if await _lines_of(prober) != "ready":
        raise RuntimeError("the probe publisher did not start")
    spy: asyncio.subprocess.Process | None = None
    if profile and service.process is not None:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        spy = await asyncio.create_subprocess_exec(
            py_spy, "record", "--pid", str(service.process.pid), "--duration",
            str(int(args.seconds)), "--rate", "200", "--output", profile, "--nonblocking",
            "--format", "raw" if profile.endswith(".txt") else "flamegraph",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
    probed: dict[str, Any] = json.loads(await _lines_of(prober))
    await prober.wait()
    stop.set()
    await load_task
    await load.close()
    out, _ = await client.communicate()
    if spy is not None:
        await spy.wait()
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    result.update(
        probes=probed["sent"],
        reference_ms=probed["reference_ms"],
        load=load.sent,
        load_rate=load.sent / load.seconds,
    )
    return result


async def _wait_stored(service: Service, token: str, target: int, limit: float) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while True:
        stats = await service.stats(token)
        if stats["readings_stored"] >= target or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.2)


async def _main(args: argparse.Namespace) -> int:
    database = database_settings()
    broker_process = BenchBroker()
    broker_process.start()
    broker = (broker_process.host, broker_process.port)
    name = f"plantpulse_bench_{uuid.uuid4().hex[:8]}"
    configured = make_url(database.url)
    admin = await asyncpg.connect(dsn(configured.set(database="postgres").render_as_string(False)))
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = configured.set(database=name).render_as_string(hide_password=False)
    secret = secrets.token_urlsafe(32)
    extra = dict(item.split("=", 1) for item in args.service_env)
    extra.setdefault("PLANTPULSE_REDIS__KEY_PREFIX", f"bench-e2e-{uuid.uuid4().hex[:8]}:")
    service = Service(url, broker, secret, Path(args.log), extra_env=extra)
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
        probe, machines = await _setup(pool, url, args.machines)
        token = await admin_token(
            DatabaseSettings(url=url), AuthSettings(jwt_secret=SecretStr(secret))
        )
        await service.start()
        print(f"==> service on :{service.port} (pid {service.process and service.process.pid})")
        runs = []
        for n in range(args.repeat):
            run = await _one_run(
                service, broker, token, probe, machines, args, args.profile if n == 0 else None
            )
            run.update(
                q=_quantiles(run["latencies_ms"]),
                ref=_quantiles(run["reference_ms"]),
                ping=_quantiles(run["ping_rtt_ms"]),
            )
            runs.append(run)
            q, ref, ping = run["q"], run["ref"], run["ping"]
            print(
                f"    run {n + 1}: MQTT->WS p50 {q['p50']:.1f} p95 {q['p95']:.1f} "
                f"p99 {q['p99']:.1f} max {q['max']:.1f} ms ({len(run['latencies_ms'])}/"
                f"{run['probes']} probes); MQTT->paho p50 {ref['p50']:.1f} p99 {ref['p99']:.1f} "
                f"ms; ping p50 {ping['p50']:.1f} p99 {ping['p99']:.1f} ms; load "
                f"{run['load_rate']:,.0f} msg/s; "
                f"{run['events']:,} events received"
            )
        published = sum(r["load"] for r in runs) * 3 + sum(r["probes"] for r in runs)
        stats = await _wait_stored(service, token, published, 120)
        stored = await pool.fetchval("SELECT count(*) FROM readings")
        duplicates = await pool.fetchval(
            "SELECT count(*) - count(DISTINCT (machine_id, metric, time)) FROM readings"
        )
        print(f"==> readings stored {stored:,} of {published:,} published; duplicates {duplicates}")
        rss = service.rss_mib()
    finally:
        service.stop()
        if pool is not None:
            await pool.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        broker_process.stop()
    section = _report(
        args,
        machine_info(pg_version, ts_version),
        runs,
        stats,
        stored=stored,
        published=published,
        duplicates=duplicates,
        rss=rss,
    )
    print(section)
    if args.output:
        _write(Path(args.output), section)
        print(f"==> wrote {args.output}")
    return 0 if stored == published and duplicates == 0 else 1


def _report(
    args: argparse.Namespace,
    info: list[str],
    runs: list[dict[str, Any]],
    stats: dict[str, Any],
    *,
    stored: int,
    published: int,
    duplicates: int,
    rss: float,
) -> str:
    def row(label: str, key: str) -> str:
        cells = []
        for quantile in ("p50", "p95", "p99"):
            values = [r[key][quantile] for r in runs]
            cells.append(
                f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f}) ms"
            )
        return f"| {label} | {' | '.join(cells)} |"

    received = sum(len(r["latencies_ms"]) for r in runs)
    probes = sum(r["probes"] for r in runs)
    load_rate = statistics.median(r["load_rate"] for r in runs)
    command = (
        f"plantpulse bench e2e --seconds {args.seconds:g} --rate {args.rate} "
        f"--machines {args.machines} --probe-hz {args.probe_hz:g} --repeat {args.repeat} "
        f"--scope {args.scope}" + "".join(f" --service-env {e}" for e in args.service_env)
    )
    p50 = statistics.median(r["q"]["p50"] for r in runs)
    p99 = statistics.median(r["q"]["p99"] for r in runs)
    met = "met" if p50 <= 20 and p99 <= 100 else "NOT met"
    scope = "all machines" if args.scope == "all" else "the probe machine only"
    flush = stats.get("flush_latency", {})
    lag = stats.get("commit_lag", {})
    title = f" — {args.label}" if args.label else ""
    return f"""### P5{title}

Command: `{command}` ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)

{chr(10).join(info)}

Background load {load_rate:,.0f} msg/s (target {args.rate:,}; 3 metrics each) from
{args.machines} `mosquitto_pub -l -q 1` processes; probes at {args.probe_hz:g} Hz over MQTT
QoS 1; the WebSocket client (own process) subscribes to {scope}. Latency = the client's
receive time - the probe's publish time (same clock). 9 fleet-wide alert rules are loaded.

| median of {len(runs)} runs (min-max) | p50 | p95 | p99 |
|---|---|---|---|
{row("**MQTT publish -> WebSocket receive (ours)**", "q")}
{row("reference: MQTT publish -> bare paho subscriber, same broker, same probes", "ref")}
{row("reference: WebSocket ping -> pong RTT, same socket", "ping")}

Target P5 (p50 <= 20 ms, p99 <= 100 ms): **{met}**. Probes received {received}/{probes};
readings stored {stored:,} of {published:,} published, duplicates {duplicates}. Service at the
end: {rss:.0f} MiB RSS; MQTT writer flush p50/p99 {flush.get("p50_ms")} / {flush.get("p99_ms")}
ms, arrival-to-commit p50/p99 {lag.get("p50_ms")} / {lag.get("p99_ms")} ms, {stats["batches"]:,}
batches for {stats["received"]:,} messages.
"""


def _write(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{START}\n## P5: MQTT publish -> WebSocket latency (`plantpulse bench e2e`)\n\n"
    if START in text and END in text:
        before, rest = text.split(START, 1)
        old = rest.split(END, 1)[0]
        # Keep earlier configurations' sections (by title); replace one with the same title.
        title = section.splitlines()[0]
        kept = [s for s in old.split("\n### ")[1:] if ("### " + s).splitlines()[0] != title]
        body = "".join("### " + s.rstrip() + "\n\n" for s in kept) + section
        text = before + block + body + END + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + section + END + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
