"""Pure: the adapter rollout state machine.

Pods of a LlamaDeployment with adapters carry a readiness gate (`llamaops.io/adapters-verified`):
a pod takes traffic only after the operator's smoke request passed on it. A new adapter set is
rolled out by re-rendering the pods with it: the Deployment surges new pods (maxUnavailable 0) and
cannot retire an old pod before a new one is Ready, so the first new pods are the canary, gated by
the smoke request. A failed smoke request, a crashing new pod, a failed metric gate or a timeout
rolls back to the last good set, and the failed set is remembered so it is not tried again until
the spec changes. Every step is decided from `status.adapterRollout` and the pods, so an operator
restart resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from llama_operator.api.spec import Adapter, AdapterRolloutPolicy, canary_size
from llama_operator.engines.registry import engine as engine_named

GATE_CONDITION = "llamaops.io/adapters-verified"
ADAPTERS_ANNOTATION = "llamaops.io/adapters"
# Runtime loading: the set a pod has loaded, in the message of a pod condition the operator sets.
LOADED_CONDITION = "llamaops.io/adapters-loaded"
Phase = Literal["Idle", "Progressing", "Succeeded", "RolledBack"]
GateStatus = Literal["True", "False", "Unknown"]


def loads_at_runtime(engine: str, adapters: Sequence[Adapter]) -> bool:
    """Whether the set loads into running pods (no restart, pod by pod: today vLLM with hub adapters) or
    rolls out by surging pods that start with it; the engine's registry entry says which."""
    return engine_named(engine).loads_at_runtime(adapters)


def adapter_key(adapters: Sequence[Adapter]) -> str:
    """`a@v1,b@v2`, sorted: how a set is named in annotations and status."""
    return ",".join(sorted(f"{a.name}@{a.version}" for a in adapters))


@dataclass(frozen=True)
class PodView:
    """What the machine needs to know of one pod."""

    name: str
    adapters: str  # the pod's adapter set key (its annotation)
    containers_ready: bool  # the engine's own probes pass
    gate: GateStatus  # our readiness gate condition
    gate_message: str = ""
    crash_message: str | None = None  # set when the engine container keeps failing
    deleting: bool = False
    busy: bool = False  # a check (smoke request, adapter load) is in flight on this pod


@dataclass(frozen=True)
class RolloutState:
    phase: Phase = "Idle"
    target: str = ""
    serving: tuple[Adapter, ...] = ()
    last_good: tuple[Adapter, ...] = ()
    failed: tuple[str, ...] = ()
    step: str = ""
    verified_pods: tuple[str, ...] = ()
    start_time: float | None = None
    canary_verified_time: float | None = None
    message: str = ""

    @property
    def serving_key(self) -> str:
        return adapter_key(self.serving)


@dataclass(frozen=True)
class SmokeTest:
    """Send the smoke request to this pod and record the outcome in its readiness gate."""

    pod: str


@dataclass(frozen=True)
class LoadAdapters:
    """Runtime loading: take this pod out of traffic, load the serving set, smoke-test, put it back."""

    pod: str


@dataclass(frozen=True)
class EvaluateMetricGate:
    """Run the metric gate's query now; feed the value back as `gate_value`."""


@dataclass(frozen=True)
class RollbackNotice:
    """Tell the user (Event, condition) that `target` was rolled back, and why."""

    target: str
    reason: str


Action = SmokeTest | LoadAdapters | EvaluateMetricGate | RollbackNotice


@dataclass(frozen=True)
class Step:
    state: RolloutState
    actions: tuple[Action, ...] = field(default=())


def _rollback(state: RolloutState, reason: str) -> Step:
    failed = state.failed if state.target in state.failed else (*state.failed, state.target)
    restored = replace(
        state,
        phase="RolledBack",
        serving=state.last_good,
        failed=failed,
        step="",
        verified_pods=(),
        canary_verified_time=None,
        message=f"rolled back to [{adapter_key(state.last_good)}]: {reason}",
    )
    return Step(restored, (RollbackNotice(state.target, reason),))


def _start(state: RolloutState, desired: Sequence[Adapter], now: float) -> RolloutState:
    key = adapter_key(desired)
    first = not state.target  # a new object: its first set has nothing to roll back to but no adapters
    return replace(
        state,
        phase="Progressing",
        target=key,
        serving=tuple(desired),
        last_good=() if first else state.last_good,
        step="Canary",
        verified_pods=(),
        start_time=now,
        canary_verified_time=None,
        message=f"rolling out [{key}]",
    )


def _gate_pending(pods: Sequence[PodView], key: str) -> list[PodView]:
    return [
        p
        for p in pods
        if p.adapters == key and not p.deleting and not p.busy and p.containers_ready and p.gate == "Unknown"
    ]


def _failure(state: RolloutState, new_pods: Sequence[PodView], policy: AdapterRolloutPolicy, now: float) -> Step | None:
    """A rollback when a new pod crashes or fails its smoke request, or the rollout runs out of time."""
    serving = state.serving_key
    for pod in new_pods:
        if pod.crash_message:
            return _rollback(state, f"pod {pod.name} with [{serving}] is crashing: {pod.crash_message}")
        # A check in flight has no verdict yet: its gate may still say why the pod left traffic (say,
        # loading a set the spec has since moved away from), which says nothing about this set.
        if pod.gate == "False" and not pod.busy:
            return _rollback(state, f"smoke request failed on pod {pod.name}: {pod.gate_message}")
    if state.start_time is not None and now - state.start_time > policy.timeout_seconds:
        return _rollback(state, f"not done after {policy.timeout_seconds}s (step {state.step})")
    return None


def _metric_gate(
    state: RolloutState, policy: AdapterRolloutPolicy, now: float, gate_value: float | None
) -> Step | None:
    """None when the gate passed (go on rolling); otherwise the wait, the query, or the rollback."""
    gate = policy.metric_gate
    assert gate is not None
    if now - (state.canary_verified_time or now) < gate.window_seconds:
        return Step(replace(state, message=f"watching the canary for {gate.window_seconds}s"))
    if gate_value is None:
        return Step(state, (EvaluateMetricGate(),))
    if gate_value > gate.max_value:
        return _rollback(state, f"metric gate: {gate.query} = {gate_value:g} > {gate.max_value:g}")
    return None


def _needs_load(pods: Sequence[PodView], key: str) -> list[PodView]:
    """Runtime loading: ready pods that do not have the serving set loaded."""
    return [p for p in pods if p.adapters != key and not p.deleting and not p.busy and p.containers_ready]


def _next_loads(state: RolloutState, pods: Sequence[PodView], room: int) -> tuple[Action, ...]:
    """Runtime loading, one pod after another: nothing new while a loaded pod awaits its verdict."""
    key = state.serving_key
    if any(p.busy or (p.adapters == key and p.gate == "Unknown" and not p.deleting) for p in pods):
        return ()
    return tuple(LoadAdapters(p.name) for p in _needs_load(pods, key)[: max(room, 0)])


def _advance(
    state: RolloutState, pods: Sequence[PodView], pending: Sequence[PodView], room: int, *, runtime: bool
) -> tuple[Action, ...]:
    if runtime:
        return _next_loads(state, pods, room)
    return tuple(SmokeTest(p.name) for p in pending[:room])


def _progress(
    state: RolloutState,
    pods: Sequence[PodView],
    *,
    replicas: int,
    policy: AdapterRolloutPolicy,
    now: float,
    gate_value: float | None,
    runtime: bool,
) -> Step:
    serving = state.serving_key
    pending = _gate_pending(pods, serving)
    if state.step == "Canary" and policy.strategy == "Canary":
        canary = canary_size(policy, replicas)
        if len(state.verified_pods) < canary:
            return Step(state, _advance(state, pods, pending, canary - len(state.verified_pods), runtime=runtime))
        passed = f"canary {', '.join(state.verified_pods)} passed the smoke request"
        next_step = "MetricGate" if policy.metric_gate else "Rolling"
        state = replace(state, canary_verified_time=now, step=next_step, message=passed)
    if state.step == "MetricGate":
        waiting = _metric_gate(state, policy, now, gate_value)
        if waiting is not None:
            return waiting
        state = replace(state, step="Rolling", message="metric gate passed")
    since_canary = None if state.canary_verified_time is None else now - state.canary_verified_time
    if since_canary is not None and since_canary < policy.pause_seconds:
        return Step(replace(state, message=f"pausing {policy.pause_seconds}s after the canary"))
    live = [p for p in pods if not p.deleting]
    new_pods = [p for p in live if p.adapters == serving]
    done = len(new_pods) == len(live) and len(new_pods) >= replicas and all(p.gate == "True" for p in new_pods)
    if done:
        message = f"[{serving}] serves on {len(new_pods)} pods"
        return Step(replace(state, phase="Succeeded", last_good=state.serving, step="", message=message))
    # Runtime loading goes replica by replica (AllAtOnce: every pod); surged pods are all tested.
    room = len(live) if policy.strategy == "AllAtOnce" or not runtime else 1
    return Step(state, _advance(state, pods, pending, room, runtime=runtime))


def step_rollout(
    desired: Sequence[Adapter],
    state: RolloutState,
    pods: Sequence[PodView],
    *,
    replicas: int,
    policy: AdapterRolloutPolicy,
    now: float,
    gate_value: float | None = None,
    runtime: bool = False,
) -> Step:
    """One decision: the next state and what to do now. `runtime`: the engine loads adapters into
    running pods (LoadAdapters) instead of new pods starting with them (SmokeTest of surged pods)."""
    key = adapter_key(desired)
    if key != state.target:
        if key in state.failed:
            message = f"[{key}] failed before; serving [{adapter_key(state.last_good)}] until the spec changes"
            held = replace(state, target=key, phase="RolledBack", serving=state.last_good, step="", message=message)
            return Step(held)
        state = _start(state, desired, now)
    serving = state.serving_key
    if state.phase != "Progressing":
        # Steady state: pods that (re)start get the smoke request before traffic; with runtime
        # loading, a restarted pod (or a rolled-back canary) first gets the serving set loaded.
        loads = tuple(LoadAdapters(p.name) for p in _needs_load(pods, serving)) if runtime else ()
        return Step(state, loads + tuple(SmokeTest(p.name) for p in _gate_pending(pods, serving)))
    new_pods = [p for p in pods if not p.deleting and p.adapters == serving]
    failure = _failure(state, new_pods, policy, now)
    if failure is not None:
        return failure
    verified = tuple(sorted({*state.verified_pods, *(p.name for p in new_pods if p.gate == "True")}))
    return _progress(
        replace(state, verified_pods=verified),
        pods,
        replicas=replicas,
        policy=policy,
        now=now,
        gate_value=gate_value,
        runtime=runtime,
    )
