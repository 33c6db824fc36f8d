"""autoscaling.mode: KEDA — the KEDA ScaledObject (keda.sh/v1alpha1) that drives the LlamaDeployment's scale
subresource with the query, target and bounds the built-in autoscaler would use. Pure.

KEDA's HPA divides the query's value by `threshold` (metric type AverageValue), as the built-in autoscaler
divides the summed metric by the target per replica. Two settings keep KEDA from the failures the built-in
autoscaler avoids: `ignoreNullValues: "false"` (KEDA's default true reads a query with no series, such as
a lost scrape target, as zero load and scales down), and a `fallback` with behavior `currentReplicas`
(after `failureThreshold` failed queries KEDA holds the current replica count instead of a fixed one).
"""

from __future__ import annotations

from typing import Any

from llama_operator.api.spec import GROUP, KIND, VERSION, LlamaDeploymentSpec, ScalingPolicy
from llama_operator.autoscale.queries import custom_queries, default_target, engine_metric
from llama_operator.autoscale.queries import selector as deployment_selector

Manifest = dict[str, Any]
KEDA_API = "keda.sh/v1alpha1"
KEDA_CRD = "scaledobjects.keda.sh"
TRIGGER_AUTH_CRD = "triggerauthentications.keda.sh"
FALLBACK_FAILURES = 3  # failed queries in a row before KEDA holds replicas
TRIGGER_NAME = "llm-queue"


def keda_wanted(spec: LlamaDeploymentSpec) -> bool:
    return spec.autoscaling.enabled and spec.autoscaling.mode == "KEDA"


def keda_query(spec: LlamaDeploymentSpec, engine: str, namespace: str, name: str) -> str:
    """One number: the metric summed over the deployment's pods (or the user's own query)."""
    scaling = spec.autoscaling
    if scaling.query:
        return custom_queries(scaling.query).values
    return f"sum({engine_metric(engine, scaling.metric)}{deployment_selector(namespace, name)})"


def keda_target(spec: LlamaDeploymentSpec, engine: str) -> float:
    scaling = spec.autoscaling
    return scaling.target_per_replica or default_target(engine, scaling.metric, spec.serving.max_concurrent_sequences)


def trigger_auth_name(name: str) -> str:
    return f"{name}-prometheus"


def _hpa_rules(policy: ScalingPolicy) -> Manifest:
    """The HPA's behaviour for one direction: the same window and step as the built-in autoscaler's (the
    cooldown is the period of the step policy)."""
    return {
        "stabilizationWindowSeconds": policy.stabilization_window_seconds,
        "selectPolicy": "Max",
        "policies": [{"type": "Pods", "value": policy.max_step, "periodSeconds": max(policy.cooldown_seconds, 15)}],
    }


def _number(value: float) -> str:
    return f"{value:g}"


def render_scaled_object(
    spec: LlamaDeploymentSpec, engine: str, *, name: str, namespace: str, metadata: Manifest, prometheus_url: str
) -> Manifest:
    scaling = spec.autoscaling
    trigger: Manifest = {
        "type": "prometheus",
        "name": TRIGGER_NAME,
        "metricType": "AverageValue",
        "metadata": {
            "serverAddress": prometheus_url,
            "query": keda_query(spec, engine, namespace, name),
            "threshold": _number(keda_target(spec, engine)),
            "ignoreNullValues": "false",
        },
    }
    if scaling.prometheus_auth_secret_ref is not None:
        trigger["metadata"]["authModes"] = "bearer"
        trigger["authenticationRef"] = {"name": trigger_auth_name(name), "kind": "TriggerAuthentication"}
    return {
        "apiVersion": KEDA_API,
        "kind": "ScaledObject",
        "metadata": metadata,
        "spec": {
            "scaleTargetRef": {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": name},
            "pollingInterval": scaling.evaluation_interval_seconds,
            "minReplicaCount": scaling.min_replicas,
            "maxReplicaCount": scaling.max_replicas,
            "fallback": {
                "failureThreshold": FALLBACK_FAILURES,
                "replicas": max(scaling.min_replicas, 1),
                "behavior": "currentReplicas",
            },
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {"scaleUp": _hpa_rules(scaling.scale_up), "scaleDown": _hpa_rules(scaling.scale_down)}
                }
            },
            "triggers": [trigger],
        },
    }


def render_trigger_authentication(spec: LlamaDeploymentSpec, metadata: Manifest) -> Manifest | None:
    """The Prometheus bearer token for KEDA, by reference to the object's Secret (never its value)."""
    ref = spec.autoscaling.prometheus_auth_secret_ref
    if ref is None:
        return None
    return {
        "apiVersion": KEDA_API,
        "kind": "TriggerAuthentication",
        "metadata": metadata,
        "spec": {"secretTargetRef": [{"parameter": "bearerToken", "name": ref.name, "key": ref.key}]},
    }
