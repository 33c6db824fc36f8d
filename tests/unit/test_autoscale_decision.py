"""The scaling decision: bounds, stabilization, cooldown, and never down on missing data."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from llama_operator.autoscale.decision import Policy, Recommendation, Sample, ScalingInput, decide_replicas

UP = Policy(stabilization_window_seconds=0, max_step=4, cooldown_seconds=0)
DOWN = Policy(stabilization_window_seconds=300, max_step=1, cooldown_seconds=60)
NOW = 10_000.0


def samples(*values: float, age: float = 1.0) -> list[Sample]:
    return [Sample(f"pod-{i}", v, NOW - age) for i, v in enumerate(values)]


def given_input(current: int, values: list[Sample] | None, **overrides: object) -> ScalingInput:
    fields: dict[str, object] = {
        "current_replicas": current,
        "ready_pods": current,
        "samples": values,
        "target_per_replica": 4.0,
        "min_replicas": 1,
        "max_replicas": 8,
        "scale_up": UP,
        "scale_down": DOWN,
        "now": NOW,
    }
    fields.update(overrides)
    return ScalingInput(**fields)  # type: ignore[arg-type]


def test_queue_above_target_scales_up() -> None:
    decision = decide_replicas(given_input(1, samples(13)))
    assert decision.desired == 4
    assert decision.action == "up"
    assert "metric 13" in decision.reason


def test_scale_up_is_limited_by_max_step_and_max_replicas() -> None:
    assert decide_replicas(given_input(1, samples(100))).desired == 5  # 1 + max_step 4
    assert decide_replicas(given_input(7, samples(*[100] * 7))).desired == 8


def test_no_scale_down_inside_the_window() -> None:
    history = [Recommendation(NOW - 100, 4)]
    decision = decide_replicas(given_input(4, samples(0, 0, 0, 0), history=history))
    assert decision.desired == 4
    assert decision.action == "hold"


def test_scale_down_after_the_window_one_step_at_a_time() -> None:
    history = [Recommendation(NOW - 400, 4)]  # outside the 300 s window
    decision = decide_replicas(given_input(4, samples(0, 0, 0, 0), history=history))
    assert decision.desired == 3
    assert decision.action == "down"


def test_cooldown_holds_a_scale_down() -> None:
    decision = decide_replicas(given_input(4, samples(0, 0, 0, 0), last_scale_time=NOW - 10))
    assert decision.desired == 4
    assert "cooldown" in decision.reason


def test_missing_stale_nan_and_partial_data_hold() -> None:
    cases = {
        "Prometheus did not answer": None,
        "no series": [],
        "NaN": samples(math.nan, 0),
        "old": samples(0, 0, age=600),
        "only 1 series for 2 ready pods": samples(0),
    }
    for why, values in cases.items():
        decision = decide_replicas(given_input(2, values))
        assert decision.desired == 2, why
        assert decision.action == "hold", why
        assert not decision.metrics_available, why
        assert why.split()[0] in decision.reason or "NaN" in decision.reason, decision.reason


def test_missing_data_lifts_to_min_but_never_lowers_to_max() -> None:
    assert decide_replicas(given_input(0, None, min_replicas=2)).desired == 2
    assert decide_replicas(given_input(9, None, max_replicas=4)).desired == 9


values = st.floats(min_value=0, max_value=500, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(
    current=st.integers(0, 20),
    metric=st.lists(values, min_size=0, max_size=20),
    low=st.integers(0, 5),
    span=st.integers(0, 10),
    history=st.lists(st.tuples(st.floats(0, 600), st.integers(0, 20)), max_size=10),
    stale=st.booleans(),
)
def test_never_outside_bounds_and_never_down_without_trusted_data(
    *, current: int, metric: list[float], low: int, span: int, history: list[tuple[float, int]], stale: bool
) -> None:
    high = max(low + span, 1)
    values_ = samples(*metric, age=600 if stale else 1)
    inp = given_input(
        current,
        values_,
        ready_pods=current,
        min_replicas=low,
        max_replicas=high,
        history=[Recommendation(NOW - age, r) for age, r in history],
    )
    decision = decide_replicas(inp)
    if decision.metrics_available:
        assert low <= decision.desired <= high
    else:
        assert decision.desired >= current, "missing data must never scale down"
        assert decision.desired >= low


@settings(max_examples=100, deadline=None)
@given(period=st.integers(2, 120), high=st.integers(10, 60))
def test_square_wave_shorter_than_the_window_does_not_flap(period: int, high: int) -> None:
    replicas, history, last_scale = 1, (), None
    changes: list[int] = []
    for second in range(0, 900, 5):
        now = NOW + second
        load = high if (second // period) % 2 == 0 else 0
        decision = decide_replicas(
            given_input(
                replicas,
                [Sample(f"p{i}", load / max(replicas, 1), now) for i in range(max(replicas, 1))],
                ready_pods=max(replicas, 1),
                now=now,
                history=history,
                last_scale_time=last_scale,
            )
        )
        if decision.desired != replicas:
            changes.append(decision.desired - replicas)
            last_scale = now
        replicas, history = decision.desired, decision.history
    downs = [c for c in changes if c < 0]
    # While the wave keeps coming back within the 300 s window, nothing scales down.
    if period * 2 < 300:
        assert downs == []
