"""The hub's batch -> events path without sockets: what is built, for whom, and its JSON."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from plantpulse.config import RealtimeSettings
from plantpulse.realtime.events import dumps, reading_bodies
from plantpulse.realtime.hub import Hub, Subscriber
from plantpulse.telemetry.writer import StoredRow

T0 = datetime(2026, 11, 23, 12, 0, 0, 250000, tzinfo=UTC)
A = uuid.UUID("00000000-0000-4000-8000-00000000000a")
B = uuid.UUID("00000000-0000-4000-8000-00000000000b")


def _rows() -> list[StoredRow]:
    return [
        (T0, A, "temperature", 71.5, True),
        (T0, B, "temperature", 20.0, True),
        (T0, A, "pressure", 2.0, False),
        (T0 + timedelta(seconds=1), A, "temperature", 1e16, True),
    ]


def _hub() -> Hub:
    return Hub(RealtimeSettings(), redis=None, prefix="test:")


def _received(sub: Subscriber) -> list[dict[str, Any]]:
    events = []
    while not sub.queue.empty():
        _, text = sub.queue.get_nowait()
        events.append(json.loads(text))
    return events


class TestReadingEventJson:
    def test_one_event_per_machine_and_timestamp_with_utc_z_strings(self) -> None:
        decoded = json.loads(dumps(reading_bodies(_rows())))
        assert decoded == [
            {
                "type": "reading",
                "machine_id": str(A),
                "timestamp": "2026-11-23T12:00:00.250000Z",
                "metrics": {"temperature": 71.5, "pressure": 2.0},
                "valid": {"temperature": True, "pressure": False},
            },
            {
                "type": "reading",
                "machine_id": str(B),
                "timestamp": "2026-11-23T12:00:00.250000Z",
                "metrics": {"temperature": 20.0},
                "valid": {"temperature": True},
            },
            {
                "type": "reading",
                "machine_id": str(A),
                "timestamp": "2026-11-23T12:00:01.250000Z",
                "metrics": {"temperature": 1e16},
                "valid": {"temperature": True},
            },
        ]

    def test_a_timestamp_with_another_offset_is_sent_in_utc(self) -> None:
        plus_two = timezone(timedelta(hours=2))
        rows: list[StoredRow] = [(T0.astimezone(plus_two), A, "temperature", 1.0, True)]
        assert json.loads(dumps(reading_bodies(rows)))[0]["timestamp"] == (
            "2026-11-23T12:00:00.250000Z"
        )


class TestWhoGetsReadings:
    def test_nothing_is_built_without_subscriptions_or_redis(self) -> None:
        hub = _hub()
        hub.subscriber(include_invalid=True, include_alerts=False)  # connected, not subscribed
        hub.publish_readings(_rows())
        assert hub.published == 0

    def test_a_machine_subscriber_gets_only_its_machine(self) -> None:
        hub = _hub()
        sub = hub.subscriber(include_invalid=True, include_alerts=False)
        sub.subscribe([B])
        hub.publish_readings(_rows())
        assert [e["machine_id"] for e in _received(sub)] == [str(B)]

    def test_invalid_metrics_are_hidden_from_those_who_may_not_see_them(self) -> None:
        hub = _hub()
        sub = hub.subscriber(include_invalid=False, include_alerts=False)
        sub.subscribe_all()
        hub.publish_readings(_rows())
        assert [e["metrics"] for e in _received(sub)] == [
            {"temperature": 71.5},
            {"temperature": 20.0},
            {"temperature": 1e16},
        ]

    def test_events_from_another_process_reach_only_subscribers_of_their_machine(self) -> None:
        hub = _hub()
        one = hub.subscriber(include_invalid=True, include_alerts=False)
        one.subscribe([A])
        every = hub.subscriber(include_invalid=True, include_alerts=False)
        every.subscribe_all()
        hub._remote(json.loads(dumps(reading_bodies(_rows()))))
        assert [e["machine_id"] for e in _received(one)] == [str(A), str(A)]
        assert [e["machine_id"] for e in _received(every)] == [str(A), str(B), str(A)]
