"""`plantpulse serve | migrate | create-admin | simulate | bench` — the one command-line entry
point. Benchmark modules are imported only for `plantpulse bench ...`."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from plantpulse import __version__

# Modules under plantpulse/bench/ that provide `register(subparsers)`.
BENCHMARKS: list[str] = ["ingest", "query", "e2e", "api", "rollups"]


def _fail(message: str) -> int:
    print(f"plantpulse: {message}", file=sys.stderr)
    return 2


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _load_settings() -> object:
    from plantpulse.config import Settings

    return Settings()


def _alembic_config(url: str | None = None) -> object:
    from alembic.config import Config

    here = Path(__file__).resolve()
    for candidate in (Path.cwd() / "alembic.ini", here.parents[2] / "alembic.ini"):
        if candidate.is_file():
            config = Config(str(candidate))
            if url:
                config.set_main_option("sqlalchemy.url", url)
            return config
    raise FileNotFoundError("alembic.ini not found (run from the project directory)")


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from plantpulse.logs import log_config

    try:
        settings = _load_settings()
    except ValidationError as exc:
        return _fail(f"invalid settings:\n{exc}")
    if args.workers > 1 and not getattr(getattr(settings, "redis", None), "url", None):
        return _fail(
            f"--workers {args.workers} needs Redis (PLANTPULSE_REDIS__URL): without it token "
            "revocations, the principal cache and live events would stay inside each worker"
        )
    # Read by every worker's Settings (plantpulse/workers.py: slots, shared subscription);
    # set even for 1, so a PLANTPULSE_WORKERS in .env cannot disagree with the flag.
    os.environ["PLANTPULSE_WORKERS"] = str(args.workers)
    log_level = str(getattr(settings, "log_level", "INFO")).upper()
    realtime = getattr(settings, "realtime", None)
    uvicorn.run(
        "plantpulse.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        root_path=args.root_path,
        proxy_headers=args.proxy_headers,
        forwarded_allow_ips=args.forwarded_allow_ips,
        timeout_keep_alive=args.timeout_keep_alive,
        log_level=log_level.lower(),
        log_config=log_config(log_level),
        ws_per_message_deflate=bool(getattr(realtime, "ws_per_message_deflate", False)),
        # Give the ingest task time to flush and acknowledge what it holds.
        timeout_graceful_shutdown=args.graceful_timeout,
    )
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from alembic import command

    try:
        config = _alembic_config()
    except FileNotFoundError as exc:
        return _fail(str(exc))
    if args.action == "upgrade":
        print(f"==> migrating database to {args.revision}")
        command.upgrade(config, args.revision)  # type: ignore[arg-type]
    elif args.action == "downgrade":
        print(f"==> downgrading database to {args.revision}")
        command.downgrade(config, args.revision)  # type: ignore[arg-type]
    else:
        command.current(config, verbose=True)  # type: ignore[arg-type]
    return 0


async def _create_admin(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from plantpulse.auth import service
    from plantpulse.auth.models import User
    from plantpulse.auth.permissions import Role
    from plantpulse.auth.schemas import UserCreate
    from plantpulse.config import BootstrapSettings
    from plantpulse.db import make_engine, make_sessionmaker

    bootstrap = BootstrapSettings()
    username = args.username or bootstrap.admin.username
    email = args.email or bootstrap.admin.email
    configured = bootstrap.admin.password.get_secret_value() if bootstrap.admin.password else ""
    engine = make_engine(bootstrap.database)
    try:
        async with make_sessionmaker(engine)() as session, session.begin():
            if args.if_missing:
                existing = await session.scalar(
                    select(User.username).where(
                        User.role == Role.management,
                        User.is_active.is_(True),
                        User.deleted_at.is_(None),
                    )
                )
                if existing is not None:
                    print(f"==> a management account exists ({existing}); nothing to do")
                    return 0
            given = args.password or configured
            password = given or secrets.token_urlsafe(12)
            try:
                data = UserCreate(username=username, email=email, password=password)
            except ValidationError as exc:
                return _fail(f"invalid account details:\n{exc}")
            try:
                user = await service.create_user(session, data=data, role=Role.management)
            except service.UserExists as exc:
                return _fail(exc.detail)
        print(f"==> created management account {user.username} <{user.email}>")
        if not given:
            # Printed once and never stored in clear: the operator must note it now.
            print(f"    password (shown once, change it after logging in): {password}")
        return 0
    finally:
        await engine.dispose()


def cmd_create_admin(args: argparse.Namespace) -> int:
    return asyncio.run(_create_admin(args))


def cmd_simulate(args: argparse.Namespace) -> int:
    from plantpulse.ingest import simulate

    try:
        return simulate.run(args)
    except ValidationError as exc:
        return _fail(f"invalid settings:\n{exc}")
    except (OSError, RuntimeError) as exc:
        return _fail(str(exc))


def build_parser(*, benchmarks: bool = True) -> argparse.ArgumentParser:
    """The command line; `benchmarks=False` leaves the benchmark modules unimported (they are
    only needed by `plantpulse bench ...`, and `serve` should not load them)."""
    parser = argparse.ArgumentParser(
        prog="plantpulse",
        description="PlantPulse industrial telemetry service. Settings come from PLANTPULSE_* "
        "environment variables and .env (see .env.example).",
    )
    parser.add_argument("--version", action="version", version=f"plantpulse {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the API, MQTT ingest and background jobs")
    serve.add_argument(
        "--host",
        default=os.environ.get("PLANTPULSE_HOST", "127.0.0.1"),
        help="address to listen on (default: PLANTPULSE_HOST or 127.0.0.1)",
    )
    serve.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("PLANTPULSE_PORT", "8000")),
        help="port to listen on (default: PLANTPULSE_PORT or 8000)",
    )
    serve.add_argument(
        "--workers",
        type=_positive,
        default=int(os.environ.get("PLANTPULSE_WORKERS", "1")),
        help="identical processes sharing the port and the MQTT subscription (needs Redis "
        "when > 1; default: PLANTPULSE_WORKERS or 1)",
    )
    serve.add_argument(
        "--root-path",
        default=os.environ.get("PLANTPULSE_ROOT_PATH", ""),
        help="the path prefix a reverse proxy mounts the API under, e.g. /plantpulse",
    )
    serve.add_argument(
        "--proxy-headers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="trust X-Forwarded-For/-Proto from --forwarded-allow-ips (default: on)",
    )
    serve.add_argument(
        "--forwarded-allow-ips",
        default=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
        help="comma-separated proxy addresses (or *) whose forwarded headers are trusted "
        "(default: FORWARDED_ALLOW_IPS or 127.0.0.1)",
    )
    serve.add_argument(
        "--timeout-keep-alive",
        type=_positive,
        default=30,
        help="seconds an idle keep-alive connection stays open (default 30; uvicorn's 5 s "
        "raced with clients reusing connections: 0.04-0.07%% resets under load)",
    )
    serve.add_argument(
        "--graceful-timeout", type=int, default=15, help="seconds allowed for a clean shutdown"
    )
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="apply database migrations (Alembic)")
    migrate.add_argument(
        "action", nargs="?", default="upgrade", choices=["upgrade", "downgrade", "current"]
    )
    migrate.add_argument("revision", nargs="?", default="head", help="target revision")
    migrate.set_defaults(func=cmd_migrate)

    admin = sub.add_parser("create-admin", help="create a management (administrator) account")
    admin.add_argument("--username", help="default: PLANTPULSE_ADMIN__USERNAME or 'admin'")
    admin.add_argument("--email", help="default: PLANTPULSE_ADMIN__EMAIL")
    admin.add_argument(
        "--password",
        help="default: PLANTPULSE_ADMIN__PASSWORD, else a generated one printed once",
    )
    admin.add_argument(
        "--if-missing",
        action="store_true",
        help="do nothing when an active management account already exists",
    )
    admin.set_defaults(func=cmd_create_admin)

    from plantpulse.ingest.simulate import add_arguments

    simulate = sub.add_parser(
        "simulate",
        help="publish realistic machine telemetry to an MQTT broker (or --serve-source: serve "
        "it over HTTP for a source to pull)",
    )
    add_arguments(simulate)
    simulate.set_defaults(func=cmd_simulate)

    bench = sub.add_parser(
        "bench", help="measure throughput and latency (writes docs/benchmarks.md)"
    )
    if not benchmarks:
        bench.add_argument("benchmark", choices=BENCHMARKS, metavar="BENCHMARK")
        return parser
    benches = bench.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    # Each benchmark module adds its own subcommand: register(benches) -> sets func.
    for module in BENCHMARKS:
        importlib.import_module(f"plantpulse.bench.{module}").register(benches)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    commands = [word for word in words if not word.startswith("-")]
    args = build_parser(benchmarks=commands[:1] == ["bench"]).parse_args(words)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
