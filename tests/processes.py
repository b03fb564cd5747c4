"""Real `plantpulse serve` processes (and a private Redis) for tests that must prove what
happens across processes: each server is its own interpreter, sharing only the database,
Redis and the broker, as in production."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import httpx
from pydantic import SecretStr

from plantpulse.auth import service as auth
from plantpulse.auth.models import User
from plantpulse.config import AuthSettings
from tests import support


class Server:
    """`plantpulse serve` on a free port, with `extra_args` (e.g. `--workers 2`)."""

    def __init__(self, env: dict[str, str], *extra_args: str) -> None:
        self.port = support.free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._env = env
        self._args = extra_args
        self.log = Path(tempfile.mkstemp(prefix="plantpulse-serve-", suffix=".log")[1])
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "plantpulse.cli",
                "serve",
                "--port",
                str(self.port),
                *self._args,
                env=self._env,
                stdout=log,
                stderr=log,
            )
        async with asyncio.timeout(60), httpx.AsyncClient() as client:
            while True:
                if self.process.returncode is not None:
                    raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
                try:
                    if (await client.get(f"{self.base_url}/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                async with asyncio.timeout(30):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        self.process = None
        self.log.unlink(missing_ok=True)


def server_env(database_url: str, redis_url: str | None, **extra: str) -> dict[str, str]:
    """The environment of servers that must agree with each other (one JWT secret, one
    key prefix); the MQTT ingest is off unless `extra` turns it on."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PLANTPULSE_")}
    env.update(
        {
            "PLANTPULSE_ENV": "test",
            "PLANTPULSE_LOG_LEVEL": "WARNING",
            "PLANTPULSE_DATABASE__URL": database_url,
            "PLANTPULSE_REDIS__URL": redis_url or "",
            "PLANTPULSE_REDIS__KEY_PREFIX": f"pptest:{support.RUN_ID}:{uuid.uuid4().hex[:6]}:",
            "PLANTPULSE_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "PLANTPULSE_MQTT__ENABLED": "false",
        }
    )
    env.update(extra)
    return env


def token_for(env: dict[str, str], user: User) -> str:
    settings = AuthSettings(jwt_secret=SecretStr(env["PLANTPULSE_AUTH__JWT_SECRET"]))
    return auth.issue_tokens(settings, user=user).access_token


class PrivateRedis:
    """A redis-server of our own on a free port, so a test can stop it (the machine's Redis
    is never touched)."""

    def __init__(self) -> None:
        self.port = support.free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = Path(tempfile.mkdtemp(prefix="plantpulse-redis-"))
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(10):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                writer.close()
                await writer.wait_closed()
                return

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()
        self.process = None

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
