"""Per-engine PromQL for the autoscaler, scoped to one LlamaDeployment's pods.

Prometheus carries the pod label `llamaops.io/deployment` as `llamaops_io_deployment` (a labelmap of
pod labels in a `kubernetes_sd_configs` scrape, or `podTargetLabels` of the ServiceMonitor the
operator renders) and the pod's namespace as `namespace`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MetricKind = Literal["queue", "inFlight"]
DEPLOYMENT_LABEL = "llamaops_io_deployment"
NAMESPACE_LABEL = "namespace"
POD_LABEL = "pod"

# (waiting, running) gauges of each engine, from their own /metrics.
ENGINE_METRICS: dict[str, dict[MetricKind, str]] = {
    "vllm": {"queue": "vllm:num_requests_waiting", "inFlight": "vllm:num_requests_running"},
    "tgi": {"queue": "tgi_queue_size", "inFlight": "tgi_batch_current_size"},
    "llamacpp": {"queue": "llamacpp:requests_deferred", "inFlight": "llamacpp:requests_processing"},
}
# Waiting requests per replica worth a new replica; in-flight targets follow maxConcurrentSequences.
DEFAULT_QUEUE_TARGET = {"vllm": 2.0, "tgi": 2.0, "llamacpp": 1.0}
IN_FLIGHT_TARGET_SHARE = 0.8


@dataclass(frozen=True)
class MetricQueries:
    values: str  # one series per pod: the metric
    timestamps: str | None  # one series per pod: when Prometheus last scraped it (None: not known)
    per_pod: bool  # False for a custom query, whose series are not pods


def _selector(namespace: str, name: str) -> str:
    return f'{{{NAMESPACE_LABEL}="{namespace}",{DEPLOYMENT_LABEL}="{name}"}}'


def engine_queries(engine: str, kind: MetricKind, namespace: str, name: str) -> MetricQueries:
    metric = ENGINE_METRICS[engine][kind] + _selector(namespace, name)
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
    return DEFAULT_QUEUE_TARGET[engine]
