"""Start the operator: logging, the metrics endpoint, and kopf's loop with our handlers registered."""

from __future__ import annotations

import json
import logging
import os
import signal
import tracemalloc
from pathlib import Path
from types import FrameType

import kopf
from prometheus_client import start_http_server

from llama_operator.handlers import watch_optional_children  # importing registers the kopf handlers
from llama_operator.kube import Kube, KubeError
from llama_operator.liveness import API_DOWN_SECONDS, ProbeFailureFilter  # importing registers the probe
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
    # urllib3 warns of each retry it makes; the failed call is logged once, by us, as our own error.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    logging.getLogger("aiohttp.server").addFilter(ProbeFailureFilter())
    logging.getLogger("kopf.activities.probe").setLevel(logging.WARNING)  # a line per probe only when it fails


def api_down_seconds() -> float:
    """LLAMA_OPERATOR_API_DOWN_SECONDS: how long the apiserver may not answer before liveness fails."""
    value = os.environ.get("LLAMA_OPERATOR_API_DOWN_SECONDS", "")
    try:
        return float(value) if value else API_DOWN_SECONDS
    except ValueError:
        return API_DOWN_SECONDS


def log_memory_on_signal(logger: logging.Logger) -> None:
    """With LLAMA_OPERATOR_TRACEMALLOC=N (or PYTHONTRACEMALLOC=N) set, SIGUSR1 logs where the operator's memory
    was allocated, N frames per site. Tracing slows the operator down: for diagnosis only."""
    frames = os.environ.get("LLAMA_OPERATOR_TRACEMALLOC", "")
    if frames.isdigit() and int(frames) > 0:
        tracemalloc.start(int(frames))
    if not tracemalloc.is_tracing():
        return

    def dump(_signum: int, _frame: FrameType | None) -> None:
        snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        stats = snapshot.statistics("traceback")
        total = sum(s.size for s in stats)
        logger.warning("traced memory: %.1f MiB in %d allocation sites; the largest:", total / 2**20, len(stats))
        for stat in stats[:15]:
            logger.warning(
                "%.1f MiB in %d blocks:\n  %s", stat.size / 2**20, stat.count, "\n  ".join(stat.traceback.format())
            )

    signal.signal(signal.SIGUSR1, dump)


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
    log_memory_on_signal(logging.getLogger("llama_operator.memory"))
    config = load_config(config_path)
    kube = Kube.from_environment(kubeconfig)
    logger = logging.getLogger("llama_operator")
    try:
        watched = watch_optional_children(kube.can_watch, logger)
    except KubeError as error:
        logger.error("cannot start: asking the Kubernetes API which kinds the operator may watch failed: %s", error)
        return 1
    logger.info("optional children watched: %s", ", ".join(watched) or "none")
    context = OperatorContext(kube=kube, config=config, watched_crds=frozenset(watched))
    if metrics_port:
        start_http_server(metrics_port, addr=metrics_host)
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
        memo=kopf.Memo(context=context, api_down_seconds=api_down_seconds()),
    )
    return 0
