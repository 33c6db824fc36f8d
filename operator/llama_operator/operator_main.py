"""Start the operator: logging, the metrics endpoint, and kopf's loop with our handlers registered."""

from __future__ import annotations

import logging
from pathlib import Path

import kopf
from prometheus_client import start_http_server

import llama_operator.handlers  # noqa: F401 - importing registers the kopf handlers
from llama_operator.kube import Kube
from llama_operator.operator_config import load_config
from llama_operator.reconcile import OperatorContext


def run_operator(
    *,
    config_path: Path | None,
    namespaces: list[str],
    liveness: str | None,
    metrics_port: int,
    verbose: bool,
    metrics_host: str,
    kubeconfig: str | None = None,
) -> int:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = load_config(config_path)
    context = OperatorContext(kube=Kube.from_environment(kubeconfig), config=config)
    if metrics_port:
        start_http_server(metrics_port, addr=metrics_host)
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
        memo=kopf.Memo(context=context),
    )
    return 0
