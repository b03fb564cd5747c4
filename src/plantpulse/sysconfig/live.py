"""Settings that may change while the service runs (`/api/v1/config`), with their defaults
from the environment. Readers take the current value on each use; nothing caches a copy."""

from __future__ import annotations

from dataclasses import dataclass

from plantpulse.config import Settings


@dataclass
class LiveConfig:
    future_skew_seconds: float
    auto_register_machines: bool
    # Readings older than this at arrival are stored but raise no live alerts.
    backfill_window_seconds: float = 3600.0
    # None keeps readings forever.
    retention_days: int | None = None
    # Rollups (telemetry/rollups.py): None keeps them forever.
    rollup_1m_retention_days: int | None = None
    rollup_1h_retention_days: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> LiveConfig:
        return cls(
            future_skew_seconds=settings.ingest.future_skew_seconds,
            auto_register_machines=settings.ingest.auto_register_machines,
        )
