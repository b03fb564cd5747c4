"""Messages that could not be ingested, kept with the reason so nothing is silently lost."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY

from plantpulse.db import Base

dead_letters = Table(
    "dead_letters",
    Base.metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("source", String(16), nullable=False),
    Column("topic", Text),
    Column("reason", Text, nullable=False),
    Column("payload_excerpt", Text),
    Column("payload_size", Integer, nullable=False, server_default="0"),
    Index("ix_dead_letters_received_at", "received_at"),
)

# QoS 1 packet ids whose message this client committed (ingest/redelivery.py): one row per
# batch, the ids and their 16-byte digests in the same order; deleted once stale.
mqtt_deliveries = Table(
    "mqtt_deliveries",
    Base.metadata,
    Column("client_id", Text, primary_key=True),
    Column("batch", BigInteger, primary_key=True),
    Column("packet_ids", ARRAY(Integer), nullable=False),
    Column("digests", LargeBinary, nullable=False),
    Column("committed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
