"""Real-service helpers for tests: per-run databases, migrations, users and tokens."""

from __future__ import annotations

import asyncio
import getpass
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]

# The cluster the tests create their databases in; each run gets databases of its own.
SERVER_URL = os.environ.get(
    "PLANTPULSE_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("PLANTPULSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RUN_ID = uuid.uuid4().hex[:10]

# The Community (TSL) edition of TimescaleDB, which the Docker image runs and Debian does not
# ship: `../shared/timescaledb-tsl/install.sh` starts it on 5433 (scripts/test.sh runs it and
# passes its URL). Without that folder the edition-specific tests (tests/community) skip.
TSL_DIR = ROOT.parent / "shared" / "timescaledb-tsl"
COMMUNITY_SERVER_URL: str | None = os.environ.get("PLANTPULSE_TEST_COMMUNITY_URL") or (
    "postgresql+asyncpg://postgres@127.0.0.1:5433/postgres" if TSL_DIR.is_dir() else None
)
COMMUNITY_SKIP_REASON = (
    "Community edition tests: no ../shared/timescaledb-tsl beside this clone and "
    "PLANTPULSE_TEST_COMMUNITY_URL is not set"
)


def database_url(name: str, *, server: str = SERVER_URL) -> str:
    return make_url(server).set(database=name).render_as_string(hide_password=False)


def dsn(url: str) -> str:
    """The asyncpg form of a SQLAlchemy URL."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def create_database(suffix: str, *, server: str = SERVER_URL) -> str:
    name = f"pptest_{RUN_ID}_{suffix}"
    conn = await asyncpg.connect(dsn(server))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return database_url(name, server=server)


async def drop_database(url: str) -> None:
    """Drop a database made by create_database (on whichever server it lives)."""
    name = make_url(url).database
    conn = await asyncpg.connect(dsn(database_url("postgres", server=url)))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def pause_policies(url: str) -> None:
    """Take TimescaleDB's policies on our hypertables (compression on the Community edition)
    off the background scheduler: tests run them with `CALL run_job(id)` when they mean to.
    Left scheduled, they run at some point during the tests, and where the scheduler fails
    them (the TSL build on this machine, shared/timescaledb-tsl/README.md) `/ready` would
    rightly say `degraded` in tests that expect `ready`."""
    conn = await asyncpg.connect(dsn(url))
    try:
        if await conn.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"):
            await conn.execute(
                "SELECT alter_job(job_id, scheduled => false) "
                "FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL"
            )
    finally:
        await conn.close()


def alembic_config(url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", url)
    # Keep pytest's log capture: alembic's fileConfig would replace the handlers.
    config.attributes["configure_logger"] = False
    return config


async def migrate(url: str, revision: str = "head", *, down: bool = False) -> None:
    # env.py runs its own event loop, so Alembic runs in a worker thread.
    action = command.downgrade if down else command.upgrade
    await asyncio.to_thread(action, alembic_config(url), revision)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Broker:
    """A private Mosquitto for one test run: its own port, config and persistence directory,
    so tests can stop and restart it without touching the machine's broker."""

    def __init__(self, directory: Path) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.directory = directory
        self.process: asyncio.subprocess.Process | None = None
        # The same tuning the shipped config has (between its marker lines).
        shipped = (ROOT / "scripts" / "mosquitto.conf").read_text()
        tuning = shipped.split(">>> plantpulse tuning >>>")[1].split("# <<<")[0]
        (directory / "mosquitto.conf").write_text(
            f"listener {self.port} {self.host}\n"
            # Run as whoever runs the tests: as root, Mosquitto would otherwise switch to the
            # `mosquitto` user, which cannot write its persistence file into our temp directory.
            f"user {getpass.getuser()}\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {directory}/\n"
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n"
            f"{tuning}\n"
        )

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            "mosquitto",
            "-c",
            str(self.directory / "mosquitto.conf"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(10):
            while True:
                try:
                    _, writer = await asyncio.open_connection(self.host, self.port)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                writer.close()
                await writer.wait_closed()
                return

    async def stop(self) -> None:
        """Stop cleanly (SIGTERM): Mosquitto writes its persistence file on the way out."""
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()
        self.process = None

    async def kill(self) -> None:
        """Crash (SIGKILL): nothing is written on the way out, only what autosave wrote before
        survives."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self.process = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()


def _admin_dsn() -> str:
    return dsn(SERVER_URL)


@asynccontextmanager
async def database_cut(url: str) -> AsyncIterator[None]:
    """A real outage of one test database (never another): it stops accepting connections and
    its backends are terminated, as in a failover or a restart; connections are allowed again
    on exit. Pools that hold its connections find them dead."""
    name = make_url(url).database
    assert name is not None
    assert name.startswith(f"pptest_{RUN_ID}_"), name
    admin = await asyncpg.connect(_admin_dsn())
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            # pg_terminate_backend only signals: repeat until no backend is left.
            async with asyncio.timeout(10):
                while True:
                    left = await admin.fetchval(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE datname = $1 AND pid <> pg_backend_pid()",
                        name,
                    )
                    if not left:
                        break
                    await asyncio.sleep(0.02)
            yield
        finally:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    finally:
        await admin.close()
