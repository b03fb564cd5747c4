"""Helpers every benchmark shares: database URLs and databases, an admin token, the machine.

Benchmarks import from here, never each other's private helpers.
"""

from __future__ import annotations

import contextlib
import os
import platform
import secrets
import subprocess
from importlib import metadata
from pathlib import Path

import asyncpg

from plantpulse.config import AuthSettings, DatabaseSettings


def dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def create_db(server_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_db(server_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def admin_token(database: DatabaseSettings, auth: AuthSettings) -> str:
    from plantpulse.auth import service
    from plantpulse.auth.permissions import Role
    from plantpulse.auth.schemas import UserCreate
    from plantpulse.db import make_engine, make_sessionmaker

    engine = make_engine(database)
    try:
        async with make_sessionmaker(engine)() as session, session.begin():
            user = await service.create_user(
                session,
                data=UserCreate(
                    username="bench", email="bench@example.com", password=secrets.token_hex(16)
                ),
                role=Role.management,
            )
        return service.issue_tokens(auth, user=user).access_token
    finally:
        await engine.dispose()


def machine_info(pg_version: str, ts_version: str | None) -> list[str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mosquitto = subprocess.run(
        ["mosquitto", "-h"],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    return [
        f"- {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}, aiomqtt {metadata.version('aiomqtt')}, "
        f"paho-mqtt {metadata.version('paho-mqtt')}, asyncpg {metadata.version('asyncpg')}",
        f"- {pg_version.split(' on ')[0]}, TimescaleDB {ts_version or 'not installed'}",
        f"- {mosquitto[0] if mosquitto else 'mosquitto'} (private, scripts/mosquitto.conf tuning)",
        "- broker, database, service and load generators all on this one machine",
    ]
