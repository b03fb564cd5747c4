"""Rule judgement on scripted series (pure: no database)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from plantpulse.alerts.models import Condition, RuleKind, RuleScope, Severity
from plantpulse.alerts.rules import RuleSpec, RuleState, Step, step

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def rule(**fields: Any) -> RuleSpec:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "name": "r",
        "kind": RuleKind.threshold,
        "scope": RuleScope.fleet,
        "machine_id": None,
        "group_id": None,
        "metric": "temp",
        "condition": Condition.gt,
        "threshold": 85.0,
        "threshold_low": None,
        "threshold_high": None,
        "severity": Severity.warning,
        "duration_seconds": 0.0,
        "hysteresis": 0.0,
        "no_data_seconds": None,
    }
    values.update(fields)
    return RuleSpec(**values)


def run(spec: RuleSpec, series: Sequence[tuple[float, float]]) -> list[Step | None]:
    """Feed (seconds after T0, value) pairs; what each reading changed."""
    state = RuleState()
    return [step(spec, state, T0 + timedelta(seconds=s), v) for s, v in series]


R, C, P, X = Step.raise_, Step.clear, Step.pending, Step.reset


class TestHysteresis:
    def test_a_value_hovering_at_the_threshold_does_not_flap(self) -> None:
        spec = rule(threshold=85.0, hysteresis=5.0)
        values = [80, 86, 84, 85.5, 84.9, 80.1, 80, 79, 86]
        assert run(spec, list(enumerate(values))) == [
            None, R, None, None, None, None, C, None, R,
        ]  # fmt: skip

    def test_without_hysteresis_it_clears_as_soon_as_the_condition_is_false(self) -> None:
        assert run(rule(threshold=85.0), [(0, 86), (1, 85), (2, 86)]) == [R, C, R]

    @pytest.mark.parametrize(
        ("condition", "series", "expected"),
        [
            (Condition.gt, [85, 85.1, 82.1, 82], [None, R, None, C]),
            (Condition.ge, [84.9, 85, 82, 81.9], [None, R, None, C]),
            (Condition.lt, [85, 84.9, 87.9, 88], [None, R, None, C]),
            (Condition.le, [85.1, 85, 88, 88.1], [None, R, None, C]),
        ],
    )
    def test_boundaries_of_each_condition(
        self, condition: Condition, series: list[float], expected: list[Step | None]
    ) -> None:
        spec = rule(condition=condition, threshold=85.0, hysteresis=3.0)
        assert run(spec, list(enumerate(series))) == expected

    def test_outside_a_range_with_a_deadband(self) -> None:
        spec = rule(
            condition=Condition.outside,
            threshold=None,
            threshold_low=10.0,
            threshold_high=20.0,
            hysteresis=1.0,
        )
        series = [15, 9.9, 10.5, 11, 20, 20.1, 19.5, 19, 5]
        assert run(spec, list(enumerate(series))) == [
            None, R, None, C, None, R, None, C, R,
        ]  # fmt: skip


class TestDuration:
    def test_the_condition_must_hold_for_the_duration_in_event_time(self) -> None:
        spec = rule(threshold=85.0, duration_seconds=30)
        series = [(0, 86), (10, 87), (20, 84), (30, 86), (59, 90), (60, 90), (61, 91), (70, 80)]
        assert run(spec, series) == [P, None, X, P, None, R, None, C]

    def test_sparse_readings_raise_on_the_first_one_past_the_duration(self) -> None:
        spec = rule(threshold=85.0, duration_seconds=30)
        assert run(spec, [(0, 86), (120, 86)]) == [P, R]


class TestLateReadings:
    def test_readings_older_than_the_last_judged_are_ignored(self) -> None:
        spec = rule(threshold=85.0)
        assert run(spec, [(10, 86), (5, 10), (11, 10)]) == [R, None, C]


class TestMessages:
    def test_describe_says_what_was_seen(self) -> None:
        assert rule(duration_seconds=30).describe(87.5) == "temp = 87.5 > 85 for 30 s"
        outside = rule(condition=Condition.outside, threshold_low=1, threshold_high=2)
        assert outside.describe(3) == "temp = 3 outside [1, 2]"
