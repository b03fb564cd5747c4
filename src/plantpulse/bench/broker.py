"""A private Mosquitto for benchmarks: its own port and directory, the shipped tuning."""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

TUNING_START = ">>> plantpulse tuning >>>"
TUNING_END = "# <<<"


def _tuning() -> str:
    here = Path(__file__).resolve()
    for candidate in (Path.cwd() / "scripts", here.parents[3] / "scripts"):
        conf = candidate / "mosquitto.conf"
        if conf.is_file():
            return conf.read_text().split(TUNING_START)[1].split(TUNING_END)[0]
    raise FileNotFoundError("scripts/mosquitto.conf not found (run from the project directory)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class BenchBroker:
    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="plantpulse-bench-broker-"))
        (self.directory / "mosquitto.conf").write_text(
            f"listener {self.port} {self.host}\n"
            f"user {getpass.getuser()}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\n"
            f"{_tuning()}\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - fixed arguments
            ["mosquitto", "-c", str(self.directory / "mosquitto.conf")],  # noqa: S607
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the benchmark broker did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)
