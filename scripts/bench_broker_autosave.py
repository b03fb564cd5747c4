"""What Mosquitto's autosave costs: QoS 1 throughput of private brokers that differ only in it.

Usage: .venv/bin/python scripts/bench_broker_autosave.py [--messages 200000] [--rounds 5]
           [--variant NAME=LINES ...]

Each variant is a private broker with persistence on, the shipped tuning of
scripts/mosquitto.conf with its `autosave_*` lines replaced by the variant's (`;` separates
lines), a fresh directory and port per run. Two workloads, both with `mosquitto_pub -l -q 1`
as the publisher and `mosquitto_sub -q 1 -c` (a persistent session, like the ingest service's)
as the subscriber, one ~60-byte JSON reading per message:

- online:  the subscriber is connected; time from the first publish to the last message
           received (msg/s).
- backlog: the subscriber's session is offline while all messages are published, so the broker
           queues them (what an ingest outage looks like); publish rate, then the drain rate
           once the subscriber reconnects. Autosave writes the whole database each time, so
           this is where its cost grows with the queue.

With `--save-cost 100000,1000000` it times instead how long one save takes (the broker does
nothing else meanwhile) with that many messages queued.

Rounds interleave the variants (rotating the order) because the machine is shared; the output
is the median per variant and workload, min-max, the number of saves the broker logged, and the
median of the same-round ratios to the first variant.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOPIC = "bench/autosave"
SUBSCRIBER = "bench-autosave-sub"
PUBLISHER_MESSAGES = 50_000
DEFAULT_VARIANTS = {
    "default-1800s": "",
    "interval-1s": "autosave_interval 1",
    "interval-5s": "autosave_interval 5",
    "changes-10000": "autosave_on_changes true;autosave_interval 10000",
}


def tuning_without_autosave() -> str:
    shipped = (ROOT / "scripts" / "mosquitto.conf").read_text()
    tuning = shipped.split(">>> plantpulse tuning >>>")[1].split("# <<<")[0]
    return "\n".join(
        line for line in tuning.splitlines() if not line.strip().startswith("autosave_")
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Broker:
    def __init__(self, variant: str) -> None:
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="plantpulse-autosave-"))
        self.log = self.directory / "mosquitto.log"
        (self.directory / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"user {getpass.getuser()}\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.directory}/\n"
            f"log_dest file {self.log}\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            f"{tuning_without_autosave()}\n" + variant.replace(";", "\n") + "\n"
        )
        self.process = subprocess.Popen(  # noqa: S603 - fixed arguments
            ["mosquitto", "-c", str(self.directory / "mosquitto.conf")],  # noqa: S607
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def saves(self) -> int:
        return self.log.read_text(errors="replace").count("Saving in-memory database")

    def close(self) -> None:
        # SIGKILL: a clean stop would write the database once more, outside the measurement.
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)


def _client(broker: Broker, tool: str, *args: str) -> list[str]:
    return [tool, "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-t", TOPIC, *args]


def create_session(broker: Broker) -> None:
    subprocess.run(  # noqa: S603
        _client(broker, "mosquitto_sub", "-c", "-i", SUBSCRIBER, "-E"),
        check=True,
        timeout=30,
        stdout=subprocess.DEVNULL,
    )


def subscriber(broker: Broker, count: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603
        _client(broker, "mosquitto_sub", "-c", "-i", SUBSCRIBER, "-C", str(count)),
        stdout=subprocess.DEVNULL,
    )


def publish(broker: Broker, chunks: list[Path]) -> None:
    """One `mosquitto_pub -l` per chunk file, in parallel. Mosquitto 2.0.11's
    `mosquitto_pub -l` quits early once it has sent more than 65,535 messages (its end-of-input
    check compares 16-bit message ids, which wrap), so no chunk is larger than
    PUBLISHER_MESSAGES."""
    processes = []
    for chunk in chunks:
        with chunk.open("rb") as stdin:
            processes.append(
                subprocess.Popen(  # noqa: S603
                    _client(broker, "mosquitto_pub", "-l"), stdin=stdin
                )
            )
    for process in processes:
        if process.wait(600) != 0:
            raise RuntimeError("mosquitto_pub failed")


@dataclass
class Result:
    online: list[float] = field(default_factory=list)
    publish: list[float] = field(default_factory=list)
    drain: list[float] = field(default_factory=list)
    saves: list[int] = field(default_factory=list)


def run_online(lines: str, payload: list[Path], count: int) -> tuple[float, int]:
    broker = Broker(lines)
    try:
        create_session(broker)
        sub = subscriber(broker, count)
        start = time.perf_counter()
        publish(broker, payload)
        sub.wait(600)
        return count / (time.perf_counter() - start), broker.saves()
    finally:
        broker.close()


def run_backlog(lines: str, payload: list[Path], count: int) -> tuple[float, float, int]:
    broker = Broker(lines)
    try:
        create_session(broker)
        start = time.perf_counter()
        publish(broker, payload)
        published = time.perf_counter()
        sub = subscriber(broker, count)
        sub.wait(600)
        done = time.perf_counter()
        return count / (published - start), count / (done - published), broker.saves()
    finally:
        broker.close()


def save_seconds(queued: int, chunks: list[Path], saves: int = 3) -> list[float]:
    """How long the broker spends writing its database with `queued` messages in an offline
    session's queue: the lifetime of `mosquitto.db.new`, which each save writes and then
    renames over `mosquitto.db`, watched at 1 ms over `saves` autosaves."""
    broker = Broker("autosave_interval 1")
    new = broker.directory / "mosquitto.db.new"
    try:
        create_session(broker)
        publish(broker, chunks)
        durations: list[float] = []
        deadline = time.monotonic() + 120
        while len(durations) < saves and time.monotonic() < deadline:
            while not new.exists() and time.monotonic() < deadline:
                time.sleep(0.001)
            began = time.perf_counter()
            while new.exists():
                time.sleep(0.001)
            durations.append(time.perf_counter() - began)
        size = (broker.directory / "mosquitto.db").stat().st_size
        print(
            f"{queued:>9,} queued: save {statistics.median(durations):.3f} s "
            f"(of {', '.join(f'{d:.3f}' for d in durations)}), file {size / 1e6:.0f} MB",
            flush=True,
        )
        return durations
    finally:
        broker.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--variant",
        action="append",
        metavar="NAME=LINES",
        help="replace the default variants (the first is the ratios' reference)",
    )
    parser.add_argument(
        "--save-cost",
        metavar="N,N,...",
        help="instead: time one save of the database with N messages queued",
    )
    args = parser.parse_args()
    variants = (
        dict(v.split("=", 1) for v in args.variant) if args.variant else dict(DEFAULT_VARIANTS)
    )
    lines = [
        json.dumps({"timestamp": 1767607200000 + i, "temperature": i % 90, "speed": i}).encode()
        + b"\n"
        for i in range(args.messages)
    ]
    chunks_dir = Path(tempfile.mkdtemp(prefix="plantpulse-autosave-load-"))
    payload = []
    for i in range(0, len(lines), PUBLISHER_MESSAGES):
        chunk = chunks_dir / f"{i}.jsonl"
        chunk.write_bytes(b"".join(lines[i : i + PUBLISHER_MESSAGES]))
        payload.append(chunk)
    version = subprocess.run(
        ["mosquitto", "-h"],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()[0]
    print(
        f"{os.cpu_count()} cores, {platform.python_version()}, {version}; "
        f"{args.messages} messages of ~{sum(map(len, lines)) // args.messages} bytes from "
        f"{len(payload)} publishers, "
        f"{args.rounds} rounds; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    if args.save_cost:
        for queued in (int(n) for n in args.save_cost.split(",")):
            save_seconds(queued, payload[: -(-queued // PUBLISHER_MESSAGES)])
        shutil.rmtree(chunks_dir, ignore_errors=True)
        return
    names = list(variants)
    results = {name: Result() for name in names}
    for round_ in range(args.rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            online, saves_online = run_online(variants[name], payload, args.messages)
            rate_in, rate_out, saves_backlog = run_backlog(variants[name], payload, args.messages)
            result = results[name]
            result.online.append(online)
            result.publish.append(rate_in)
            result.drain.append(rate_out)
            result.saves.append(saves_online + saves_backlog)
            print(
                f"round {round_ + 1} {name:>16}: online {online:8.0f}  backlog publish "
                f"{rate_in:8.0f}  drain {rate_out:8.0f} msg/s  saves {saves_online}+"
                f"{saves_backlog}",
                flush=True,
            )
    reference = results[names[0]]
    print(f"\nmedian msg/s (min-max), ratio = median of same-round ratios to {names[0]}")
    for name in names:
        result = results[name]
        cells = []
        for label, values, base in (
            ("online", result.online, reference.online),
            ("backlog publish", result.publish, reference.publish),
            ("drain", result.drain, reference.drain),
        ):
            ratio = statistics.median(v / b for v, b in zip(values, base, strict=True))
            cells.append(
                f"{label} {statistics.median(values):,.0f} ({min(values):,.0f}-"
                f"{max(values):,.0f}) x{ratio:.2f}"
            )
        print(f"{name:>16}: " + "; ".join(cells) + f"; saves/run {statistics.median(result.saves)}")
    shutil.rmtree(chunks_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
