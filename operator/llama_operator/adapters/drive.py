"""The I/O around the rollout state machine: read pods, run smoke requests, set readiness gates."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import httpx

from llama_operator.adapters.checks import CheckRunner
from llama_operator.adapters.rollout import (
    ADAPTERS_ANNOTATION,
    GATE_CONDITION,
    LOADED_CONDITION,
    EvaluateMetricGate,
    GateStatus,
    LoadAdapters,
    PodView,
    RollbackNotice,
    RolloutState,
    SmokeTest,
    Step,
    adapter_key,
    loads_at_runtime,
    step_rollout,
)
from llama_operator.adapters.runtime_load import drain, load_serving_set
from llama_operator.adapters.smoke import smoke_test
from llama_operator.api.spec import Adapter, LlamaDeploymentSpec, SecretKeyRef
from llama_operator.api.status import AdapterRolloutStatus, EngineCheck, LlamaDeploymentStatus
from llama_operator.api.timestamps import epoch_seconds, rfc3339
from llama_operator.kill_points import kill_point
from llama_operator.kube import Kube, KubeError
from llama_operator.promql import PrometheusError, PrometheusUrlRefusedError, choose_prometheus_url, instant_query
from llama_operator.status_report import container_problem

Manifest = dict[str, Any]
logger = logging.getLogger(__name__)


def state_from_status(status: LlamaDeploymentStatus) -> RolloutState:
    saved = status.adapter_rollout
    if saved is None:
        return RolloutState()
    return RolloutState(
        phase=saved.phase,
        target=",".join(saved.target),
        serving=tuple(saved.serving),
        last_good=tuple(saved.last_good),
        failed=tuple(saved.failed),
        step=saved.step,
        verified_pods=tuple(saved.verified_pods),
        start_time=epoch_seconds(saved.start_time),
        canary_verified_time=epoch_seconds(saved.canary_verified_time),
        message=saved.message,
    )


def status_from_state(state: RolloutState) -> AdapterRolloutStatus:
    return AdapterRolloutStatus(
        phase=state.phase,
        target=[t for t in state.target.split(",") if t],
        serving=list(state.serving),
        last_good=list(state.last_good),
        failed=list(state.failed),
        step=state.step,
        verified_pods=list(state.verified_pods),
        start_time=rfc3339(state.start_time) if state.start_time is not None else None,
        canary_verified_time=rfc3339(state.canary_verified_time) if state.canary_verified_time is not None else None,
        message=state.message,
    )


def _condition(pod: Manifest, type_: str) -> Manifest | None:
    return next((c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == type_), None)


def pod_view(pod: Manifest, *, runtime: bool = False) -> PodView:
    """`runtime`: the pod's adapter set is what the operator loaded into it (a pod condition), not its
    template's annotation."""
    meta = pod["metadata"]
    gate = _condition(pod, GATE_CONDITION) or {}
    loaded = _condition(pod, LOADED_CONDITION) or {}
    templated = (meta.get("annotations") or {}).get(ADAPTERS_ANNOTATION, "")
    ready = _condition(pod, "ContainersReady") or {}
    crash = container_problem(pod)
    raw_status = gate.get("status")
    status: GateStatus = "True" if raw_status == "True" else "False" if raw_status == "False" else "Unknown"
    if gate.get("reason") == LOADING_REASON:  # out of traffic for a load that never reported: no verdict
        status = "Unknown"
    return PodView(
        name=meta["name"],
        adapters=str(loaded.get("message") or "") if runtime else templated,
        containers_ready=ready.get("status") == "True",
        gate=status,
        gate_message=str(gate.get("message") or ""),
        crash_message=crash.message if crash else None,
        deleting=bool(meta.get("deletionTimestamp")),
    )


def _pod_url(pod: Manifest) -> str | None:
    ip = (pod.get("status") or {}).get("podIP")
    containers = pod["spec"].get("containers") or []
    ports = containers[0].get("ports") or [] if containers else []
    port = next((p["containerPort"] for p in ports if p.get("name") == "http"), None)
    return f"http://{ip}:{port}" if ip and port else None


@dataclass(frozen=True)
class RolloutResult:
    state: RolloutState
    rollbacks: tuple[RollbackNotice, ...]
    smoke_results: tuple[str, ...]
    checks: tuple[EngineCheck, ...] = ()


LOADING_REASON = "LoadingAdapters"  # the gate while the operator loads a set into the pod


def _gate(*, passed: bool, message: str, now: float, reason: str | None = None) -> Manifest:
    return {
        "type": GATE_CONDITION,
        "status": "True" if passed else "False",
        "reason": reason or ("SmokeRequestPassed" if passed else "SmokeRequestFailed"),
        "message": message[:1024],
        "lastTransitionTime": rfc3339(now),
    }


def _loaded(key: str, now: float) -> Manifest:
    """The set this pod now holds (the machine reads it back as the pod's adapters)."""
    return {"type": LOADED_CONDITION, "status": "True", "reason": "Loaded", "message": key,
            "lastTransitionTime": rfc3339(now)}  # fmt: skip


async def _set(kube: Kube, namespace: str, pod: str, *conditions: Manifest) -> None:
    """One PATCH for all: a pass never sees the new adapter set with the old verdict."""
    kill_point("drive.pod_conditions:before")
    await asyncio.to_thread(kube.set_pod_conditions, namespace, pod, list(conditions))
    kill_point("drive.pod_conditions:after")


async def _load_and_verify(
    kube: Kube, http: httpx.AsyncClient, namespace: str, pod: Manifest, *, spec: LlamaDeploymentSpec,
    engine: str, served_name: str, adapters: tuple[Adapter, ...], release: Callable[[], None],
) -> None:  # fmt: skip
    """Out of traffic, drained, loaded, smoke-tested, back in traffic (or left out with the reason)."""
    name = pod["metadata"]["name"]
    url = _pod_url(pod)
    if url is None:
        return
    key = adapter_key(adapters)
    now = time.time()
    await _set(kube, namespace, name, _gate(passed=False, message=f"loading [{key}]", now=now, reason=LOADING_REASON))
    busy = await drain(http, url)
    load = await load_serving_set(http, url, adapters) if busy is None else None
    kill_point("drive.load_and_verify:loaded")
    result = (
        await smoke_test(
            http, engine, url, served_name=served_name, adapters=adapters, smoke=spec.adapter_rollout.smoke_request
        )
        if load is not None and load.loaded
        else None
    )
    passed = result is not None and result.passed
    message = busy or (load.message if load and not load.loaded else "") or (result.message if result else "")
    kill_point("drive.load_and_verify:verdict")
    release()
    await _set(kube, namespace, name, _loaded(key, time.time()), _gate(passed=passed, message=message, now=time.time()))
    logger.info("adapters on %s/%s: %s: %s", namespace, name, "passed" if passed else "FAILED", message)


async def _metric_gate_value(
    kube: Kube, http: httpx.AsyncClient, namespace: str, spec: LlamaDeploymentSpec, url: str | None
) -> float:
    gate = spec.adapter_rollout.metric_gate
    assert gate is not None
    if url is None:
        return float("inf")  # no Prometheus: the gate cannot pass
    token = await prometheus_token(kube, namespace, spec.autoscaling.prometheus_auth_secret_ref)
    series = await instant_query(http, url, gate.query, token)
    return max((s.value for s in series), default=0.0)


async def prometheus_token(kube: Kube, namespace: str, ref: SecretKeyRef | None) -> str | None:
    """The bearer token of `prometheusAuthSecretRef`, read when a query needs it (never logged)."""
    if ref is None:
        return None
    try:
        token = await asyncio.to_thread(kube.read_secret_key, namespace, ref.name, ref.key)
    except KubeError as error:
        raise PrometheusError(f"reading Secret {namespace}/{ref.name}: {error.message}") from error
    if token is None:
        raise PrometheusError(f"Secret {namespace}/{ref.name} has no key {ref.key}")
    return token.strip()


@dataclass(frozen=True)
class RolloutIO:
    """What the rollout's checks talk to."""

    kube: Kube
    http: httpx.AsyncClient
    checks: CheckRunner


async def _smoke_and_gate(
    io: RolloutIO, namespace: str, pod: Manifest, *, spec: LlamaDeploymentSpec, engine: str, served_name: str,
    adapters: tuple[Adapter, ...], release: Callable[[], None],
) -> None:  # fmt: skip
    name = pod["metadata"]["name"]
    url = _pod_url(pod)
    if url is None:
        return
    result = await smoke_test(
        io.http, engine, url, served_name=served_name, adapters=adapters, smoke=spec.adapter_rollout.smoke_request
    )
    kill_point("drive.smoke:verdict")
    release()
    await _set(io.kube, namespace, name, _gate(passed=result.passed, message=result.message, now=time.time()))
    logger.info("smoke request on %s/%s: %s: %s", namespace, name, "passed" if result.passed else "FAILED",
                result.message)  # fmt: skip


async def drive_rollout(
    io: RolloutIO,
    *,
    namespace: str,
    spec: LlamaDeploymentSpec,
    engine: str,
    served_name: str,
    state: RolloutState,
    pods: Sequence[Manifest],
    prometheus_url: str | None,
    now: float,
    prometheus_allowed_urls: Sequence[str] = (),
) -> RolloutResult:
    """Decide the next rollout step and start its checks; smoke requests and adapter loads run in the
    background (see `checks`), so this returns in the time of a metric-gate query at most."""
    ours = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    runtime = loads_at_runtime(engine, spec.adapters)
    views = [
        replace(pod_view(p, runtime=runtime), busy=io.checks.running(namespace, p["metadata"]["name"]) is not None)
        for p in ours
    ]
    step = step_rollout(
        spec.adapters, state, views, replicas=spec.replicas, policy=spec.adapter_rollout, now=now, runtime=runtime
    )
    results: list[str] = []
    if any(isinstance(a, EvaluateMetricGate) for a in step.actions):
        try:
            # The object's Prometheus only when the operator allows it (prometheusAllowedUrls): else no query.
            url = choose_prometheus_url(spec.autoscaling.prometheus_url, prometheus_url, prometheus_allowed_urls)
            value = await _metric_gate_value(io.kube, io.http, namespace, spec, url)
        except PrometheusUrlRefusedError as error:  # a setting to change, not an outage to wait out
            results.append(f"metric gate: {error}")
            step = step_rollout(spec.adapters, step.state, views, replicas=spec.replicas,
                                policy=spec.adapter_rollout, now=now, gate_value=float("inf"), runtime=runtime)  # fmt: skip
        except PrometheusError as error:
            # Unknown is not bad: a Prometheus outage (or its token Secret not there yet) holds the canary at the
            # gate, asked again on every recheck, until it answers or the rollout's timeoutSeconds rolls it back.
            results.append(f"metric gate: {error}")
            message = f"metric gate unknown, holding the canary: {error}; asking again until timeoutSeconds"
            step = Step(replace(step.state, message=message))
        else:
            step = step_rollout(spec.adapters, step.state, views, replicas=spec.replicas,
                                policy=spec.adapter_rollout, now=now, gate_value=value, runtime=runtime)  # fmt: skip
    if any(isinstance(a, RollbackNotice) for a in step.actions):
        # Rolled back: what the restored set needs (reloading the canary) starts now, not at some later event.
        after = step_rollout(spec.adapters, step.state, views, replicas=spec.replicas, policy=spec.adapter_rollout,
                             now=now, runtime=runtime)  # fmt: skip
        step = Step(after.state, (*step.actions, *after.actions))
    by_name = {p["metadata"]["name"]: p for p in ours}
    serving = step.state.serving
    for action in step.actions:
        if not isinstance(action, LoadAdapters | SmokeTest) or action.pod not in by_name:
            continue
        pod = by_name[action.pod]
        if _pod_url(pod) is None:
            continue
        if isinstance(action, LoadAdapters):
            work = functools.partial(
                _load_and_verify, io.kube, io.http, namespace, pod, spec=spec, engine=engine,
                served_name=served_name, adapters=serving,
            )  # fmt: skip
        else:
            work = functools.partial(
                _smoke_and_gate, io, namespace, pod, spec=spec, engine=engine, served_name=served_name,
                adapters=serving,
            )  # fmt: skip
        check = io.checks.start(namespace, action.pod, type(action).__name__, work)
        kill_point(f"drive.check:{type(action).__name__}:started")
        results.append(f"{action.pod}: {check.what} started")
    running = io.checks.in_namespace_for(namespace, set(by_name))
    pending = tuple(EngineCheck(pod=c.pod, check=_CHECK_NAMES.get(c.what, c.what), since=rfc3339(c.started))
                    for c in running)  # fmt: skip
    notices = tuple(a for a in step.actions if isinstance(a, RollbackNotice))
    return RolloutResult(step.state, notices, tuple(results), pending)


_CHECK_NAMES = {"SmokeTest": "SmokeRequest", "LoadAdapters": "LoadAdapters"}
