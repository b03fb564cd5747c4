"""The container deployment: docker-compose.yml and the Dockerfile read as files (there is no
Docker engine on the development machines), the start script run for real."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from plantpulse.config import EXAMPLE_JWT_SECRET, AuthSettings, Settings
from tests.support import ROOT

START = ROOT / "scripts" / "docker-start.sh"
SECRETS_DIR = "/var/lib/plantpulse"


def compose_app() -> dict[str, object]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    app: dict[str, object] = compose["services"]["app"]
    return app


class TestComposeApp:
    """Issue 8, item 8: compose ran the app in development mode, which accepts the public
    example JWT secret, on a published port: anyone could mint a management token."""

    def test_runs_in_production_mode_without_an_example_secret(self) -> None:
        env = compose_app()["environment"]
        assert isinstance(env, dict)
        assert env["PLANTPULSE_ENV"] == "production"
        # Only ever the caller's own value; when empty the start script generates one.
        assert env["PLANTPULSE_AUTH__JWT_SECRET"] == "${PLANTPULSE_AUTH__JWT_SECRET:-}"
        assert EXAMPLE_JWT_SECRET not in (ROOT / "docker-compose.yml").read_text()

    def test_starts_through_the_secret_script_with_the_secret_on_a_volume(self) -> None:
        app = compose_app()
        command = app["command"]
        assert isinstance(command, list)
        assert command[0] == "plantpulse-start"
        assert "exec plantpulse serve" in command[-1]
        assert f"app-secrets:{SECRETS_DIR}" in app["volumes"]  # type: ignore[operator]
        dockerfile = (ROOT / "Dockerfile").read_text()
        assert "COPY scripts/docker-start.sh /usr/local/bin/plantpulse-start" in dockerfile
        assert re.search(
            rf"install -d -o plantpulse -g plantpulse -m 700 {SECRETS_DIR}\b", dockerfile
        )
        # The image's user must own the directory before the first start writes into it.
        assert dockerfile.index(SECRETS_DIR) < dockerfile.index("USER plantpulse")


def start(secrets_dir: Path, secret: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the start script with a command that prints the secret it was handed."""
    env = {
        **os.environ,
        # The script's `python` is the project's, as in the image.
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PLANTPULSE_SECRETS_DIR": str(secrets_dir),
    }
    env.pop("PLANTPULSE_AUTH__JWT_SECRET", None)
    if secret is not None:
        env["PLANTPULSE_AUTH__JWT_SECRET"] = secret
    return subprocess.run(  # noqa: S603 - fixed arguments
        ["sh", str(START), "sh", "-c", 'printf %s "$PLANTPULSE_AUTH__JWT_SECRET"'],  # noqa: S607
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )


class TestStartScript:
    def test_generates_a_secret_once_and_keeps_it(self, tmp_path: Path) -> None:
        first = start(tmp_path).stdout
        assert len(first) >= 48
        assert first != EXAMPLE_JWT_SECRET
        stored = tmp_path / "jwt_secret"
        assert stored.read_text().strip() == first
        assert stat.S_IMODE(stored.stat().st_mode) == 0o600
        assert start(tmp_path).stdout == first
        # The service accepts it in production mode.
        Settings(_env_file=None, env="production", auth=AuthSettings(jwt_secret=SecretStr(first)))

    def test_an_own_secret_wins_and_nothing_is_written(self, tmp_path: Path) -> None:
        own = "a-secret-of-the-operators-own-choice"
        assert start(tmp_path, own).stdout == own
        assert not (tmp_path / "jwt_secret").exists()

    @pytest.mark.parametrize("secret", ["", EXAMPLE_JWT_SECRET])
    def test_empty_or_the_example_value_get_the_generated_secret(
        self, tmp_path: Path, secret: str
    ) -> None:
        result = start(tmp_path, secret)
        assert result.stdout == (tmp_path / "jwt_secret").read_text().strip()
        assert result.stdout != EXAMPLE_JWT_SECRET
