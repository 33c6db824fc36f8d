"""Pure: queue metrics + history + bounds + policies + now -> desired replicas and why.

Safety first: missing, stale, NaN or partial data never scales down (it holds); scale-ups take the
smallest recommendation of the up window and scale-downs the largest of the down window, so a
square wave shorter than the down window cannot make the replica count flap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Action = Literal["up", "down", "hold"]


@dataclass(frozen=True)
class Sample:
    """One series of the engine's metric: one pod's value at a time (Unix seconds)."""

    pod: str
    value: float
    timestamp: float


@dataclass(frozen=True)
class Recommendation:
    at: float
    replicas: int


@dataclass(frozen=True)
class Policy:
    stabilization_window_seconds: float
    max_step: int
    cooldown_seconds: float


@dataclass(frozen=True)
class ScalingInput:
    current_replicas: int
    ready_pods: int
    samples: Sequence[Sample] | None  # None: Prometheus did not answer
    target_per_replica: float
    min_replicas: int
    max_replicas: int
    scale_up: Policy
    scale_down: Policy
    now: float
    history: Sequence[Recommendation] = ()
    last_scale_time: float | None = None
    max_sample_age_seconds: float = 60.0


@dataclass(frozen=True)
class ScalingDecision:
    desired: int
    action: Action
    reason: str
    metric: float | None  # the summed metric the decision used
    recommendation: int | None  # what the metric alone asks for, within bounds
    history: tuple[Recommendation, ...]  # to store for the next evaluation
    metrics_available: bool


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def _data_problem(inp: ScalingInput) -> str | None:
    """Why the samples cannot be trusted, or None."""
    if inp.samples is None:
        return "Prometheus did not answer"
    if not inp.samples:
        return "no series for this deployment's pods"
    if any(math.isnan(s.value) or math.isinf(s.value) for s in inp.samples):
        return "a series is NaN or infinite"
    oldest = min(s.timestamp for s in inp.samples)
    if inp.now - oldest > inp.max_sample_age_seconds:
        return f"the oldest sample is {inp.now - oldest:.0f}s old (limit {inp.max_sample_age_seconds:.0f}s)"
    pods = len({s.pod for s in inp.samples})
    if pods < inp.ready_pods:
        return f"only {pods} series for {inp.ready_pods} ready pods"
    return None


def _hold(inp: ScalingInput, desired: int, reason: str, metric: float | None, *, available: bool) -> ScalingDecision:
    action: Action = "up" if desired > inp.current_replicas else "down" if desired < inp.current_replicas else "hold"
    return ScalingDecision(desired, action, reason, metric, None, tuple(inp.history), available)


def decide_replicas(inp: ScalingInput) -> ScalingDecision:
    bounded_current = _clamp(inp.current_replicas, inp.min_replicas, inp.max_replicas)
    problem = _data_problem(inp)
    if problem is not None:
        # Without data nothing goes down, not even towards a lowered maxReplicas; only minReplicas lifts.
        held = max(inp.current_replicas, inp.min_replicas)
        return _hold(inp, held, f"holding at {held}: {problem}", None, available=False)

    assert inp.samples is not None
    total = sum(s.value for s in inp.samples)
    wanted = _clamp(math.ceil(total / inp.target_per_replica), inp.min_replicas, inp.max_replicas)
    window = max(inp.scale_up.stabilization_window_seconds, inp.scale_down.stabilization_window_seconds)
    history = (*(r for r in inp.history if inp.now - r.at <= window), Recommendation(inp.now, wanted))

    def within(seconds: float) -> list[int]:
        return [r.replicas for r in history if inp.now - r.at <= seconds]

    up_candidate = min(within(inp.scale_up.stabilization_window_seconds))
    down_candidate = max(within(inp.scale_down.stabilization_window_seconds))
    current = bounded_current
    metric_text = f"metric {total:g} for target {inp.target_per_replica:g} per replica"
    since_scale = math.inf if inp.last_scale_time is None else inp.now - inp.last_scale_time
    action: Action

    if up_candidate > current:
        if since_scale < inp.scale_up.cooldown_seconds:
            desired, action, why = (
                current,
                "hold",
                f"scale-up cooldown ({since_scale:.0f}s of {inp.scale_up.cooldown_seconds:g}s)",
            )
        else:
            desired = min(up_candidate, current + inp.scale_up.max_step)
            action, why = "up", f"{metric_text} asks for {up_candidate}"
    elif down_candidate < current:
        if since_scale < inp.scale_down.cooldown_seconds:
            desired, action, why = (
                current,
                "hold",
                f"scale-down cooldown ({since_scale:.0f}s of {inp.scale_down.cooldown_seconds:g}s)",
            )
        else:
            desired = max(down_candidate, current - inp.scale_down.max_step)
            action, why = (
                "down",
                f"{metric_text}; highest in the {inp.scale_down.stabilization_window_seconds:g}s window is {down_candidate}",
            )
    else:
        desired, action = current, "hold"
        why = (
            f"{metric_text}; stable at {current}"
            if wanted == current
            else (f"{metric_text} asks for {wanted}, stabilization keeps {current}")
        )
    if desired != inp.current_replicas and action == "hold":
        action = "up" if desired > inp.current_replicas else "down"  # moved into [min, max]
    return ScalingDecision(
        desired=desired,
        action=action,
        reason=f"{inp.current_replicas} -> {desired}: {why}",
        metric=total,
        recommendation=wanted,
        history=history,
        metrics_available=True,
    )
