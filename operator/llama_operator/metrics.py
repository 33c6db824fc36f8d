"""Prometheus metrics of the operator itself."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILE_SECONDS = Histogram(
    "llama_operator_reconcile_duration_seconds",
    "Time to reconcile one LlamaDeployment (parse, size, apply, status).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONCILE_ERRORS = Counter("llama_operator_reconcile_errors_total", "Reconciles that failed, by reason.", ["reason"])
SIZING_DECISIONS = Counter(
    "llama_operator_sizing_decisions_total", "Sizing decisions, by engine and outcome.", ["engine", "fits"]
)
DEPLOYMENT_PHASE = Gauge(
    "llama_operator_deployment_phase",
    "1 for the current phase of each LlamaDeployment.",
    ["namespace", "name", "phase"],
)
PHASES = ("Pending", "Progressing", "Ready", "Degraded", "Failed")


def record_phase(namespace: str, name: str, phase: str) -> None:
    for candidate in PHASES:
        DEPLOYMENT_PHASE.labels(namespace, name, candidate).set(1 if candidate == phase else 0)


def forget_deployment(namespace: str, name: str) -> None:
    for candidate in PHASES:
        DEPLOYMENT_PHASE.remove(namespace, name, candidate)


SCALING_DECISIONS = Counter(
    "llama_operator_scaling_decisions_total", "Autoscaling evaluations, by action (up, down, hold).", ["action"]
)
SCALING_METRIC = Gauge(
    "llama_operator_scaling_metric", "The summed queue metric of the last evaluation.", ["namespace", "name"]
)
PROMETHEUS_ERRORS = Counter("llama_operator_prometheus_errors_total", "Prometheus queries that failed.")
CHILD_APPLIES = Counter(
    "llama_operator_child_applies_total", "Children applied because the cached copy differed, by kind.", ["kind"]
)
STATUS_WRITES = Counter("llama_operator_status_writes_total", "Status writes, by writer.", ["writer"])
PASSES = Counter("llama_operator_passes_total", "Reconcile passes, by trigger.", ["trigger"])
