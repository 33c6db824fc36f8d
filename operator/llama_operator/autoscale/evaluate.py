"""One autoscaling evaluation: query Prometheus, decide, write replicas through the scale subresource."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from llama_operator.adapters.drive import prometheus_token
from llama_operator.api.spec import LlamaDeploymentSpec
from llama_operator.api.status import AutoscalingStatus, LlamaDeploymentStatus, ScalingRecommendation
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
from llama_operator.kill_points import kill_point
from llama_operator.kube import Kube
from llama_operator.metrics import PROMETHEUS_ERRORS, SCALING_DECISIONS, SCALING_METRIC
from llama_operator.planning import resolve_engine
from llama_operator.promql import PrometheusError, PrometheusUrlRefusedError, choose_prometheus_url, instant_query

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Evaluation:
    decision: ScalingDecision
    status: AutoscalingStatus
    scaled: bool
    error: str | None


def policy(spec_policy: Any) -> Policy:
    return Policy(
        stabilization_window_seconds=spec_policy.stabilization_window_seconds,
        max_step=spec_policy.max_step,
        cooldown_seconds=spec_policy.cooldown_seconds,
    )


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
    status: LlamaDeploymentStatus,
    samples: Sequence[Sample] | None,
    *,
    target: float,
    now: float,
) -> ScalingInput:
    previous = status.autoscaling
    history = [Recommendation(float(r.time), r.replicas) for r in previous.recommendations] if previous else []
    scaling = spec.autoscaling
    ready = status.ready_replicas
    return ScalingInput(
        current_replicas=spec.replicas,
        ready_pods=ready if samples is None or len(samples) != 1 else min(ready, len({s.pod for s in samples})),
        samples=samples,
        target_per_replica=target,
        min_replicas=scaling.min_replicas,
        max_replicas=scaling.max_replicas,
        scale_up=policy(scaling.scale_up),
        scale_down=policy(scaling.scale_down),
        now=now,
        history=history,
        last_scale_time=epoch_seconds(previous.last_scale_time if previous else None),
        max_sample_age_seconds=max(30.0, 4 * scaling.evaluation_interval_seconds),
    )


@dataclass(frozen=True)
class MetricsRead:
    """What Prometheus said (or why it did not), read outside the object's lock."""

    queries: MetricQueries
    target: float
    samples: list[Sample] | None
    error: str | None


async def read_metrics(
    kube: Kube,
    http: httpx.AsyncClient,
    *,
    name: str,
    namespace: str,
    spec: LlamaDeploymentSpec,
    default_prometheus_url: str | None,
    now: float,
    allowed_prometheus_urls: Sequence[str] = (),
) -> MetricsRead:
    """Query Prometheus for this deployment's metric; every query is bounded by the client's timeout.

    spec.autoscaling.prometheusUrl is queried only under the operator's own URL or one of
    `allowed_prometheus_urls` (the operator's prometheusAllowedUrls); otherwise nothing is queried.
    """
    scaling = spec.autoscaling
    engine = resolve_engine(spec)
    queries = (
        custom_queries(scaling.query) if scaling.query else engine_queries(engine, scaling.metric, namespace, name)
    )
    target = scaling.target_per_replica or default_target(engine, scaling.metric, spec.serving.max_concurrent_sequences)
    try:
        url = choose_prometheus_url(scaling.prometheus_url, default_prometheus_url, allowed_prometheus_urls)
    except PrometheusUrlRefusedError as refused:
        return MetricsRead(queries, target, None, str(refused))
    if url is None:
        error = "no Prometheus URL: set spec.autoscaling.prometheusUrl or the operator's prometheusUrl"
        return MetricsRead(queries, target, None, error)
    try:
        token = await prometheus_token(kube, namespace, scaling.prometheus_auth_secret_ref)
        samples = await fetch_samples(http, url, queries, token, now)
    except PrometheusError as failure:
        PROMETHEUS_ERRORS.inc()
        return MetricsRead(queries, target, None, str(failure))
    return MetricsRead(queries, target, samples, None)


async def decide_and_scale(
    kube: Kube,
    read: MetricsRead,
    *,
    name: str,
    namespace: str,
    spec: LlamaDeploymentSpec,
    status: LlamaDeploymentStatus,
    now: float,
) -> Evaluation:
    """Decide from the read and the stabilization history in status; write replicas when they change."""
    decision = decide_replicas(scaling_input(spec, status, read.samples, target=read.target, now=now))
    reason = decision.reason if read.error is None else f"{decision.reason} ({read.error})"
    scaled = decision.desired != spec.replicas
    if scaled:
        kill_point("autoscale.scale:before")
        await asyncio.to_thread(kube.scale_llamadeployment, namespace, name, decision.desired)
        kill_point("autoscale.scale:after")
    SCALING_DECISIONS.labels(decision.action).inc()
    if decision.metric is not None:
        SCALING_METRIC.labels(namespace, name).set(decision.metric)
    previous = status.autoscaling
    new_status = AutoscalingStatus(
        desired_replicas=decision.desired,
        current_metric=decision.metric,
        target_per_replica=read.target,
        query=read.queries.values,
        reason=reason,
        last_evaluation_time=rfc3339(now),
        last_scale_time=rfc3339(now) if scaled else (previous.last_scale_time if previous else None),
        recommendations=[ScalingRecommendation(time=int(r.at), replicas=r.replicas) for r in decision.history],
        metrics_available=decision.metrics_available,
    )
    return Evaluation(decision, new_status, scaled, read.error)


def status_patch(evaluation: Evaluation) -> Manifest:
    """The autoscaler's one field: status.autoscaling."""
    return {"autoscaling": evaluation.status.model_dump(by_alias=True, mode="json")}
