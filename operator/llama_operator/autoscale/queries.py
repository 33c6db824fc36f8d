"""Per-engine PromQL for the autoscaler, scoped to one LlamaDeployment's pods.

Prometheus carries the pod label `llamaops.io/deployment` as `llamaops_io_deployment` (a labelmap of
pod labels in a `kubernetes_sd_configs` scrape, or `podTargetLabels` of the ServiceMonitor the
operator renders) and the pod's namespace as `namespace`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from llama_operator.engines.registry import engine as engine_named

MetricKind = Literal["queue", "inFlight"]
DEPLOYMENT_LABEL = "llamaops_io_deployment"
NAMESPACE_LABEL = "namespace"
POD_LABEL = "pod"

# In-flight targets follow maxConcurrentSequences; queue targets are the engine's (its registry entry).
IN_FLIGHT_TARGET_SHARE = 0.8


@dataclass(frozen=True)
class MetricQueries:
    values: str  # one series per pod: the metric
    timestamps: str | None  # one series per pod: when Prometheus last scraped it (None: not known)
    per_pod: bool  # False for a custom query, whose series are not pods


def selector(namespace: str, name: str) -> str:
    """The label matchers of one LlamaDeployment's pods."""
    return f'{{{NAMESPACE_LABEL}="{namespace}",{DEPLOYMENT_LABEL}="{name}"}}'


def engine_metric(engine: str, kind: MetricKind) -> str:
    """The engine's gauge for `kind`, from its own /metrics: requests waiting (queue) or running (inFlight)."""
    entry = engine_named(engine)
    return entry.queue_metric if kind == "queue" else entry.running_metric


def engine_queries(engine: str, kind: MetricKind, namespace: str, name: str) -> MetricQueries:
    metric = engine_metric(engine, kind) + selector(namespace, name)
    return MetricQueries(
        values=f"sum by ({POD_LABEL}) ({metric})",
        timestamps=f"max by ({POD_LABEL}) (timestamp({metric}))",
        per_pod=True,
    )


def custom_queries(query: str) -> MetricQueries:
    """A user's PromQL: its series are not pods, so neither freshness nor coverage can be checked."""
    return MetricQueries(values=query, timestamps=None, per_pod=False)


def default_target(engine: str, kind: MetricKind, max_concurrent_sequences: int) -> float:
    if kind == "inFlight":
        return max(1.0, IN_FLIGHT_TARGET_SHARE * max_concurrent_sequences)
    return engine_named(engine).default_queue_target
