"""`plantpulse bench api`: the read path through a real `plantpulse serve` (P4, P4b, P3, P4c).

The service runs as its own process (`--workers N`) on a throwaway database holding a store
of `--machines` x 3 metrics x `--timestamps` readings (10.4M by default, generated in the
database). Load comes from a separate process holding keep-alive HTTP/1.1 connections (plain
asyncio sockets: a Python HTTP client library would be the bottleneck). Each figure has a
reference measured in the same run:

- P4 (one machine's latest values, `--connections`): `GET /health` (no auth, no database)
  with the same client; the ratio shows what authentication and the query cost on top of
  the framework. The service's CPU time per request (from /proc) is printed too: unlike
  req/s it hardly depends on what else the shared machine is doing.
- P4b (fleet latest, 1,000 machines) and P3 (24 h at 1-minute buckets of a random machine),
  one connection: the same SQL run directly with asyncpg by this process.
- P4c: P4 while `--ingest-rate` MQTT messages/s (3 metrics each) are published to the
  service; reference: P4 of the same run without ingest. Ingest must stay lossless
  (stored = published x 3, no duplicates).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from plantpulse.bench.broker import BenchBroker, free_port
from plantpulse.bench.e2e import Load
from plantpulse.bench.harness import admin_token, dsn
from plantpulse.config import AuthSettings, DatabaseSettings, database_settings
from plantpulse.telemetry import queries

MARK_START = "<!-- bench:api -->"
MARK_END = "<!-- /bench:api -->"
METRICS = ("pressure", "speed", "temperature")
INGEST_MACHINES = 20

# --- the load process ---


async def _worker(
    host: str,
    port: int,
    requests: list[bytes],
    turn: list[int],
    until: float,
    latencies: list[float],
) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    errors = 0
    try:
        while time.perf_counter() < until:
            request = requests[turn[0] % len(requests)]
            turn[0] += 1
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if not head.startswith(b"HTTP/1.1 200"):
                errors += 1
    finally:
        writer.close()
    return errors


async def _load(
    host: str, port: int, paths: list[str], token: str, seconds: float, conns: int
) -> dict[str, Any]:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    requests = [f"GET {p} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n".encode() for p in paths]
    latencies: list[float] = []
    until = time.perf_counter() + seconds
    started = time.perf_counter()
    turn = [0]
    errors = await asyncio.gather(
        *(_worker(host, port, requests, turn, until, latencies) for _ in range(conns))
    )
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "errors": sum(errors),
        "requests": len(latencies),
    }


def client_main() -> None:
    """Entry point of the load process: argv = host port paths-file token seconds conns."""
    host, port, paths_file, token, seconds, conns = sys.argv[1:7]
    paths = json.loads(Path(paths_file).read_text())
    result = asyncio.run(_load(host, int(port), paths, token, float(seconds), int(conns)))
    print(json.dumps(result))


# --- the service ---


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children (the workers), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    try:
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    for one in pids:
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


class Service:
    def __init__(self, url: str, secret: str, broker: tuple[str, int], args: Any) -> None:
        self.port = free_port()
        self.prefix = f"bench/{uuid.uuid4().hex[:8]}"
        self.env = {
            **os.environ,
            "PLANTPULSE_ENV": "production",
            "PLANTPULSE_LOG_LEVEL": "WARNING",
            "PLANTPULSE_AUTH__JWT_SECRET": secret,
            "PLANTPULSE_DATABASE__URL": url,
            "PLANTPULSE_MQTT__HOST": broker[0],
            "PLANTPULSE_MQTT__PORT": str(broker[1]),
            "PLANTPULSE_MQTT__CLIENT_ID": f"bench-{uuid.uuid4().hex[:8]}",
            "PLANTPULSE_MQTT__TOPIC_PREFIX": self.prefix,
            "PLANTPULSE_REDIS__KEY_PREFIX": f"ppbench:{uuid.uuid4().hex[:8]}:",
        }
        self.workers = args.workers
        self.log_path = args.log
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        with Path(self.log_path).open("ab") as log:  # noqa: ASYNC230 - the child's log
            self.process = subprocess.Popen(  # noqa: S603, ASYNC220 - our entry point, at once
                [
                    sys.executable, "-m", "plantpulse.cli", "serve", "--port", str(self.port),
                    "--workers", str(self.workers),
                ],
                env=self.env,
                stdout=log,
                stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + 120
        ready = 0
        while time.monotonic() < deadline and ready < 5 * self.workers:
            try:
                # A new connection each time: with several workers, each must say so.
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}") as client:
                    up = (await client.get("/ready")).json()["mqtt"]["status"] == "up"
                ready = ready + 1 if up else 0
            except (httpx.TransportError, ValueError, KeyError):
                ready = 0
            await asyncio.sleep(0.2)
        if ready < 5 * self.workers:
            raise RuntimeError(f"the service did not become ready; see {self.log_path}")

    def cpu(self) -> float:
        return _cpu_seconds(self.process.pid) if self.process is not None else 0.0

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(60)


def _measure(
    service: Service, paths: list[str], token: str, seconds: float, conns: int
) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(paths, handle)
    code = "from plantpulse.bench.api import client_main; client_main()"
    cpu = service.cpu()
    try:
        out = subprocess.run(  # noqa: S603 - our own interpreter and module
            [
                sys.executable, "-c", code, "127.0.0.1", str(service.port), handle.name, token,
                str(seconds), str(conns),
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
    finally:
        Path(handle.name).unlink()
    result: dict[str, Any] = json.loads(out.stdout)
    result["cpu_ms"] = (service.cpu() - cpu) * 1000 / max(1, result["requests"])
    return result


async def _sql_timings(seconds: float, call: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    latencies: list[float] = []
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        started = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - started)
    latencies.sort()
    return {
        "rps": len(latencies) / seconds,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "errors": 0,
        "requests": len(latencies),
    }


# --- the store ---


async def _load_store(
    pool: asyncpg.Pool, *, machines: int, timestamps: int, every: int
) -> tuple[list[uuid.UUID], list[uuid.UUID], datetime]:
    """`machines` x 3 metrics x `timestamps` readings ending now, generated in the database
    (valid except every 97th), plus INGEST_MACHINES machines without readings for P4c."""
    fleet = [uuid.uuid4() for _ in range(machines)]
    ingest = [uuid.uuid4() for _ in range(INGEST_MACHINES)]
    await pool.executemany(
        "INSERT INTO machines (id, name) VALUES ($1, $2)",
        [(m, f"bench-{i:05d}") for i, m in enumerate(fleet)]
        + [(m, f"zz-ingest-{i:03d}") for i, m in enumerate(ingest)],
    )
    await pool.executemany(
        "INSERT INTO machine_metrics (machine_id, name) VALUES ($1, $2)",
        [(m, metric) for m in fleet for metric in METRICS],
    )
    end = datetime.now(UTC).replace(microsecond=0)
    started = time.monotonic()
    # One statement per 100 machines: progress, and no single huge transaction.
    for first in range(0, machines, 100):
        await pool.execute(
            """
            INSERT INTO readings (time, machine_id, metric, value, valid)
            SELECT $2::timestamptz - make_interval(secs => i * $3), m, metric,
                   (i % 1000) / 10.0, i % 97 <> 0
            FROM unnest($1::uuid[]) AS m, unnest($4::text[]) AS metric,
                 generate_series(0, $5 - 1) AS i
            """,
            fleet[first : first + 100],
            end,
            float(every),
            list(METRICS),
            timestamps,
        )
    loaded = machines * timestamps * len(METRICS)
    elapsed = time.monotonic() - started
    print(f"==> store: {loaded:,} readings in {elapsed:.0f} s; VACUUM ANALYZE", flush=True)
    # Index-only scans need the visibility map; a settled store has it (autovacuum).
    await pool.execute("VACUUM ANALYZE readings")
    await pool.execute("VACUUM ANALYZE machine_metrics")
    await pool.execute("VACUUM ANALYZE machines")
    return fleet, ingest, end


# --- the benchmark ---


async def _main(args: argparse.Namespace) -> int:
    database = database_settings()
    name = f"plantpulse_bench_{uuid.uuid4().hex[:8]}"
    configured = make_url(database.url)
    server = dsn(configured.set(database="postgres").render_as_string(False))
    admin = await asyncpg.connect(server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = configured.set(database=name).render_as_string(hide_password=False)
    secret = secrets.token_urlsafe(32)
    broker = BenchBroker()
    broker.start()
    service = Service(url, secret, (broker.host, broker.port), args)
    pool: asyncpg.Pool | None = None
    rng = random.Random(7)  # noqa: S311 - choosing machines
    try:
        from alembic import command

        from plantpulse.cli import _alembic_config

        await asyncio.to_thread(command.upgrade, _alembic_config(url), "head")  # type: ignore[arg-type]
        pool = await asyncpg.create_pool(dsn(url), min_size=1, max_size=4)
        fleet, ingest_machines, end = await _load_store(
            pool, machines=args.machines, timestamps=args.timestamps, every=args.every
        )
        token = await admin_token(
            DatabaseSettings(url=url), AuthSettings(jwt_secret=SecretStr(secret))
        )
        await service.start()
        print(f"==> service on :{service.port} ({args.workers} worker(s)), db {name}", flush=True)
        one = fleet[0]
        latest = [f"/api/v1/machines/{one}/telemetry/latest"]
        fleet_path = ["/api/v1/telemetry/latest"]
        window = (
            f"start_time={(end - timedelta(hours=24)).isoformat().replace('+00:00', 'Z')}"
            f"&end_time={end.isoformat().replace('+00:00', 'Z')}&interval=1m&agg=avg,min,max"
        )
        shuffled = rng.sample(fleet, len(fleet))
        bucketed = [f"/api/v1/machines/{m}/telemetry?{window}" for m in shuffled]
        c = args.connections

        async def measure(paths: list[str], tok: str, conns: int) -> dict[str, Any]:
            return await asyncio.to_thread(_measure, service, paths, tok, args.seconds, conns)

        async def fleet_sql() -> None:
            assert pool is not None  # noqa: S101
            page, _ = await queries.machine_page(pool, machine_ids=None, limit=1000, offset=0)
            await queries.latest(pool, machine_ids=[m["id"] for m in page], include_invalid=False)

        async def bucket_sql() -> None:
            assert pool is not None  # noqa: S101
            await queries.buckets(
                pool,
                machine_id=rng.choice(fleet),
                metrics=list(METRICS),
                start=end - timedelta(hours=24),
                end=end,
                interval=timedelta(minutes=1),
                aggregates=["avg", "min", "max"],
                include_invalid=False,
                timescale=True,
            )

        # Warm-up: connections, caches, query plans.
        await measure(latest, token, c)
        await measure(fleet_path, token, 1)
        results: dict[str, list[dict[str, Any]]] = {
            k: [] for k in ("health", "p4", "p4b", "p4b_sql", "p3", "p3_sql", "p4c", "ingest")
        }
        loads: list[float] = []
        for run in range(args.runs):
            loads.append(os.getloadavg()[0])
            results["health"].append(await measure(["/health"], "", c))
            spy = _start_profile(args.profile, service, args.seconds) if run == 0 else None
            results["p4"].append(await measure(latest, token, c))
            if spy is not None:
                await asyncio.to_thread(spy.wait, 120)
                print(profile_summary(Path(args.profile)), flush=True)
            results["p4b"].append(await measure(fleet_path, token, 1))
            results["p4b_sql"].append(await _sql_timings(args.seconds, fleet_sql))
            results["p3"].append(await measure(bucketed, token, 1))
            results["p3_sql"].append(await _sql_timings(args.seconds, bucket_sql))
            if args.ingest_rate > 0:
                p4c, ingested = await _under_ingest(
                    service, broker, pool, ingest_machines, latest, token, args
                )
                results["p4c"].append(p4c)
                results["ingest"].append(ingested)
            loads.append(os.getloadavg()[0])
            r = {k: v[-1] for k, v in results.items() if v}
            print(
                f"    run {run + 1}: /health {r['health']['rps']:,.0f} req/s; P4 "
                f"{r['p4']['rps']:,.0f} req/s p99 {r['p4']['p99_ms']:.1f} ms; P4b p99 "
                f"{r['p4b']['p99_ms']:.1f} ms (SQL {r['p4b_sql']['p99_ms']:.1f}); P3 p99 "
                f"{r['p3']['p99_ms']:.1f} ms (SQL {r['p3_sql']['p99_ms']:.1f})"
                + (
                    f"; P4c p99 {r['p4c']['p99_ms']:.1f} ms at "
                    f"{r['ingest']['rate']:,.0f} msg/s, lossless {r['ingest']['lossless']}"
                    if "p4c" in r
                    else ""
                ),
                flush=True,
            )
        section = _report(args, results, loads)
        if _write(args.output, section):
            print(f"==> wrote {args.output}")
        print(section)
        lossless = all(i["lossless"] for i in results["ingest"])
        return 0 if lossless else 1
    finally:
        service.stop()
        broker.stop()
        if pool is not None:
            await pool.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _under_ingest(
    service: Service,
    broker: BenchBroker,
    pool: asyncpg.Pool,
    machines: list[uuid.UUID],
    paths: list[str],
    token: str,
    args: argparse.Namespace,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """P4 while `args.ingest_rate` messages/s go through MQTT; then count what was stored."""
    before = await pool.fetchval(
        "SELECT count(*) FROM readings WHERE machine_id = ANY($1::uuid[])", machines
    )
    topics = [f"{service.prefix}/machines/{m}/telemetry" for m in machines]
    load = Load((broker.host, broker.port), topics, args.ingest_rate)
    await load.start()
    stop = asyncio.Event()
    running = asyncio.create_task(load.run(stop))
    await asyncio.sleep(1.0)  # let ingest reach its pace before timing reads
    try:
        result = await asyncio.to_thread(
            _measure, service, paths, token, args.seconds, args.connections
        )
    finally:
        stop.set()
        await running
        await load.close()
    expected = before + load.sent * 3
    stored = before
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        stored = await pool.fetchval(
            "SELECT count(*) FROM readings WHERE machine_id = ANY($1::uuid[])", machines
        )
        if stored >= expected:
            break
        await asyncio.sleep(0.5)
    duplicates = await pool.fetchval(
        """
        SELECT count(*) - count(DISTINCT (machine_id, metric, time)) FROM readings
        WHERE machine_id = ANY($1::uuid[])
        """,
        machines,
    )
    return result, {
        "rate": load.sent / max(load.seconds, 1e-9),
        "sent": load.sent,
        "stored": stored - before,
        "duplicates": duplicates,
        "lossless": stored == expected and duplicates == 0,
    }


# --- profiling ---


def _start_profile(
    path: str | None, service: Service, seconds: float
) -> subprocess.Popen[bytes] | None:
    """py-spy on the service for one measurement (raw collapsed stacks when `path` is .txt)."""
    if not path or service.process is None:
        return None
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen(  # noqa: S603 - py-spy from the venv
        [
            py_spy, "record", "--pid", str(service.process.pid), "--subprocesses",
            "--duration", str(int(seconds)), "--rate", "250", "--nonblocking",
            "--output", path, "--format", "raw" if path.endswith(".txt") else "flamegraph",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _frame(text: str) -> str:
    name, _, where = text.partition(" (")
    return f"{name} ({where.split(':')[0].rsplit('/', 1)[-1]}" + (")" if where else "")


def profile_summary(path: Path, top: int = 15) -> str:
    """The top frames of a raw py-spy profile: by own time and inclusive."""
    if path.suffix != ".txt" or not path.exists():
        return f"profile: {path}"
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame(f) for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    if not total:
        return "profile: empty"
    lines = [f"{total} samples", "", "| own % | frame |", "|---|---|"]
    for frame, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| {100 * count / total:.1f} | `{frame}` |")
    lines += ["", "| inclusive % | frame |", "|---|---|"]
    ranked = sorted(inclusive.items(), key=lambda kv: -kv[1])
    shown = [kv for kv in ranked if kv[1] < total * 0.6][: top * 2]
    for frame, count in shown:
        lines.append(f"| {100 * count / total:.1f} | `{frame}` |")
    return "\n".join(lines)


# --- the report ---


def _median(results: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(float(r[key]) for r in results))


def _row(label: str, results: list[dict[str, Any]], conns: int | str) -> str:
    if not results:
        return f"| {label} | {conns} | - | - | - | - | - |"
    rps = [r["rps"] for r in results]
    cpu = f"{_median(results, 'cpu_ms'):.2f}" if "cpu_ms" in results[0] else "-"
    return (
        f"| {label} | {conns} | {_median(results, 'rps'):,.0f} ({min(rps):,.0f}-{max(rps):,.0f}) "
        f"| {_median(results, 'p50_ms'):.1f} | {_median(results, 'p99_ms'):.1f} | {cpu} | "
        f"{sum(r['errors'] for r in results)} |"
    )


def _verdict(ok: bool) -> str:
    return "met" if ok else "**NOT met**"


def _report(
    args: argparse.Namespace, r: dict[str, list[dict[str, Any]]], loads: list[float]
) -> str:
    command = (
        f"plantpulse bench api --runs {args.runs} --seconds {args.seconds:g} "
        f"--connections {args.connections} --workers {args.workers} --machines {args.machines} "
        f"--timestamps {args.timestamps} --every {args.every} --ingest-rate {args.ingest_rate}"
    )
    store = args.machines * args.timestamps * len(METRICS)
    ratio = _median(r["p4"], "rps") / _median(r["health"], "rps")
    p4_ok = ratio >= 0.5 and _median(r["p4"], "p99_ms") <= 25
    lines = [
        MARK_START,
        f"## The read path (P4, P4b, P3 via the API, P4c), {args.workers} worker(s)",
        "",
        f"Command: `{command}` ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC). Machine: "
        f"{os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}; "
        "service, PostgreSQL, Redis, Mosquitto and the load process on the same machine. "
        f"Store: {store:,} readings ({args.machines:,} machines x 3 metrics x "
        f"{args.timestamps:,} timestamps {args.every} s apart). 1-minute load average during "
        f"the runs: {min(loads):.1f}-{max(loads):.1f} (other work shares the 2 cores: compare "
        "each figure with its same-run reference).",
        "",
        "| request | connections | req/s median (min-max) | p50 ms | p99 ms | service CPU "
        "ms/request | non-200 |",
        "|---|---|---|---|---|---|---|",
        _row("reference: `GET /health` (no auth, no database)", r["health"], args.connections),
        _row("**P4: latest values of one machine, bearer token**", r["p4"], args.connections),
        _row("reference: fleet latest, the same SQL directly (asyncpg)", r["p4b_sql"], 1),
        _row("**P4b: fleet latest (1,000 machines x 3 metrics)**", r["p4b"], 1),
        _row("reference: P3 bucketed query, the same SQL directly", r["p3_sql"], 1),
        _row("**P3: 24 h at 1-minute buckets, random machine, via the API**", r["p3"], 1),
        _row("**P4c: P4 during MQTT ingest**", r["p4c"], args.connections),
        "",
        f"- P4: ratio to `/health` {ratio:.2f} (target >= 0.5), p99 "
        f"{_median(r['p4'], 'p99_ms'):.1f} ms (target <= 25): {_verdict(p4_ok)}.",
        f"- P4b: p99 {_median(r['p4b'], 'p99_ms'):.1f} ms (target <= 20; the SQL alone "
        f"{_median(r['p4b_sql'], 'p99_ms'):.1f}): {_verdict(_median(r['p4b'], 'p99_ms') <= 20)}.",
        f"- P3: p99 {_median(r['p3'], 'p99_ms'):.1f} ms (target <= 20; the SQL alone "
        f"{_median(r['p3_sql'], 'p99_ms'):.1f}): {_verdict(_median(r['p3'], 'p99_ms') <= 20)}.",
    ]
    if r["p4c"]:
        ingest = r["ingest"]
        ok = _median(r["p4c"], "p99_ms") <= 50 and all(i["lossless"] for i in ingest)
        lines.append(
            f"- P4c: p99 {_median(r['p4c'], 'p99_ms'):.1f} ms (target <= 50) while ingest ran "
            f"at {statistics.median(i['rate'] for i in ingest):,.0f} msg/s (target "
            f"{args.ingest_rate:,}); stored {sum(i['stored'] for i in ingest):,} of "
            f"{sum(i['sent'] for i in ingest) * 3:,} readings, duplicates "
            f"{sum(i['duplicates'] for i in ingest)}: {_verdict(ok)}."
        )
    lines += [
        "",
        "P4b and P3 are timed one request at a time (latency targets); P3 rotates over the "
        "machines so the Redis answer cache (5 s for this window) never answers it.",
        MARK_END,
    ]
    return "\n".join(lines)


def _write(output: str, section: str) -> bool:
    """Replace this benchmark's section of `output` (or append it); '' writes nothing."""
    if not output:
        return False
    path = Path(output)
    text = path.read_text() if path.exists() else "# PlantPulse benchmarks\n\n"
    if MARK_START in text and MARK_END in text:
        head, rest = text.split(MARK_START, 1)
        text = head + section + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
    return True


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_main(args))


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "api", help="P4/P4b/P3/P4c: the read path through a real server, with references"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="`plantpulse serve --workers`")
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--timestamps", type=int, default=3456, help="per machine and metric")
    parser.add_argument("--every", type=int, default=30, help="seconds between timestamps")
    parser.add_argument(
        "--ingest-rate", type=int, default=5000, help="P4c MQTT messages/s (0: skip P4c)"
    )
    parser.add_argument("--output", default="docs/benchmarks.md", help="'' to not write")
    parser.add_argument(
        "--profile",
        help="py-spy profile of the service during the first P4 run (.txt: raw, summarised)",
    )
    parser.add_argument(
        "--log", default=str(Path(tempfile.gettempdir()) / "plantpulse-bench-api.log")
    )
    parser.set_defaults(func=run)
