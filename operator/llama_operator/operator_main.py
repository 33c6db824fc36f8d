"""Start the operator: logging, the metrics endpoint, and kopf's loop with our handlers registered."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import kopf
from prometheus_client import start_http_server

from llama_operator.handlers import watch_optional_children  # importing registers the kopf handlers
from llama_operator.kube import Kube
from llama_operator.operator_config import load_config
from llama_operator.reconcile import OperatorContext


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line, for log pipelines in the cluster."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str, log_format: str) -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler], force=True)
    for chatty in ("httpx", "httpcore"):  # one line per Prometheus query or smoke request is noise
        logging.getLogger(chatty).setLevel(logging.WARNING)


def run_operator(
    *,
    config_path: Path | None,
    namespaces: list[str],
    liveness: str | None,
    metrics_port: int,
    metrics_host: str,
    log_level: str = "info",
    log_format: str = "text",
    kubeconfig: str | None = None,
) -> int:
    configure_logging(log_level, log_format)
    config = load_config(config_path)
    context = OperatorContext(kube=Kube.from_environment(kubeconfig), config=config)
    watched = watch_optional_children(context.kube.can_watch, logging.getLogger("llama_operator"))
    logging.getLogger("llama_operator").info("optional children watched: %s", ", ".join(watched) or "none")
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
