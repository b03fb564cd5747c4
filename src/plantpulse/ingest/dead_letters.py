"""Recording messages that could not be ingested (the write side; service.py lists them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from asyncpg.pool import PoolConnectionProxy

EXCERPT_BYTES = 1024
_COLUMNS = ("received_at", "source", "topic", "reason", "payload_excerpt", "payload_size")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    received_at: datetime
    source: str
    topic: str | None
    # "<code>: <detail>", the code from decoders.Reason, so it can be filtered on.
    reason: str
    payload: bytes


def excerpt(payload: bytes) -> str:
    # PostgreSQL text cannot hold NUL; binary payloads are shown replaced, not refused.
    text = payload[:EXCERPT_BYTES].decode("utf-8", "replace")
    return text.replace("\x00", "\ufffd")


async def record(
    conn: asyncpg.Connection | PoolConnectionProxy, letters: Sequence[DeadLetter]
) -> None:
    if not letters:
        return
    await conn.copy_records_to_table(
        "dead_letters",
        records=[
            (
                letter.received_at,
                letter.source,
                letter.topic,
                letter.reason[:2000],
                excerpt(letter.payload),
                len(letter.payload),
            )
            for letter in letters
        ],
        columns=_COLUMNS,
    )
