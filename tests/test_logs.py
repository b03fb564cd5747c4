"""What `plantpulse serve` writes to its log: never a credential from a query string."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from plantpulse.auth.permissions import Role
from plantpulse.logs import REDACTED, RedactSecrets, redact
from tests import support
from tests.conftest import PASSWORD, UserFactory
from tests.ingest.conftest import eventually


class TestRedact:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("/api/v1/ws?token=abc.def-ghi", f"/api/v1/ws?token={REDACTED}"),
            (
                "/api/v1/stream?machine_ids=a,b&token=abc&x=1",
                f"/api/v1/stream?machine_ids=a,b&token={REDACTED}&x=1",
            ),
            ("http://h/p?Access_Token=abc#frag", f"http://h/p?Access_Token={REDACTED}#frag"),
            ('"GET /p?api_key=abc HTTP/1.1"', f'"GET /p?api_key={REDACTED} HTTP/1.1"'),
            # Only whole parameter names: these are not credentials.
            ("/p?tokens=1&mytoken=2", "/p?tokens=1&mytoken=2"),
            ("token=abc in prose", "token=abc in prose"),
        ],
    )
    def test_credential_parameters_are_replaced(self, text: str, expected: str) -> None:
        assert redact(text) == expected

    def test_a_record_keeps_its_argument_positions(self) -> None:
        url = httpx.URL("http://h/api/v1/stream?token=abc")
        record = logging.LogRecord(
            "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d %s', None, None
        )
        args: tuple[object, ...] = ("127.0.0.1:5", "GET", "/api/v1/ws?token=abc", "1.1", 200, url)
        record.args = args
        assert RedactSecrets().filter(record)
        assert record.args == (
            "127.0.0.1:5",
            "GET",
            f"/api/v1/ws?token={REDACTED}",
            "1.1",
            200,
            f"http://h/api/v1/stream?token={REDACTED}",
        )


@pytest.fixture
async def served(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """`plantpulse serve` as a child process (its real logging setup); yields its base URL
    and the file its stdout and stderr go to. MQTT is off: this is about the HTTP side."""
    port = support.free_port()
    logs = tmp_path / "serve.log"
    env = {
        **os.environ,
        "PLANTPULSE_ENV": "test",
        "PLANTPULSE_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "PLANTPULSE_DATABASE__URL": database_url,
        "PLANTPULSE_REDIS__URL": support.REDIS_URL,
        "PLANTPULSE_REDIS__KEY_PREFIX": f"pptest:{support.RUN_ID}:{uuid.uuid4().hex[:6]}:",
        "PLANTPULSE_MQTT__ENABLED": "false",
    }
    with logs.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "plantpulse.cli", "serve", "--port", str(port),
            env=env, cwd=tmp_path, stdout=sink, stderr=sink,
        )  # fmt: skip
    base = f"127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=f"http://{base}") as client:

            async def healthy() -> bool:
                try:
                    return (await client.get("/health")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(healthy, within=30, every=0.1)
        yield base, logs
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()


class TestAccessLog:
    async def test_stream_and_websocket_tokens_never_reach_the_log(
        self, served: tuple[str, Path], committed_user: UserFactory
    ) -> None:
        """Issue 8, item 9: uvicorn logged `?token=<the full access token>`."""
        base, logs = served
        user = await committed_user(Role.operator)
        async with httpx.AsyncClient(base_url=f"http://{base}") as client:
            login = await client.post(
                "/api/v1/auth/login", json={"username": user.username, "password": PASSWORD}
            )
            assert login.status_code == 200, login.text
            token = login.json()["access_token"]
            async with client.stream("GET", "/api/v1/stream", params={"token": token}) as sse:
                assert sse.status_code == 200
            refused = await client.get("/api/v1/stream?token=forged-SECRET-value")
            assert refused.status_code == 401
        async with connect(f"ws://{base}/api/v1/ws?token={token}") as websocket:
            welcome = json.loads(await websocket.recv())
            assert welcome["type"] == "welcome"

        async def logged() -> bool:
            return "WebSocket /api/v1/ws" in logs.read_text()

        await eventually(logged, within=10)
        text = logs.read_text()
        assert token not in text
        assert token.split(".")[2] not in text  # not even the signature
        assert "forged-SECRET-value" not in text
        assert f'"GET /api/v1/stream?token={REDACTED} HTTP/1.1" 200' in text
        assert f'"GET /api/v1/stream?token={REDACTED} HTTP/1.1" 401' in text
        assert f'"WebSocket /api/v1/ws?token={REDACTED}" [accepted]' in text
