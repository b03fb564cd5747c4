"""`plantpulse bench api`: P4 — authenticated `GET .../telemetry/latest` in one process.

The service runs as its own `plantpulse serve` process (MQTT off) on a throwaway database; the
load comes from a separate process holding `--connections` keep-alive HTTP/1.1 connections
(plain asyncio sockets: a Python HTTP client library would be the bottleneck). The same-run
reference is `GET /health` (no auth, no database) with the same client, so the ratio shows
what authentication and the query cost on top of the framework.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from plantpulse.bench.broker import free_port
from plantpulse.bench.ingest import _admin_token, _dsn
from plantpulse.config import AuthSettings, DatabaseSettings, database_settings

MARK_START = "<!-- bench:api -->"
MARK_END = "<!-- /bench:api -->"


async def _worker(
    host: str, port: int, request: bytes, until: float, latencies: list[float]
) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    errors = 0
    try:
        while time.perf_counter() < until:
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
    host: str, port: int, path: str, token: str, seconds: float, conns: int
) -> dict[str, Any]:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n".encode()
    latencies: list[float] = []
    until = time.perf_counter() + seconds
    started = time.perf_counter()
    errors = await asyncio.gather(
        *(_worker(host, port, request, until, latencies) for _ in range(conns))
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
    """Entry point of the load process: argv = host port path token seconds connections."""
    host, port, path, token, seconds, conns = sys.argv[1:7]
    result = asyncio.run(_load(host, int(port), path, token, float(seconds), int(conns)))
    print(json.dumps(result))


def _measure(port: int, path: str, token: str, seconds: float, conns: int) -> dict[str, Any]:
    code = "from plantpulse.bench.api import client_main; client_main()"
    out = subprocess.run(  # noqa: S603 - our own interpreter and module
        [
            sys.executable,
            "-c",
            code,
            "127.0.0.1",
            str(port),
            path,
            token,
            str(seconds),
            str(conns),
        ],
        check=True,
        capture_output=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


async def _main(args: argparse.Namespace) -> int:
    database = database_settings()
    name = f"plantpulse_bench_{uuid.uuid4().hex[:8]}"
    configured = make_url(database.url)
    server = _dsn(configured.set(database="postgres").render_as_string(False))
    admin = await asyncpg.connect(server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = configured.set(database=name).render_as_string(hide_password=False)
    secret = secrets.token_urlsafe(32)
    port = free_port()
    log = Path(args.log).open("ab")  # noqa: ASYNC230 - the child's log, open for its life
    process: subprocess.Popen[bytes] | None = None
    try:
        from alembic import command

        from plantpulse.cli import _alembic_config

        await asyncio.to_thread(command.upgrade, _alembic_config(url), "head")  # type: ignore[arg-type]
        pool = await asyncpg.create_pool(_dsn(url), min_size=1, max_size=2)
        machine = uuid.uuid4()
        await pool.execute("INSERT INTO machines (id, name) VALUES ($1, 'bench-latest')", machine)
        now = datetime.now(UTC)
        rows = [
            (now - timedelta(seconds=i), machine, metric, float(i), True)
            for i in range(3_600)
            for metric in ("temperature", "pressure", "speed")
        ]
        await pool.copy_records_to_table(
            "readings", records=rows, columns=("time", "machine_id", "metric", "value", "valid")
        )
        await pool.executemany(
            "INSERT INTO machine_metrics (machine_id, name) VALUES ($1, $2)",
            [(machine, m) for m in ("temperature", "pressure", "speed")],
        )
        await pool.close()
        token = await _admin_token(
            DatabaseSettings(url=url), AuthSettings(jwt_secret=SecretStr(secret))
        )
        env = {
            **os.environ,
            "PLANTPULSE_ENV": "production",
            "PLANTPULSE_LOG_LEVEL": "WARNING",
            "PLANTPULSE_AUTH__JWT_SECRET": secret,
            "PLANTPULSE_DATABASE__URL": url,
            "PLANTPULSE_MQTT__ENABLED": "false",
            "PLANTPULSE_REDIS__KEY_PREFIX": f"ppbench:{uuid.uuid4().hex[:8]}:",
        }
        process = subprocess.Popen(  # noqa: S603, ASYNC220 - our entry point
            [sys.executable, "-m", "plantpulse.cli", "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.2)
        latest = f"/api/v1/machines/{machine}/telemetry/latest"
        # Warm-up: connections, caches, the first query plans.
        await asyncio.to_thread(_measure, port, latest, token, 2, args.connections)
        health, ours = [], []
        for run in range(args.runs):
            health.append(
                await asyncio.to_thread(
                    _measure, port, "/health", "", args.seconds, args.connections
                )
            )
            spy = _start_profile(args.profile, process.pid, args.seconds) if run == 0 else None
            ours.append(
                await asyncio.to_thread(
                    _measure, port, latest, token, args.seconds, args.connections
                )
            )
            if spy is not None:
                spy.wait(60)
                print(profile_summary(Path(args.profile)))
            print(
                f"    run {run + 1}: /health {health[-1]['rps']:,.0f} req/s, latest "
                f"{ours[-1]['rps']:,.0f} req/s p99 {ours[-1]['p99_ms']:.1f} ms",
                flush=True,
            )
        section = _report(args, health, ours)
        if _write(args.output, section):
            print(f"==> wrote {args.output}")
        print(section)
        return 0
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
        log.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def _start_profile(path: str | None, pid: int, seconds: float) -> subprocess.Popen[bytes] | None:
    """py-spy on the service for one measurement (raw collapsed stacks when `path` is .txt)."""
    if not path:
        return None
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen(  # noqa: S603 - py-spy from the venv
        [
            py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds)),
            "--rate", "250", "--nonblocking", "--output", path,
            "--format", "raw" if path.endswith(".txt") else "flamegraph",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def profile_summary(path: Path, top: int = 15) -> str:
    """The top frames of a raw py-spy profile: by own time and inclusive (PlantPulse code)."""
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
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")"
            if " (" in f
            else f
            for f in stack.split(";")
        ]
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
    for frame, count in [kv for kv in ranked if not kv[0].startswith(("<module>", "run ("))][
        : top * 2
    ]:
        lines.append(f"| {100 * count / total:.1f} | `{frame}` |")
    return "\n".join(lines)


def _median(results: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(float(r[key]) for r in results))


def _report(
    args: argparse.Namespace, health: list[dict[str, Any]], ours: list[dict[str, Any]]
) -> str:
    def row(label: str, results: list[dict[str, Any]]) -> str:
        rps = [r["rps"] for r in results]
        return (
            f"| {label} | {_median(results, 'rps'):,.0f} ({min(rps):,.0f}-{max(rps):,.0f}) | "
            f"{_median(results, 'p50_ms'):.1f} | {_median(results, 'p99_ms'):.1f} | "
            f"{sum(r['errors'] for r in results)} |"
        )

    ratio = _median(ours, "rps") / _median(health, "rps")
    command = (
        f"plantpulse bench api --runs {args.runs} --seconds {args.seconds:g} "
        f"--connections {args.connections}"
    )
    return "\n".join(
        [
            MARK_START,
            "## P4: authenticated `GET /api/v1/machines/{id}/telemetry/latest`, 1 process",
            "",
            f"Command: `{command}` ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC). Machine: "
            f"{os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()};"
            " service, PostgreSQL, Redis and the load process on the same machine.",
            "",
            "| request | req/s median (min-max) | p50 ms | p99 ms | non-200 |",
            "|---|---|---|---|---|",
            row("reference: `GET /health` (no auth, no database)", health),
            row("**latest values, bearer token (P4)**", ours),
            "",
            f"Ratio latest / health: {ratio:.2f}. Target P4: >= 2,000 req/s and p99 <= 25 ms.",
            "Each request checks the token (signature, Redis revocation, the user row) and runs",
            "the latest-per-metric query; the load process shares the 2 cores with the service.",
            MARK_END,
        ]
    )


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
        "api", help="P4: authenticated latest-values requests per second"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--output", default="docs/benchmarks.md", help="'' to not write")
    parser.add_argument(
        "--profile",
        help="py-spy profile of the service during the first P4 run (.txt: raw, summarised)",
    )
    parser.add_argument(
        "--log", default=str(Path(tempfile.gettempdir()) / "plantpulse-bench-api.log")
    )
    parser.set_defaults(func=run)
