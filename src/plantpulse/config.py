"""One Settings object for the whole service, read from `PLANTPULSE_*` variables and `.env`.

Nested areas use `__` in variable names: `PLANTPULSE_DATABASE__URL`, `PLANTPULSE_MQTT__HOST`.
"""

from __future__ import annotations

from functools import cached_property
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The value shipped in .env.example; accepted only in development so nobody runs production on it.
EXAMPLE_JWT_SECRET = "change-me-development-only-secret"  # noqa: S105


class DatabaseSettings(BaseModel):
    url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/plantpulse"
    pool_size: int = Field(default=10, ge=1, le=200)
    max_overflow: int = Field(default=10, ge=0, le=200)
    echo: bool = False

    @cached_property
    def asyncpg_dsn(self) -> str:
        """The URL without SQLAlchemy's driver suffix, for raw asyncpg connections."""
        return self.url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _empty_is_none(value: object) -> object:
    # `PLANTPULSE_X=` in .env means "not set", not "the empty string".
    return None if value == "" else value


class RedisSettings(BaseModel):
    # Empty means "no Redis": revocations and fan-out stay in this process.
    url: str | None = "redis://127.0.0.1:6379/0"
    key_prefix: str = "plantpulse:"

    _url = field_validator("url", mode="before")(_empty_is_none)


class AuthSettings(BaseModel):
    jwt_secret: SecretStr = SecretStr(EXAMPLE_JWT_SECRET)
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    access_token_minutes: int = Field(default=30, ge=1, le=24 * 60)
    refresh_token_days: int = Field(default=7, ge=1, le=365)
    allow_self_registration: bool = True
    # How long a verified access token is remembered in a process (auth/principals.py): it is
    # forgotten everywhere at once on logout and on any change to its user, through Redis;
    # 0 turns the cache off. Without Redis there is no cache.
    principal_cache_seconds: float = Field(default=10.0, ge=0, le=300)


class MqttSettings(BaseModel):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    # Fixed so the broker keeps our persistent session (and queued QoS 1 messages) across restarts.
    client_id: str = "plantpulse-ingest"
    topic_prefix: str = "plantpulse"
    # Set to subscribe through `$share/<group>/...` so several processes split the stream.
    shared_group: str | None = None
    session_expiry_seconds: int = Field(default=7 * 24 * 3600, ge=0)
    keepalive_seconds: int = Field(default=30, ge=5, le=3600)
    reconnect_max_seconds: float = Field(default=30.0, gt=0)
    # "3.1.1" decodes each message ~25% faster in paho (no MQTT 5 properties to parse); the
    # session then expires by the broker's persistent_client_expiration (docs/ingest.md).
    protocol: Literal["3.1.1", "5"] = "5"
    # MQTT 5 Receive Maximum: QoS 1 messages the broker may send us before we acknowledge
    # (we acknowledge after the commit, so this bounds a batch; docs/ingest.md).
    receive_maximum: int = Field(default=10_000, ge=1, le=65_535)
    # Time allowed at shutdown to flush and acknowledge what was received.
    shutdown_timeout_seconds: float = Field(default=10.0, gt=0)

    _optional = field_validator("username", "password", "shared_group", mode="before")(
        _empty_is_none
    )


class IngestSettings(BaseModel):
    """Limits and batching shared by HTTP and MQTT ingest."""

    max_payload_bytes: int = Field(default=1_048_576, ge=1024)
    max_readings_per_request: int = Field(default=10_000, ge=1)
    # Readings stamped further than this into the future are rejected (clock skew allowance).
    future_skew_seconds: float = Field(default=300.0, ge=0)
    # Unknown machine ids are rejected unless this is on; then they are registered on sight.
    auto_register_machines: bool = False
    # The MQTT writer flushes when either limit is reached (defaults from docs/ingest.md).
    batch_max_readings: int = Field(default=5_000, ge=1)
    batch_max_delay_ms: int = Field(default=50, ge=1)
    # "idle": what finds the writer idle is written at once, and what arrives during a write
    # is batched for the next one (lowest latency; batches grow with the load, up to
    # batch_max_readings). "delay": also wait up to batch_max_delay_ms for a fuller batch
    # (fewer, larger transactions at low rates). Measured: docs/benchmarks.md (P5).
    flush_policy: Literal["idle", "delay"] = "idle"
    # Messages held between the MQTT callback and the writer; when full, we stop reading
    # from the broker (it keeps the rest) instead of dropping.
    queue_max_messages: int = Field(default=20_000, ge=10)
    # MQTT batches written at once (acknowledged in arrival order); also sizes the pool.
    writer_connections: int = Field(default=2, ge=1, le=32)
    # /ready reports MQTT ingest `degraded` when messages have waited this long and nothing
    # was committed meanwhile (a database outage, a stuck writer).
    stall_seconds: float = Field(default=30.0, gt=0)


class RealtimeSettings(BaseModel):
    """Live streams (WebSocket and SSE) and the event hub behind them."""

    # Committed batches waiting to become events; when full, live events are dropped (counted):
    # the readings are in the database, only the live view misses them.
    hub_queue_batches: int = Field(default=1_000, ge=1)
    # Events buffered per connection; a client that falls this far behind is told and closed.
    # Above the writer's largest batch (one event per machine and timestamp), so one big
    # gateway batch cannot by itself overflow a client that reads at full speed.
    client_buffer_events: int = Field(default=10_000, ge=1)
    # How often an open stream re-checks its token (revoked, expired, user deactivated).
    auth_recheck_seconds: float = Field(default=30.0, gt=0)
    # How long a socket may stay unauthenticated waiting for {"action": "auth"}.
    auth_timeout_seconds: float = Field(default=10.0, gt=0)
    sse_keepalive_seconds: float = Field(default=15.0, gt=0)
    # WebSocket permessage-deflate (`plantpulse serve`): off by default, because every
    # connection compresses every event on the event loop that also ingests (measured in
    # docs/benchmarks.md, P5); turn it on for clients on slow links.
    ws_per_message_deflate: bool = False


class AlertSettings(BaseModel):
    # Committed batches waiting for the evaluator; when full, the batch is dropped for alerting
    # (counted and logged), never for storage.
    queue_batches: int = Field(default=1_000, ge=1)
    no_data_check_seconds: float = Field(default=5.0, gt=0)
    # Rules and group membership are re-read this often (other processes' changes included).
    refresh_seconds: float = Field(default=30.0, gt=0)


class SysconfigSettings(BaseModel):
    # Without Redis, other processes' config changes are picked up by re-reading this often.
    reload_seconds: float = Field(default=30.0, gt=0)
    # How often retention_days is applied (sysconfig/retention.py): old readings removed (Apache
    # edition, plain PostgreSQL) or TimescaleDB's policy reconciled (Community edition).
    retention_check_seconds: float = Field(default=3600.0, gt=0)


class SourcesSettings(BaseModel):
    """Pulling readings from external HTTP sources (src/plantpulse/sources)."""

    # Run the scheduler in this process (every process may: one polls a source at a time).
    poller_enabled: bool = True
    # How often the scheduler looks for due sources.
    tick_seconds: float = Field(default=1.0, gt=0)
    # Sources polled at the same time by one process.
    max_concurrent_polls: int = Field(default=4, ge=1, le=64)
    # A response body larger than this fails the run (read in chunks, never held beyond it).
    max_body_bytes: int = Field(default=4 * 1_048_576, ge=1024)
    max_redirects: int = Field(default=5, ge=0, le=20)
    # Failed runs push the next scheduled one back exponentially (with jitter) up to this.
    max_backoff_seconds: float = Field(default=3600.0, ge=1)
    # Runs kept per source (older ones are deleted as new ones are recorded).
    runs_kept: int = Field(default=200, ge=1)
    # Management users enter URLs: addresses that are not public (loopback, private,
    # link-local such as cloud metadata, ...) are refused after DNS resolution unless this is on.
    allow_private_networks: bool = False
    # Key for the source header values at rest (any string of 16+ characters). Empty: derived
    # from the JWT secret; changing that secret then makes stored header values unreadable.
    secret_key: SecretStr | None = None

    _optional = field_validator("secret_key", mode="before")(_empty_is_none)

    @field_validator("secret_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("PLANTPULSE_SOURCES__SECRET_KEY must be at least 16 characters")
        return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PLANTPULSE_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    env: Literal["development", "test", "production"] = "production"
    log_level: str = "INFO"
    # Set by `plantpulse serve --workers N` for its workers (plantpulse/workers.py).
    workers: int = Field(default=1, ge=1, le=64)
    database: DatabaseSettings = DatabaseSettings()
    redis: RedisSettings = RedisSettings()
    auth: AuthSettings = AuthSettings()
    mqtt: MqttSettings = MqttSettings()
    ingest: IngestSettings = IngestSettings()
    realtime: RealtimeSettings = RealtimeSettings()
    alerts: AlertSettings = AlertSettings()
    sysconfig: SysconfigSettings = SysconfigSettings()
    sources: SourcesSettings = SourcesSettings()

    @model_validator(mode="after")
    def _refuse_example_secret(self) -> Settings:
        secret = self.auth.jwt_secret.get_secret_value()
        if self.env != "development" and secret == EXAMPLE_JWT_SECRET:
            raise ValueError(
                "PLANTPULSE_AUTH__JWT_SECRET is the example value; set a real secret "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`) "
                "or set PLANTPULSE_ENV=development for local use"
            )
        if len(secret) < 16:
            raise ValueError("PLANTPULSE_AUTH__JWT_SECRET must be at least 16 characters")
        return self


class AdminSettings(BaseModel):
    """The first management account, created by `plantpulse create-admin --if-missing`."""

    username: str = "admin"
    email: str = "admin@plantpulse.local"
    # Empty: a password is generated and printed once.
    password: SecretStr | None = None


class BootstrapSettings(BaseSettings):
    """The part migrations and `create-admin` need: no JWT secret or broker required."""

    model_config = SettingsConfigDict(
        env_prefix="PLANTPULSE_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    database: DatabaseSettings = DatabaseSettings()
    admin: AdminSettings = AdminSettings()


def database_settings() -> DatabaseSettings:
    return BootstrapSettings().database
