"""One autoscaling evaluation: query Prometheus, decide, write replicas through the scale subresource."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from llama_operator.api import status as st
from llama_operator.api.conditions import make_condition, merge_conditions
from llama_operator.api.spec import LlamaDeploymentSpec
from llama_operator.api.status import AutoscalingStatus, Condition, ScalingRecommendation
from llama_operator.api.timestamps import epoch_seconds, rfc3339
from llama_operator.autoscale.decision import (
    Policy,
    Recommendation,
    Sample,
    ScalingDecision,
    ScalingInput,
    decide_replicas,
)
from llama_operator.autoscale.queries import (
    POD_LABEL,
    MetricQueries,
    custom_queries,
    default_target,
    engine_queries,
)
from llama_operator.kube import Kube
from llama_operator.metrics import PROMETHEUS_ERRORS, SCALING_DECISIONS, SCALING_METRIC
from llama_operator.planning import resolve_engine
from llama_operator.promql import PrometheusError, instant_query

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Evaluation:
    decision: ScalingDecision
    status: AutoscalingStatus
    conditions: list[Condition]
    scaled: bool
    error: str | None


def policy(spec_policy: Any) -> Policy:
    return Policy(
        stabilization_window_seconds=spec_policy.stabilization_window_seconds,
        max_step=spec_policy.max_step,
        cooldown_seconds=spec_policy.cooldown_seconds,
    )


async def _prometheus_token(kube: Kube, namespace: str, spec: LlamaDeploymentSpec) -> str | None:
    ref = spec.autoscaling.prometheus_auth_secret_ref
    if ref is None:
        return None
    secret = await asyncio.to_thread(kube.get, "v1", "Secret", namespace, ref.name)
    if secret is None or ref.key not in (secret.get("data") or {}):
        raise PrometheusError(f"Secret {namespace}/{ref.name} has no key {ref.key}")
    return base64.b64decode(secret["data"][ref.key]).decode().strip()


async def fetch_samples(
    http: httpx.AsyncClient, url: str, queries: MetricQueries, token: str | None, now: float
) -> list[Sample]:
    values = await instant_query(http, url, queries.values, token)
    if not queries.per_pod or queries.timestamps is None:
        return [Sample(f"series-{i}", s.value, now) for i, s in enumerate(values)]
    stamps = {s.labels.get(POD_LABEL, ""): s.value for s in await instant_query(http, url, queries.timestamps, token)}
    return [Sample(s.labels.get(POD_LABEL, ""), s.value, stamps.get(s.labels.get(POD_LABEL, ""), 0.0)) for s in values]


def scaling_input(
    spec: LlamaDeploymentSpec,
    status: Mapping[str, Any],
    samples: Sequence[Sample] | None,
    *,
    ready_pods: int,
    target: float,
    now: float,
) -> ScalingInput:
    previous = status.get("autoscaling") or {}
    history = [Recommendation(float(r["time"]), int(r["replicas"])) for r in previous.get("recommendations") or []]
    scaling = spec.autoscaling
    return ScalingInput(
        current_replicas=spec.replicas,
        ready_pods=int(status.get("readyReplicas") or 0)
        if samples is None or len(samples) != 1
        else min(int(status.get("readyReplicas") or 0), len({s.pod for s in samples})),
        samples=samples,
        target_per_replica=target,
        min_replicas=scaling.min_replicas,
        max_replicas=scaling.max_replicas,
        scale_up=policy(scaling.scale_up),
        scale_down=policy(scaling.scale_down),
        now=now,
        history=history,
        last_scale_time=epoch_seconds(previous.get("lastScaleTime")),
        max_sample_age_seconds=max(30.0, 4 * scaling.evaluation_interval_seconds),
    )


async def evaluate(
    kube: Kube,
    http: httpx.AsyncClient,
    *,
    name: str,
    namespace: str,
    spec: LlamaDeploymentSpec,
    status: Mapping[str, Any],
    default_prometheus_url: str | None,
    generation: int,
    now: float,
) -> Evaluation:
    scaling = spec.autoscaling
    engine = resolve_engine(spec)
    queries = (
        custom_queries(scaling.query) if scaling.query else engine_queries(engine, scaling.metric, namespace, name)
    )
    target = scaling.target_per_replica or default_target(engine, scaling.metric, spec.serving.max_concurrent_sequences)
    url = scaling.prometheus_url or default_prometheus_url
    error: str | None = None
    samples: list[Sample] | None = None
    if url is None:
        error = "no Prometheus URL: set spec.autoscaling.prometheusUrl or the operator's prometheusUrl"
    else:
        try:
            token = await _prometheus_token(kube, namespace, spec)
            samples = await fetch_samples(http, url, queries, token, now)
        except PrometheusError as failure:
            PROMETHEUS_ERRORS.inc()
            error = str(failure)
    # A custom query's series are not pods: coverage cannot be checked against ready pods.
    ready_pods = int(status.get("readyReplicas") or 0) if queries.per_pod else min(len(samples or ()), 1)
    decision = decide_replicas(scaling_input(spec, status, samples, ready_pods=ready_pods, target=target, now=now))
    reason = decision.reason if error is None else f"{decision.reason} ({error})"
    scaled = decision.desired != spec.replicas
    if scaled:
        await asyncio.to_thread(kube.scale_llamadeployment, namespace, name, decision.desired)
    SCALING_DECISIONS.labels(decision.action).inc()
    if decision.metric is not None:
        SCALING_METRIC.labels(namespace, name).set(decision.metric)
    previous = status.get("autoscaling") or {}
    new_status = AutoscalingStatus(
        desired_replicas=decision.desired,
        current_metric=decision.metric,
        target_per_replica=target,
        query=queries.values,
        reason=reason,
        last_evaluation_time=rfc3339(now),
        last_scale_time=rfc3339(now) if scaled else previous.get("lastScaleTime"),
        recommendations=[ScalingRecommendation(time=int(r.at), replicas=r.replicas) for r in decision.history],
    )
    condition = (
        make_condition(
            st.SCALING_ACTIVE, "True", st.REASON_SCALING_ACTIVE, reason, generation=generation, now=rfc3339(now)
        )
        if decision.metrics_available
        else make_condition(
            st.SCALING_ACTIVE,
            "False",
            st.REASON_METRICS_UNAVAILABLE,
            f"{reason}; replicas hold until metrics return",
            generation=generation,
            now=rfc3339(now),
        )
    )
    previous_conditions = [Condition.model_validate(c) for c in status.get("conditions") or []]
    return Evaluation(decision, new_status, merge_conditions(previous_conditions, [condition]), scaled, error)


def status_patch(evaluation: Evaluation) -> Manifest:
    return {
        "autoscaling": evaluation.status.model_dump(by_alias=True, mode="json"),
        "conditions": [c.model_dump(by_alias=True, mode="json") for c in evaluation.conditions],
    }
