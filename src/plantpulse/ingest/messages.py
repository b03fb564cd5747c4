"""A received MQTT message on its way through the pipeline, and the dead letter of one that
cannot be ingested in full (with every reason why)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from plantpulse.ingest import dead_letters
from plantpulse.ingest.decoders import Reason, StatusChange
from plantpulse.machines.connectivity import ConnectivityChange
from plantpulse.telemetry.payloads import Parsed, Row

SOURCE = "mqtt"


@dataclass(slots=True)
class Pending:
    """One received message between the callback and its acknowledgement."""

    mid: int
    qos: int
    generation: int
    topic: str
    payload: bytes
    arrived: float
    rows: list[Row]
    status: StatusChange | None
    # "<reason code>: <detail>" when the message (or part of it) is a dead letter.
    dead: str | None


def rejections(parsed: Parsed) -> str:
    shown = "; ".join(f"{r.where}: {r.reason}" for r in parsed.rejected[:5])
    more = f" (+{len(parsed.rejected) - 5} more)" if len(parsed.rejected) > 5 else ""
    total = len(parsed.rows) + len(parsed.rejected)
    return f"{Reason.rejected_values}: {len(parsed.rejected)} of {total} rejected: {shown}{more}"


def dead_letters_of(
    batch: list[Pending],
    unknown: frozenset[uuid.UUID],
    applied: Sequence[ConnectivityChange],
) -> list[dead_letters.DeadLetter]:
    """A dead letter per message that was not ingested in full, with every reason why."""
    updated = {change.machine_id for change in applied}
    letters: list[dead_letters.DeadLetter] = []
    for item in batch:
        reasons = [item.dead] if item.dead else []
        if unknown and item.rows:
            missing = sorted({str(r[1]) for r in item.rows if r[1] in unknown})
            if missing:
                reasons.append(
                    f"{Reason.unknown_machine}: not registered: {', '.join(missing[:5])}"
                )
        if item.status and item.status.machine_id not in updated:
            reasons.append(
                f"{Reason.unknown_machine}: machine {item.status.machine_id} is not registered"
            )
        if reasons:
            letters.append(
                dead_letters.DeadLetter(
                    received_at=datetime.fromtimestamp(item.arrived, UTC),
                    source=SOURCE,
                    topic=item.topic,
                    reason="; ".join(reasons),
                    payload=item.payload,
                )
            )
    return letters
