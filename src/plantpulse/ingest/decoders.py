"""Topic pattern -> decoder: how an MQTT message becomes readings or a status change.

The pipeline (pipeline.py) only knows `DecoderRegistry.decode`; a new wire format (Sparkplug B,
CBOR...) is a new decoder registered for its topic pattern, nothing else changes. Decoders run
in the message callback, so they must be fast and synchronous: parse and validate, never I/O.
Whether a machine exists is checked per batch by the writer, not here.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

import orjson

from plantpulse.machines.models import Connectivity
from plantpulse.telemetry import payloads
from plantpulse.telemetry.payloads import Clock, Parsed, PayloadError


class Reason(StrEnum):
    """Why a message became a dead letter; stored as the prefix of `dead_letters.reason`."""

    oversized = "oversized"
    bad_topic = "bad_topic"
    not_json = "not_json"
    invalid_payload = "invalid_payload"
    rejected_values = "rejected_values"
    unknown_machine = "unknown_machine"
    storage_error = "storage_error"


class DecodeError(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Telemetry:
    parsed: Parsed


@dataclass(frozen=True, slots=True)
class StatusChange:
    machine_id: uuid.UUID
    connectivity: Connectivity


Decoded = Telemetry | StatusChange
# (the `{name}` segments of the topic, payload, clock) -> what the message says
Decoder = Callable[[Mapping[str, str], bytes, Clock], Decoded]
# Topics remembered with their decoder and parameters: a fleet publishes on the same topics
# over and over. Forgotten all at once when full (a flood of one-off topics stays bounded).
TOPIC_CACHE_SIZE = 16384
MACHINE_ID_CACHE_SIZE = 16384


@dataclass(frozen=True, slots=True)
class _Route:
    segments: tuple[str, ...]
    decoder: Decoder


class DecoderRegistry:
    """Patterns are relative to the topic prefix: `machines/{machine_id}/telemetry`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.strip("/")
        self._skip = len(self.prefix.split("/"))
        self._routes: list[_Route] = []
        self._topics: dict[str, tuple[Decoder, Mapping[str, str]]] = {}

    def register(self, pattern: str, decoder: Decoder) -> None:
        self._routes.append(_Route(tuple(pattern.strip("/").split("/")), decoder))
        self._topics.clear()

    @property
    def subscription(self) -> str:
        # Everything under the prefix, so messages on unknown topics become dead letters
        # instead of vanishing unseen.
        return f"{self.prefix}/#"

    def decode(self, topic: str, payload: bytes, clock: Clock) -> Decoded:
        route = self._topics.get(topic)
        if route is None:
            route = self._route(topic)
            if len(self._topics) >= TOPIC_CACHE_SIZE:
                self._topics.clear()
            self._topics[topic] = route
        decoder, params = route
        return decoder(params, payload, clock)

    def _route(self, topic: str) -> tuple[Decoder, Mapping[str, str]]:
        parts = topic.split("/")[self._skip :]
        for route in self._routes:
            if len(route.segments) != len(parts):
                continue
            params: dict[str, str] = {}
            for expected, actual in zip(route.segments, parts, strict=True):
                if expected[:1] == "{":
                    params[expected[1:-1]] = actual
                elif expected != actual:
                    break
            else:
                return route.decoder, params
        raise DecodeError(Reason.bad_topic, f"no decoder for topic {topic[:200]!r}")


def _json(payload: bytes) -> object:
    # orjson is several times faster; what it refuses (NaN and Infinity literals, integers
    # beyond 64 bits, UTF-16/32 text, invalid JSON) goes to the standard parser, so the
    # outcome is the standard parser's: NaN is a rejected value, not a message that is not JSON.
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(Reason.not_json, f"not JSON: {str(exc)[:200]}") from None


def _machine_id(params: Mapping[str, str]) -> uuid.UUID:
    raw = params["machine_id"]
    try:
        return _uuid(raw)
    except ValueError:
        raise DecodeError(
            Reason.bad_topic, f"machine id {raw[:64]!r} in the topic is not a UUID"
        ) from None


@functools.lru_cache(maxsize=MACHINE_ID_CACHE_SIZE)
def _uuid(raw: str) -> uuid.UUID:
    return uuid.UUID(raw)


def json_telemetry(params: Mapping[str, str], payload: bytes, clock: Clock) -> Decoded:
    machine_id = _machine_id(params)
    try:
        return Telemetry(payloads.single_device(_json(payload), machine_id=machine_id, clock=clock))
    except PayloadError as exc:
        raise DecodeError(Reason.invalid_payload, str(exc)) from None


def json_gateway_batch(params: Mapping[str, str], payload: bytes, clock: Clock) -> Decoded:
    try:
        return Telemetry(payloads.gateway_batch(_json(payload), clock=clock))
    except PayloadError as exc:
        raise DecodeError(Reason.invalid_payload, str(exc)) from None


_STATUSES = {"online": Connectivity.online, "offline": Connectivity.offline}


def json_status(params: Mapping[str, str], payload: bytes, clock: Clock) -> Decoded:
    """`{"status": "online"|"offline"}`; a bare `online`/`offline` (common for Last-Will
    messages) is accepted too."""
    machine_id = _machine_id(params)
    bare = payload.strip().lower()
    if bare in (b"online", b"offline"):
        return StatusChange(machine_id, _STATUSES[bare.decode()])
    body = _json(payload)
    status = body.get("status") if isinstance(body, dict) else body
    if not isinstance(status, str) or status.lower() not in _STATUSES:
        raise DecodeError(
            Reason.invalid_payload, 'a status message is {"status": "online"} or "offline"'
        )
    return StatusChange(machine_id, _STATUSES[status.lower()])


def json_registry(prefix: str) -> DecoderRegistry:
    """The default: JSON on the three documented topics."""
    registry = DecoderRegistry(prefix)
    registry.register("machines/{machine_id}/telemetry", json_telemetry)
    registry.register("gateways/{gateway_id}/batch", json_gateway_batch)
    registry.register("machines/{machine_id}/status", json_status)
    return registry
